"""The roofline of one model on one GPU: every operator of a step as a point under the roof.

The x-axis is arithmetic intensity (FLOPs per byte moved), the y-axis the FLOP/s the roofline lets that operator
reach: ``min(peak, intensity x bandwidth)``. The roof is the bandwidth's slope until it meets the flat peak at the
ridge point (peak / bandwidth); left of it an operator waits on memory, right of it on arithmetic.

The points are the operators of :func:`~cblab_teach.production.step_time.step_time` (FLOPs and bytes per operator),
on the spec sheet (``IDEAL`` efficiency): decode steps at several batch sizes and one prefill chunk. The GEMMs read
their weights once per step whatever the batch, so their intensity grows with the batch and they turn compute-bound
near batch ≈ ridge; decode attention reads every request's own keys and values, so its intensity stays near the
GQA group (query heads per KV head) at any batch. Nothing is measured here: the figure draws the model's arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import plotly.graph_objects as go

from ..errors import ConfigError
from ..production._lookup import as_gpu, as_shape, int_at_least
from ..production.gpus import GPUSpec
from ..production.models import ModelShape
from ..production.roofline import peak_flops, ridge_point
from ..production.step_time import IDEAL, step_time
from .labels import text
from .lang import resolve
from .legend import legend_above

GEMMS = ("qkv", "o_proj", "mlp", "lm_head")
ATTENTION = "attention"
DEFAULT_BATCHES = (1, 8, 64, 256, 1024)
ROOF_COLOR = "#222A2A"
GEMM_COLOR = "#2E91E5"
ATTENTION_COLOR = "#EB663B"
RIDGE_COLOR = "#d00000"
TERA = 1e12


@dataclass(frozen=True)
class RooflinePoint:
    """One operator of one step, placed on the roofline: ``attained = min(roof peak, intensity x bandwidth)``."""

    op: str
    phase: str  # "decode" or "prefill"
    batch: int  # decode: requests in the step; prefill: tokens in the chunk
    flops: float
    bytes: float
    peak: float  # the flat part of this operator's roof, FLOP/s
    bandwidth: float  # bytes/s

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @property
    def attained(self) -> float:
        """FLOP/s the roofline allows: the bandwidth slope below the ridge, the peak above it."""
        return min(self.peak, self.intensity * self.bandwidth)

    @property
    def seconds(self) -> float:
        """The operator's time on the spec sheet: the slower of its FLOPs and its bytes."""
        return max(self.flops / self.peak, self.bytes / self.bandwidth)

    @property
    def bound(self) -> str:
        return "compute" if self.intensity * self.bandwidth > self.peak else "memory"


def _batches(batches: Iterable[int]) -> list[int]:
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise ConfigError(f"batches must be a sequence of ints >= 1, got {batches!r}")
    out = [int_at_least("each decode batch size", b) for b in batches]
    if not out:
        raise ConfigError(f"batches must name at least one decode batch size, got {batches!r}")
    return out


def _chunk(prefill_chunk) -> tuple[int, int] | None:
    if prefill_chunk is None:
        return None
    if not isinstance(prefill_chunk, (tuple, list)) or len(prefill_chunk) != 2:
        raise ConfigError(f"prefill_chunk must be None or (length, context_before), got {prefill_chunk!r}")
    length, before = prefill_chunk
    if not isinstance(before, int) or isinstance(before, bool) or before < 0:
        raise ConfigError(f"prefill_chunk's context_before must be an int >= 0, got {prefill_chunk!r}")
    return int_at_least("prefill_chunk's length", length), before


def attention_peak(gpu: GPUSpec | str, dtype: str) -> float:
    """The peak attention runs at in ``step_time``: 16-bit tensor cores (fp32 when the model runs in fp32)."""
    return peak_flops(gpu, "fp32" if dtype == "fp32" else "bf16")


def roofline_points(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    batches: Iterable[int] = DEFAULT_BATCHES,
    context: int = 1024,
    prefill_chunk: tuple[int, int] | None = (2048, 0),
    dtype: str = "bf16",
    kv_dtype: str | None = None,
) -> list[RooflinePoint]:
    """The GEMMs and attention of decode steps (``batch`` requests, each attending to ``context`` keys) and of one
    prefill chunk ``(length, context_before)``: FLOPs and bytes from ``step_time`` with the spec sheet's rates."""
    shape, spec = as_shape(model), as_gpu(gpu)
    sizes, chunk = _batches(batches), _chunk(prefill_chunk)
    int_at_least("context", context)
    mm_peak, attn_peak = peak_flops(spec, dtype), attention_peak(spec, dtype)
    bandwidth = spec.bandwidth_bytes_per_s
    steps = [("decode", b, {"decode_contexts": [context] * b}) for b in sizes]
    if chunk is not None:
        steps.append(("prefill", chunk[0], {"prefill_chunks": [chunk]}))
    points = []
    for phase, batch, args in steps:
        timed = step_time(shape, spec, dtype=dtype, kv_dtype=kv_dtype, efficiency=IDEAL, **args)
        for name in (*GEMMS, ATTENTION):
            op = timed.op(name)
            peak = attn_peak if name == ATTENTION else mm_peak
            points.append(RooflinePoint(name, phase, batch, op.flops, op.bytes, peak, bandwidth))
    return points


def _roof_trace(name: str, peak: float, bandwidth: float, x_lo: float, x_hi: float, dash: str) -> go.Scatter:
    ridge = peak / bandwidth
    return go.Scatter(
        name=name,
        mode="lines",
        x=[x_lo, ridge, x_hi],
        y=[x_lo * bandwidth / TERA, peak / TERA, peak / TERA],
        line={"color": ROOF_COLOR, "width": 3, "dash": dash},
        hoverinfo="skip",
    )


