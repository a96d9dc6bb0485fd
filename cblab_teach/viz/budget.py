"""The token budget of each step: decode tokens, prefill-chunk tokens (per request) and what is left unused.

One bar per step, cut into segments placed with an explicit ``base`` so the
three kinds (decode, prefill, unused) are three traces whatever the number of
requests: cheap to animate and to update in a widget.

With speculative decoding a decode chunk is ``1 + k`` tokens: the request's own
next token (solid) and ``k`` draft tokens being verified (a fourth trace, in a
lighter shade of the request's colour). Every draft costs budget whether or not
it is accepted; the hover says how many were (``len(record.new_tokens[id]) - 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ._common import Frame, check_records, label
from .animate import animated_figure
from .colors import UNUSED_COLOR, lighten, request_color
from .labels import text
from .lang import resolve
from .legend import legend_above, legend_key

if TYPE_CHECKING:
    from ..core.engine import StepRecord

KINDS = ("decode", "prefill", "unused")
DRAFT = "draft"  # speculative tokens of a decode chunk: a trace of their own, after the three KINDS
_PATTERN = {"decode": "", "prefill": "/", "unused": ".", DRAFT: ""}


def accepted_drafts(record: StepRecord, request_id) -> int:
    """Drafts kept: the tokens the request gained this step, less the target model's own one."""
    return max(len(record.new_tokens.get(request_id, ())) - 1, 0)


def budget_segments(record: StepRecord) -> dict[str, list[tuple]]:
    """``kind -> [(request id or None, base, length)]``: the step's bar, in plan order.

    A decode chunk with drafts is cut in two: ``decode`` (its one plain token) and ``draft`` (the guesses).
    """
    segments: dict[str, list[tuple]] = {k: [] for k in (*KINDS, DRAFT)}
    offset = 0
    for c in record.plan.chunks:
        drafts = len(getattr(c, "drafts", ()))
        segments[c.kind].append((c.request_id, offset, c.length - drafts))
        if drafts:
            segments[DRAFT].append((c.request_id, offset + c.length - drafts, drafts))
        offset += c.length
    if record.plan.budget > offset:
        segments["unused"].append((None, offset, record.plan.budget - offset))
    return segments


def _color(kind: str, rid) -> str:
    if rid is None:
        return UNUSED_COLOR
    return lighten(request_color(rid), 0.5) if kind == DRAFT else request_color(rid)


def _trace_update(
    kind: str,
    segs: list[tuple],
    step: int,
    position,
    horizontal: bool,
    record: StepRecord | None = None,
    lang: str | None = None,
) -> dict:
    unused = text(lang, "unused")
    names = [label(rid) if rid is not None else unused for rid, _, _ in segs]
    lengths = [n for _, _, n in segs]
    customdata = [[name, text(lang, kind) if kind in KINDS else kind, n, step] for name, n in zip(names, lengths)]
    if kind == DRAFT:  # the accepted count rides along in a fifth column
        records = record if isinstance(record, list) else [record] * len(segs)
        customdata = [cd + [accepted_drafts(r, rid)] for cd, r, (rid, _, _) in zip(customdata, records, segs)]
    update = {
        "base": [b for _, b, _ in segs],
        "text": names,
        "customdata": customdata,
        "marker": {
            "color": [_color(kind, rid) for rid, _, _ in segs],
            "pattern": {"shape": _PATTERN[kind]},
            "line": {"color": "white", "width": 1},
        },
    }
    pos = [position] * len(segs) if not isinstance(position, list) else position
    update.update({"x": lengths, "y": pos} if horizontal else {"x": pos, "y": lengths})
    return update


def _empty_trace(kind: str, horizontal: bool, lang: str | None = None) -> go.Bar:
    return go.Bar(
        name=text(lang, "drafts" if kind == DRAFT else kind),
        orientation="h" if horizontal else "v",
        textposition="inside",
        insidetextanchor="middle",
        hovertemplate=text(lang, "drafts_hover" if kind == DRAFT else "budget_hover"),
        marker={
            "pattern": {"shape": _PATTERN[kind]},
            "color": {"unused": UNUSED_COLOR, DRAFT: "#bbb"}.get(kind, "#555"),
        },
    )


def _empty_traces(horizontal: bool, lang: str | None = None) -> list[go.Bar]:
    return [_empty_trace(kind, horizontal, lang) for kind in KINDS]


