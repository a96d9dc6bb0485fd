"""The token budget of each step: decode tokens, prefill-chunk tokens (per request) and what is left unused.

One bar per step, cut into segments placed with an explicit ``base`` so the
three kinds (decode, prefill, unused) are three traces whatever the number of
requests: cheap to animate and to update in a widget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ._common import Frame, check_records, label
from .animate import animated_figure
from .colors import UNUSED_COLOR, request_color

if TYPE_CHECKING:
    from ..core.engine import StepRecord

KINDS = ("decode", "prefill", "unused")
_PATTERN = {"decode": "", "prefill": "/", "unused": "."}
_HOVER = "%{customdata[0]}<br>%{customdata[1]}: %{customdata[2]} tokens<extra>step %{customdata[3]}</extra>"


def budget_segments(record: StepRecord) -> dict[str, list[tuple]]:
    """``kind -> [(request id or None, base, length)]``: the step's bar, in plan order."""
    segments: dict[str, list[tuple]] = {k: [] for k in KINDS}
    offset = 0
    for c in record.plan.chunks:
        segments[c.kind].append((c.request_id, offset, c.length))
        offset += c.length
    if record.plan.budget > offset:
        segments["unused"].append((None, offset, record.plan.budget - offset))
    return segments


def _trace_update(kind: str, segs: list[tuple], step: int, position, horizontal: bool) -> dict:
    names = [label(rid) if rid is not None else "unused" for rid, _, _ in segs]
    lengths = [n for _, _, n in segs]
    update = {
        "base": [b for _, b, _ in segs],
        "text": names,
        "customdata": [[name, kind, n, step] for name, n in zip(names, lengths)],
        "marker": {
            "color": [request_color(rid) if rid is not None else UNUSED_COLOR for rid, _, _ in segs],
            "pattern": {"shape": _PATTERN[kind]},
            "line": {"color": "white", "width": 1},
        },
    }
    pos = [position] * len(segs) if not isinstance(position, list) else position
    update.update({"x": lengths, "y": pos} if horizontal else {"x": pos, "y": lengths})
    return update


def _empty_traces(horizontal: bool) -> list[go.Bar]:
    return [
        go.Bar(
            name=kind,
            orientation="h" if horizontal else "v",
            textposition="inside",
            insidetextanchor="middle",
            hovertemplate=_HOVER,
            marker={"pattern": {"shape": _PATTERN[kind]}, "color": UNUSED_COLOR if kind == "unused" else "#555"},
        )
        for kind in KINDS
    ]


class BudgetView:
    """One step's budget as a single horizontal bar."""

    def __init__(self, records: Sequence[StepRecord]) -> None:
        self.records = check_records(records)
        self.trace_indices = [0, 1, 2]
        self.max_budget = max(max(r.plan.budget, r.plan.used) for r in self.records)

    def base(self) -> go.Figure:
        fig = go.Figure(_empty_traces(horizontal=True))
        fig.update_layout(
            barmode="overlay",
            height=260,
            uniformtext={"minsize": 8, "mode": "hide"},
            xaxis={"range": [0, self.max_budget], "title": "tokens in this step's budget"},
            yaxis={"showticklabels": False},
            legend={"orientation": "h", "y": 1.25},
            margin={"t": 70},
        )
        return fig

    def frame(self, step: int) -> Frame:
        record = self.records[step]
        segs = budget_segments(record)
        data = [_trace_update(k, segs[k], record.step, "budget", horizontal=True) for k in KINDS]
        plan = record.plan
        title = (
            f"step {record.step}: {plan.decode_tokens} decode + {plan.prefill_tokens} prefill tokens, "
            f"{max(plan.unused, 0)} of {plan.budget} unused"
        )
        return data, {"title": {"text": title}}


def budget_figure(records: Sequence[StepRecord], frame_ms: int = 400) -> go.Figure:
    """Animated: one frame per step, with a step slider and play / pause (works offline)."""
    return animated_figure(BudgetView(records), frame_ms)


def budget_overview(records: Sequence[StepRecord]) -> go.Figure:
    """The whole run: steps on the x-axis, each bar split by request and kind, the budget line on top."""
    records = check_records(records)
    fig = go.Figure(_empty_traces(horizontal=False))
    per_kind: dict[str, list] = {k: [] for k in KINDS}
    for r in records:
        for kind, segs in budget_segments(r).items():
            per_kind[kind] += [(r.step, seg) for seg in segs]
    with fig.batch_update():
        for i, kind in enumerate(KINDS):
            rows = per_kind[kind]
            steps = [s for s, _ in rows]
            update = _trace_update(kind, [seg for _, seg in rows], 0, steps, horizontal=False)
            update["customdata"] = [cd[:3] + [s] for cd, s in zip(update["customdata"], steps)]
            fig.data[i].update(update, overwrite=True)
    fig.add_scatter(
        x=[r.step for r in records],
        y=[r.plan.budget for r in records],
        mode="lines",
        line={"shape": "hvh", "color": "black", "dash": "dot"},
        name="budget",
    )
    fig.update_layout(
        barmode="overlay",
        bargap=0.05,
        uniformtext={"minsize": 8, "mode": "hide"},
        title="token budget per step: decode (solid), prefill chunks (hatched), unused (dotted grey)",
        xaxis_title="step",
        yaxis_title="tokens",
        height=380,
    )
    return fig