def _point_trace(points: list[RooflinePoint], group: str, phase: str, lang: str, chunk_before: int) -> go.Scatter:
    gemm = group == "gemm"
    step_words = {
        "decode": lambda p: text(lang, "roof_decode_point", batch=p.batch),
        "prefill": lambda p: text(lang, "roof_prefill_point", tokens=p.batch, before=chunk_before),
    }[phase]
    labels = [""] * len(points)
    if phase == "decode" and gemm:  # one batch label per step, on its biggest GEMM
        for i, p in enumerate(points):
            if p.op == "mlp":
                labels[i] = f"B={p.batch}"
    elif phase == "decode" and points:  # decode attention: every batch lands on the same intensity
        sizes = sorted({p.batch for p in points})
        labels[0] = f"B={sizes[0]}" if len(sizes) == 1 else f"B={sizes[0]}…{sizes[-1]}"
    color = GEMM_COLOR if gemm else ATTENTION_COLOR
    symbol = "circle" if gemm else "diamond"
    return go.Scatter(
        name=text(lang, f"{group}_{phase}"),
        legendgroup=f"{group}_{phase}",
        mode="markers+text",
        x=[p.intensity for p in points],
        y=[p.attained / TERA for p in points],
        text=labels,
        textposition="top center" if gemm else "middle right",
        textfont={"size": 12, "color": color},
        customdata=[[p.op, step_words(p), p.seconds * 1e6, text(lang, f"{p.bound}_bound")] for p in points],
        hovertemplate=text(lang, "roofline_hover"),
        marker={
            "symbol": symbol if phase == "decode" else f"{symbol}-open",
            "size": 11 if phase == "decode" else 13,
            "color": color,
            "line": {"width": 2 if phase == "prefill" else 1, "color": color if phase == "prefill" else "white"},
        },
    )


def roofline_figure(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    batches: Iterable[int] = DEFAULT_BATCHES,
    context: int = 1024,
    prefill_chunk: tuple[int, int] | None = (2048, 0),
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    lang: str | None = None,
) -> go.Figure:
    """Log-log roofline of ``model`` on ``gpu``: the roof, its ridge point, and each operator's point for decode at
    every size in ``batches`` and one ``prefill_chunk`` (None: none); GEMMs (circles) apart from attention
    (diamonds), decode filled, prefill open. Hover: operator, step, intensity, FLOP/s, time on the spec sheet."""
    lang = resolve(lang)
    shape, spec = as_shape(model), as_gpu(gpu)
    points = roofline_points(shape, spec, batches, context, prefill_chunk, dtype, kv_dtype)
    bandwidth, peak, ridge = spec.bandwidth_bytes_per_s, peak_flops(spec, dtype), ridge_point(spec, dtype)
    attn_peak = attention_peak(spec, dtype)
    xs = [p.intensity for p in points] + [ridge, attn_peak / bandwidth]
    x_lo, x_hi = min(xs) / 2, max(xs) * 2
    y_lo = min(min(p.attained for p in points), x_lo * bandwidth) / TERA
    y_hi = max(peak, attn_peak) / TERA
    traces = [_roof_trace(text(lang, "roof"), peak, bandwidth, x_lo, x_hi, "solid")]
    if attn_peak != peak:  # fp8 / int8 GEMMs: attention keeps the 16-bit roof
        attn_dtype = "fp32" if dtype == "fp32" else "bf16"
        traces.append(_roof_trace(text(lang, "roof_attention", dtype=attn_dtype), attn_peak, bandwidth, x_lo, x_hi,
                                  "dot"))  # fmt: skip
    traces.append(
        go.Scatter(
            name=text(lang, "ridge"),
            mode="markers+text",
            x=[ridge],
            y=[peak / TERA],
            text=[text(lang, "ridge_text", ridge=ridge)],
            textposition="bottom right",
            textfont={"size": 13, "color": RIDGE_COLOR},
            marker={"symbol": "star", "size": 16, "color": RIDGE_COLOR, "line": {"width": 1, "color": "white"}},
            hovertemplate=text(lang, "ridge_hover"),
        )
    )
    traces.append(  # the ridge's x, down to the axis: where batch ≈ ridge puts the GEMMs
        go.Scatter(
            x=[ridge, ridge],
            y=[y_lo, peak / TERA],
            mode="lines",
            showlegend=False,
            hoverinfo="skip",
            line={"color": RIDGE_COLOR, "width": 1, "dash": "dot"},
        )
    )
    before = prefill_chunk[1] if prefill_chunk is not None else 0
    for phase in ("decode", "prefill"):
        for group, ops in (("gemm", GEMMS), ("attention", (ATTENTION,))):
            chosen = [p for p in points if p.phase == phase and p.op in ops]
            if chosen:
                traces.append(_point_trace(chosen, group, phase, lang, before))
    fig = go.Figure(traces)
    fig.update_layout(legend_above())
    fig.update_layout(
        title={"text": text(lang, "roofline_title", model=shape.name, gpu=spec.name, dtype=dtype, context=context)},
        margin={"t": 110, "l": 70, "r": 20, "b": 60},  # room for a legend that wraps to two rows at 1024 px
        height=560,
        xaxis={"type": "log", "range": [math.log10(x_lo), math.log10(x_hi)], "title": text(lang, "intensity_axis")},
        yaxis={
            "type": "log",
            "range": [math.log10(y_lo / 2), math.log10(y_hi * 2)],
            "title": text(lang, "attained_axis"),
        },
        hovermode="closest",
    )
    return fig
