"""Where one GPU's memory goes: weights, the KV the requests hold, free KV, and the share kept out of the engine.

One horizontal bar, cut in the order memory is claimed:

* **weights**: every parameter in ``dtype`` (:func:`~cblab_teach.production.memory.weight_bytes`);
* **KV in use**: ``requests`` requests of ``context`` tokens each, in whole blocks
  (:func:`~cblab_teach.production.memory.kv_bytes_per_request`);
* **free KV**: the rest of the pool, ``memory_utilization`` of the GPU less the weights
  (:func:`~cblab_teach.production.memory.kv_budget_bytes`);
* **reserve & activations**: the ``1 - memory_utilization`` share outside the engine's budget. ``memory.py`` sizes
  the pool as ``memory_utilization x memory - weights`` and notes that real engines also take activations (and
  CUDA graphs) out of the pool; this picture counts them in this share, so the pool it draws is an upper bound.

When the requests need more KV than the pool holds, the bar does not raise: the part that fits is drawn as in use,
the rest as a red, hatched segment past the pool, and the bar runs past the GPU's own edge (a solid line), so the
picture says how much too much. A dotted line marks ``memory_utilization``.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from ..production._lookup import as_gpu, as_shape, int_at_least
from ..production.gpus import GPUSpec
from ..production.memory import kv_budget_bytes, kv_bytes_per_request, weight_bytes
from ..production.models import ModelShape
from .colors import FREE_COLOR
from .labels import text
from .lang import resolve
from .legend import legend_above

GIB = 2**30
SEGMENTS = ("weights", "kv_used", "kv_over", "kv_free", "reserve")
COLORS = {"weights": "#511CFB", "kv_used": "#00A08B", "kv_over": "#d00000", "kv_free": FREE_COLOR,
          "reserve": "#B2828D"}  # fmt: skip
PATTERNS = {"kv_over": "x", "reserve": "/"}
BAR_WIDTH = 0.5  # of the one category: strips above and below hold the limits' labels


@dataclass(frozen=True)
class MemorySplit:
    """Bytes of each segment of the bar, in :data:`SEGMENTS` order, and the two limits drawn across it."""

    weights: float
    kv_used: float  # the part of the requests' KV that fits the pool
    kv_over: float  # the part that does not (0 when it fits)
    kv_free: float  # pool left over (0 when over-full)
    reserve: float
    gpu_bytes: float
    engine_bytes: float  # memory_utilization x gpu_bytes

    @property
    def kv_demand(self) -> float:
        return self.kv_used + self.kv_over

    @property
    def over_full(self) -> bool:
        return self.kv_over > 0 or self.weights > self.engine_bytes

    def segments(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SEGMENTS}


def memory_split(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    memory_utilization: float = 0.9,
    requests: int = 64,
    context: int = 4096,
    block_size: int = 16,
) -> MemorySplit:
    """The bar's segments in bytes: they sum to the GPU's memory when the KV fits, and past it by the KV that
    does not (plus any weights beyond the engine's share)."""
    shape, spec = as_shape(model), as_gpu(gpu)
    int_at_least("requests", requests, 0)
    int_at_least("context", context)
    weights = weight_bytes(shape, dtype)
    pool = kv_budget_bytes(shape, spec, dtype, memory_utilization)
    demand = requests * kv_bytes_per_request(shape, context, kv_dtype or dtype, block_size)
    gpu_bytes = spec.memory_bytes
    return MemorySplit(
        weights=weights,
        kv_used=min(demand, pool),
        kv_over=max(0.0, demand - pool),
        kv_free=max(0.0, pool - demand),
        reserve=gpu_bytes * (1 - memory_utilization),
        gpu_bytes=gpu_bytes,
        engine_bytes=gpu_bytes * memory_utilization,
    )


def _limit(x: float, words: str, dash: str, top: bool, right: bool = False) -> list[dict]:
    """A vertical line across the plot and its label inside the plot, above the bar (``top``) or below it: the
    legend owns the margin above the plot, and the bar leaves these two strips empty. The label ends at the line,
    or starts there (``right``) where the bar runs on past it and leaves room."""
    line = {"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
            "line": {"color": "black", "width": 2, "dash": dash}}  # fmt: skip
    note = {"x": x, "xref": "x", "y": 1 if top else 0, "yref": "paper", "yanchor": "top" if top else "bottom",
            "xanchor": "left" if right else "right", "xshift": 4 if right else -4, "text": words, "showarrow": False, "font": {"size": 13}}  # fmt: skip
    return [line, note]


def memory_bar_figure(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    memory_utilization: float = 0.9,
    requests: int = 64,
    context: int = 4096,
    block_size: int = 16,
    lang: str | None = None,
) -> go.Figure:
    """One stacked bar of ``gpu``'s memory serving ``model`` to ``requests`` requests of ``context`` tokens, in GiB
    (2^30 bytes, as ``GPUSpec.memory_bytes`` counts them). An over-full configuration is drawn, in red, not refused."""
    lang = resolve(lang)
    shape, spec = as_shape(model), as_gpu(gpu)
    split = memory_split(shape, spec, dtype, kv_dtype, memory_utilization, requests, context, block_size)
    words = {"weights": "mem_weights", "kv_used": "mem_kv_used", "kv_over": "mem_kv_over", "kv_free": "mem_kv_free",
             "reserve": "mem_reserve"}  # fmt: skip
    traces, base = [], 0.0
    for name, size in split.segments().items():
        gib = size / GIB
        label = text(lang, words[name], gib=gib)
        traces.append(
            go.Bar(
                name=label,
                legendgroup=name,
                orientation="h",
                y=[spec.name],
                x=[gib],
                base=[base],
                width=[BAR_WIDTH],
                text=[f"{gib:.1f} GiB"],
                textposition="inside",
                insidetextanchor="middle",
                customdata=[label],
                hovertemplate=text(lang, "mem_hover"),
                showlegend=size > 0,  # an empty segment (say, no overflow) takes no room in the legend
                marker={
                    "color": COLORS[name],
                    "pattern": {"shape": PATTERNS.get(name, "")},
                    "line": {"color": "white", "width": 1},
                },
            )
        )
        base += gib
    title = text(lang, "mem_title", model=shape.name, gpu=spec.name, requests=requests, context=context)
    if split.over_full:
        pool = split.kv_used + split.kv_free
        title += text(lang, "mem_over_title", need=split.kv_demand / GIB, have=pool / GIB)
    gpu_gib, engine_gib = split.gpu_bytes / GIB, split.engine_bytes / GIB
    end = max(base, gpu_gib) * 1.02
    room = end - gpu_gib > 0.15 * end  # an over-full bar runs past the GPU: its label fits right of the line
    shapes_and_notes = _limit(gpu_gib, text(lang, "mem_gpu_line", gib=gpu_gib), "solid", True, room)
    shapes_and_notes += _limit(engine_gib, text(lang, "mem_util_line", util=memory_utilization), "dot", False)
    fig = go.Figure(traces)
    fig.update_layout(legend_above())
    fig.update_layout(
        barmode="overlay",  # each segment carries its own base
        title={  # a second line for the warning: pad it clear of the figure's top edge
            "text": title,
            "font": {"color": COLORS["kv_over"] if split.over_full else None},
            "pad": {"t": 18 if split.over_full else 12},
        },
        height=340,
        margin={"t": 110 if split.over_full else 90, "l": 20, "r": 20, "b": 60},
        uniformtext={"minsize": 11, "mode": "hide"},
        xaxis={"title": text(lang, "mem_axis"), "range": [0, end]},
        yaxis={"showticklabels": False},
        shapes=shapes_and_notes[0::2],
        annotations=shapes_and_notes[1::2],
    )
    return fig
