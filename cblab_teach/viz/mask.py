"""The ragged causal mask of a step: queries x keys, coloured by request.

A cell is drawn where query ``i`` may read key ``j`` (the mask the batch
builder produces, ``plan_layout(record.plan).mask``), in its request's colour;
keys already in the KV cache before this step (the cached prefix) are pale,
keys computed this step are full colour. Masked cells stay empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from ..core.batch_builder import PlanLayout, plan_layout
from ._common import Frame, check_records, check_step, run_request_ids, typed_array
from .animate import animated_figure
from .colors import discrete_colorscale, lighten, request_color
from .labels import text
from .lang import resolve

if TYPE_CHECKING:
    from ..core.engine import StepRecord

MAX_TICK_LABELS = 48


MASKED = 0  # code of a masked cell; request k: 1 + 2k (key computed this step), 2 + 2k (cached key)


def mask_codes(layout: PlanLayout, request_ids: Sequence, code_of: dict) -> np.ndarray:
    """``[N, M]`` small ints: ``MASKED``, or ``1 + 2k`` / ``2 + 2k`` (new / cached key of run-wide request ``k``).

    ``k`` is the index of the key's request in the whole run, so colours are stable across steps.
    """
    mask = layout.mask.numpy()
    key_request = np.array([code_of[request_ids[s]] for s in layout.key_seq_ids.tolist()], dtype=np.int64)
    codes = 1 + 2 * key_request + layout.key_is_cached.numpy()
    dtype = np.uint8 if codes.max(initial=0) < 256 else np.uint16
    return np.where(mask, codes[None, :], MASKED).astype(dtype)


def axis_labels(layout: PlanLayout, request_ids: Sequence) -> tuple[list[str], list[str]]:
    """Query labels ``r3·q12`` and key labels ``r3·k12 cached|new``: hover shows request and position."""
    queries = [f"r{request_ids[s]}·q{p}" for s, p in zip(layout.seq_ids.tolist(), layout.positions.tolist())]
    cached = layout.key_is_cached.tolist()
    keys = [
        f"r{request_ids[s]}·k{p} {'cached' if c else 'new'}"
        for s, p, c in zip(layout.key_seq_ids.tolist(), layout.key_positions.tolist(), cached)
    ]
    return queries, keys


class MaskView:
    def __init__(self, records: Sequence[StepRecord], lang: str | None = None) -> None:
        self.lang = resolve(lang)
        self.records = check_records(records)
        self.trace_indices = [0]
        self.request_ids = run_request_ids(self.records)
        self.code_of = {rid: k for k, rid in enumerate(self.request_ids)}

    def base(self) -> go.Figure:
        colors = ["#ffffff"]
        for rid in self.request_ids:
            colors += [request_color(rid), lighten(request_color(rid))]
        fig = go.Figure(
            go.Heatmap(
                colorscale=discrete_colorscale(colors),
                zmin=-0.5,
                zmax=len(colors) - 0.5,
                showscale=False,
                xgap=1,
                ygap=1,
                hovertemplate="query %{y}<br>key %{x}<extra></extra>",
            )
        )
        fig.update_layout(
            height=520,
            xaxis={"title": text(self.lang, "mask_keys_axis"), "type": "category"},
            yaxis={"title": text(self.lang, "mask_queries_axis"), "autorange": "reversed", "type": "category"},
            plot_bgcolor="white",
        )
        return fig

    def frame(self, step: int) -> Frame:
        record = self.records[step]
        layout = plan_layout(record.plan)
        rids = record.plan.request_ids
        z = mask_codes(layout, rids, self.code_of)
        queries, keys = axis_labels(layout, rids)
        title = text(self.lang, "mask_step_title", step=record.step, queries=len(queries), keys=len(keys),
                     visible=int(layout.mask.sum()), cached=int(layout.key_is_cached.sum()))  # fmt: skip
        update = {"z": typed_array(z), "x": keys, "y": queries}
        axes = {
            "title": {"text": title},
            "xaxis.showticklabels": len(keys) <= MAX_TICK_LABELS,
            "yaxis.showticklabels": len(queries) <= MAX_TICK_LABELS,
        }
        return [update], axes


def mask_figure(
    records: Sequence[StepRecord], step: int | None = None, frame_ms: int = 600, lang: str | None = None
) -> go.Figure:
    """The mask of one step, or (``step=None``) every step as an animation with a slider."""
    view = MaskView(records, lang)
    if step is None:
        return animated_figure(view, frame_ms)
    fig = view.base()
    data, layout = view.frame(check_step(view.records, step))
    fig.data[0].update(data[0])
    fig.update_layout(layout)
    return fig