class BudgetView:
    """One step's budget as a single horizontal bar, its words in ``lang`` (None: the current language)."""

    def __init__(self, records: Sequence[StepRecord], lang: str | None = None) -> None:
        self.lang = resolve(lang)
        self.records = check_records(records)
        self.trace_indices = [0, 1, 2, 3]  # decode, prefill, unused, draft
        self.max_budget = max(max(r.plan.budget, r.plan.used) for r in self.records)

    def base(self) -> go.Figure:
        """The four data traces (no legend entries of their own: a frame may leave one empty), then one legend
        key per kind the run has, so the legend is the same in every frame."""
        data = [*_empty_traces(True, self.lang), _empty_trace(DRAFT, True, self.lang)]
        drafts = any(getattr(c, "drafts", ()) for r in self.records for c in r.plan.chunks)
        kinds = [*KINDS, DRAFT] if drafts else list(KINDS)
        for trace, kind in zip(data, (*KINDS, DRAFT)):
            trace.update(showlegend=False, legendgroup=kind)
        keys = [legend_key(data[i].name, kind, data[i].marker.to_plotly_json()) for i, kind in enumerate(kinds)]
        fig = go.Figure([*data, *keys])
        fig.update_layout(legend_above(title_size=14))  # a step's title runs long: smaller, so it fits 1024 px
        fig.update_layout(
            barmode="overlay",
            height=340,
            uniformtext={"minsize": 8, "mode": "hide"},
            xaxis={"range": [0, self.max_budget], "title": text(self.lang, "budget_axis")},
            yaxis={"showticklabels": False},
        )
        return fig

    def frame(self, step: int) -> Frame:
        record = self.records[step]
        segs = budget_segments(record)
        data = [_trace_update(k, segs[k], record.step, "budget", True, record, self.lang) for k in (*KINDS, DRAFT)]
        plan = record.plan
        title = text(self.lang, "budget_step_title", step=record.step, decode=plan.decode_tokens,
                     prefill=plan.prefill_tokens, unused=max(plan.unused, 0), budget=plan.budget)  # fmt: skip
        drafts = sum(n for _, _, n in segs[DRAFT])
        if drafts:
            accepted = sum(accepted_drafts(record, rid) for rid, _, _ in segs[DRAFT])
            title += text(self.lang, "budget_drafts_title", drafts=drafts, accepted=accepted)
        return data, {"title": {"text": title}}


def budget_figure(records: Sequence[StepRecord], frame_ms: int = 400, lang: str | None = None) -> go.Figure:
    """Animated: one frame per step, with a step slider and play / pause (works offline)."""
    return animated_figure(BudgetView(records, lang), frame_ms)


def budget_overview(records: Sequence[StepRecord], lang: str | None = None) -> go.Figure:
    """The whole run: steps on the x-axis, each bar split by request and kind, the budget line on top.

    Traces: decode, prefill, unused, the budget line, then speculative drafts (empty without speculation).
    """
    lang = resolve(lang)
    records = check_records(records)
    fig = go.Figure(_empty_traces(False, lang))
    per_kind: dict[str, list] = {k: [] for k in (*KINDS, DRAFT)}
    for r in records:
        for kind, segs in budget_segments(r).items():
            per_kind[kind] += [(r, seg) for seg in segs]
    with fig.batch_update():
        for i, kind in enumerate(KINDS):
            rows = per_kind[kind]
            steps = [r.step for r, _ in rows]
            update = _trace_update(kind, [seg for _, seg in rows], 0, steps, False, None, lang)
            update["customdata"] = [cd[:3] + [s] for cd, s in zip(update["customdata"], steps)]
            fig.data[i].update(update, overwrite=True)
    fig.add_scatter(
        x=[r.step for r in records],
        y=[r.plan.budget for r in records],
        mode="lines",
        line={"shape": "hvh", "color": "black", "dash": "dot"},
        name=text(lang, "budget"),
    )
    rows = per_kind[DRAFT]
    steps = [r.step for r, _ in rows]
    draft = _trace_update(DRAFT, [seg for _, seg in rows], 0, steps, False, [r for r, _ in rows], lang)
    draft["customdata"] = [[*cd[:3], s, cd[4]] for cd, s in zip(draft["customdata"], steps)]
    fig.add_trace(_empty_trace(DRAFT, False, lang))
    fig.data[-1].update(draft, overwrite=True)
    fig.data[-1].update(showlegend=bool(rows))
    fig.update_layout(
        barmode="overlay",
        bargap=0.05,
        uniformtext={"minsize": 8, "mode": "hide"},
        title=text(lang, "overview_title") + (text(lang, "overview_drafts_title") if rows else ""),
        xaxis_title=text(lang, "step_axis"),
        yaxis_title=text(lang, "tokens_axis"),
        height=380,
    )
    return fig
