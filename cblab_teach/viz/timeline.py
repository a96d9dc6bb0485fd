"""Each request's life as a Gantt chart: waiting, prefill, decode, finished.

The state of request ``r`` at step ``s`` is read from the records, never
recomputed: ``prefill`` / ``decode`` if the plan gave it a chunk of that kind,
``waiting`` if it sits in ``record.waiting``, ``idle`` if it holds KV but got
no tokens, and ``padding`` if it had already finished yet was still computed
(static batching keeps finished rows in the batch until the longest is done).

With ``EngineConfig(preemption=True)`` a request can lose its KV: a red cross
marks the step whose ``record.preempted`` names it, and the prefill that later
computes those tokens again is drawn as ``recompute`` (cross-hatched), apart
from first-time ``prefill``: that is the price of preemption, in steps.

With ``preemption="swap"`` a victim named in ``record.swapped`` keeps its K/V in
the host pool instead: a blue triangle pointing down marks the ``swap out``, one
pointing up the ``swap in`` (the admission that copies it back), and the request
resumes at the tokens it had, so it draws no ``recompute`` bar. A victim the host
pool had no room for falls back to recompute and gets the red cross.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import check_records, label, preemption_events, recompute_marks, run_request_ids, swap_in_events
from .colors import PADDING_COLOR, WAITING_COLOR, request_color
from .errors import VizError
from .labels import text
from .lang import resolve

if TYPE_CHECKING:
    from ..core.engine import StepRecord

STATES = ("waiting", "prefill", "recompute", "decode", "idle", "padding")
_PATTERN = {"waiting": "", "prefill": "/", "recompute": "x", "decode": "", "idle": ".", "padding": "x"}
PREEMPTED_COLOR = "#d00000"
SWAP_COLOR = "#1f5fbf"
_PATTERN_INK = {"recompute": {"fgcolor": PREEMPTED_COLOR, "fgopacity": 0.9}}


def is_static(records: Sequence[StepRecord]) -> bool:
    """Static-batching records: nobody ever waits in them, and each step counts its padding."""
    return all(not r.waiting and "padding_tokens" in r.extra for r in records)


def request_states(records: Sequence[StepRecord], all_arrive_at_start: bool | None = None) -> dict:
    """``{request id: [state or None per step]}`` (None: not arrived yet, or finished).

    ``recompute`` is a prefill chunk that computes again KV a preemption freed.

    Static records do not list waiting requests; with ``all_arrive_at_start`` (default for
    them) a request not yet computed counts as waiting from step 0, as it would in a server.
    """
    records = check_records(records)
    if all_arrive_at_start is None:
        all_arrive_at_start = is_static(records)
    ids = run_request_ids(records)
    states: dict = {rid: [None] * len(records) for rid in ids}
    finished: set = set()
    started: set = set()
    recompute = recompute_marks(records)
    for s, r in enumerate(records):
        kinds = {c.request_id: c.kind for c in r.plan.chunks}
        kinds.update({rid: "recompute" for rid in recompute[s]})
        waiting, running = set(r.waiting), set(r.running)
        for rid in ids:
            if rid in kinds:
                state = "padding" if rid in finished else kinds[rid]
                started.add(rid)
            elif rid in waiting or (all_arrive_at_start and rid not in started and rid not in finished):
                state = "waiting"
            elif rid in running:
                state = "idle"
            else:
                state = None
            states[rid][s] = state
        finished.update(r.finished)
    return states


def finish_steps(records: Sequence[StepRecord]) -> dict:
    """``{request id: step at which it finished}``."""
    return {rid: r.step for r in records for rid in r.finished}


def segments(states: list) -> list[tuple[str, int, int]]:
    """Run-length encode one request's states: ``[(state, first step, steps)]``."""
    out: list[tuple[str, int, int]] = []
    for s, state in enumerate(states):
        if state is None:
            continue
        if out and out[-1][0] == state and out[-1][1] + out[-1][2] == s:
            out[-1] = (state, out[-1][1], out[-1][2] + 1)
        else:
            out.append((state, s, 1))
    return out


def _color(state: str, rid) -> str:
    return {"waiting": WAITING_COLOR, "padding": PADDING_COLOR}.get(state, request_color(rid))


def preemption_trace(
    records: Sequence[StepRecord], showlegend: bool = True, x: str = "step", lang: str | None = None
) -> go.Scatter:
    """A red cross at each (request, step) where the request lost its KV and went back to waiting (a swapped
    victim, which keeps its KV in the host pool, is drawn by :func:`swap_traces` instead)."""
    edges = step_edges(records, x)
    events = preemption_events(records, "recompute")
    return go.Scatter(
        name=text(lang, "preempted"),
        legendgroup="preempted",
        showlegend=showlegend and bool(events),
        mode="markers",
        x=[(edges[s][0] + edges[s][1]) / 2 for s, _, _ in events],
        y=[label(rid) for _, rid, _ in events],
        customdata=[[records[s].step, n] for s, _, n in events],
        marker={"symbol": "x", "size": 13, "color": PREEMPTED_COLOR, "line": {"width": 1.5, "color": "white"}},
        hovertemplate="%{y} preempted at step %{customdata[0]}: KV freed, will recompute %{customdata[1]} tokens"
        "<extra></extra>",
    )


def swap_traces(
    records: Sequence[StepRecord], showlegend: bool = True, x: str = "step", lang: str | None = None
) -> list[go.Scatter]:
    """``swap out``: a triangle pointing down where a victim's K/V went to the host pool (``record.swapped``);
    ``swap in``: one pointing up where its admission copied it back. Empty traces (no legend) without swaps."""
    edges = step_edges(records, x)
    out, back = preemption_events(records, "swap"), swap_in_events(records)
    traces = []
    for name, events, symbol, verb in (
        ("swap out", out, "triangle-down", "preempted at step %{customdata[0]}: %{customdata[1]} tokens of K/V "
         "copied to the host pool (nothing to recompute)"),
        ("swap in", back, "triangle-up", "admitted at step %{customdata[0]}: %{customdata[1]} tokens of K/V "
         "copied back from the host pool"),
    ):  # fmt: skip
        traces.append(
            go.Scatter(
                name=text(lang, name),
                legendgroup=name,
                showlegend=showlegend and bool(events),
                mode="markers",
                x=[(edges[s][0] + edges[s][1]) / 2 for s, _, _ in events],
                y=[label(rid) for _, rid, _ in events],
                customdata=[[records[s].step, n] for s, _, n in events],
                marker={"symbol": symbol, "size": 12, "color": SWAP_COLOR, "line": {"width": 1.5, "color": "white"}},
                hovertemplate=f"%{{y}} {verb}<extra></extra>",
            )
        )
    return traces


AXES = {"step": "step", "time": "milliseconds since the first step"}  # the English words; other languages: labels
_AXIS_KEYS = {"step": "step_axis", "time": "time_axis"}


def axis_title(x: str, lang: str | None = None) -> str:
    """The x-axis title of a timeline drawn by ``x`` (``step`` or ``time``), in ``lang``."""
    if x not in AXES:
        raise VizError(f"x must be one of {tuple(AXES)}, got {x!r}")
    return text(lang, _AXIS_KEYS[x])


def step_edges(records: Sequence[StepRecord], x: str = "step") -> list[tuple[float, float]]:
    """Where each step starts and ends on the x-axis: by step number, or by wall time (a long step is wide)."""
    if x == "step":
        return [(s - 0.5, s + 0.5) for s in range(len(records))]
    if x == "time":
        t0 = records[0].start_time
        return [(1e3 * (r.start_time - t0), 1e3 * (r.start_time - t0 + r.duration_s)) for r in records]
    raise VizError(f"x must be one of {tuple(AXES)}, got {x!r}")


def timeline_traces(
    records: Sequence[StepRecord], showlegend: bool = True, x: str = "step", lang: str | None = None
) -> list[go.BaseTraceType]:
    """One bar trace per state (a bar spans a run of steps in one state) and the finish marks."""
    lang = resolve(lang)
    records = check_records(records)
    edges = step_edges(records, x)
    states = request_states(records)
    per_state: dict[str, list] = {s: [] for s in STATES}
    for rid, row in states.items():
        for state, start, length in segments(row):
            per_state[state].append((rid, start, length))
    traces: list[go.BaseTraceType] = []
    for state in STATES:
        rows = per_state[state]
        hover_state = text(lang, "recompute_hover" if state == "recompute" else state)
        traces.append(
            go.Bar(
                name=text(lang, state),
                legendgroup=state,
                showlegend=showlegend and bool(rows),  # only the states this run has
                orientation="h",
                y=[label(rid) for rid, _, _ in rows],
                x=[edges[b + n - 1][1] - edges[b][0] for _, b, n in rows],
                base=[edges[b][0] for _, b, _ in rows],
                customdata=[[label(rid), hover_state, b, b + n - 1] for rid, b, n in rows],
                hovertemplate=text(lang, "state_hover"),
                marker={
                    "color": [_color(state, rid) for rid, _, _ in rows] or WAITING_COLOR,
                    "pattern": {"shape": _PATTERN[state], **_PATTERN_INK.get(state, {})},
                    "opacity": 0.45 if state == "idle" else 1.0,
                    "line": {"width": 0},
                },
            )
        )
    traces.append(preemption_trace(records, showlegend, x, lang))
    traces += swap_traces(records, showlegend, x, lang)
    done = finish_steps(records)
    traces.append(
        go.Scatter(
            name=text(lang, "finished"),
            legendgroup="finished",
            showlegend=showlegend,
            mode="markers",
            x=[edges[step][1] for step in done.values()],
            y=[label(rid) for rid in done],
            marker={"symbol": "line-ns", "size": 14, "line": {"width": 3, "color": "black"}},
            hovertemplate=text(lang, "finished_hover"),
            customdata=list(done.values()),
        )
    )
    return traces


def _request_order(records: Sequence[StepRecord]) -> list[str]:
    return [label(rid) for rid in run_request_ids(records)]


def _height(fig: go.Figure, rows: int, least: int) -> int:
    """Tall enough for one bar per request and for every legend entry (the legend would scroll otherwise)."""
    entries = sum(1 for t in fig.data if t.showlegend)
    return max(least, 22 * rows + least - 160, 29 * entries + 190)  # plotly's margins take 180 px


def timeline_figure(
    records: Sequence[StepRecord], title: str = "", x: str = "step", lang: str | None = None
) -> go.Figure:
    """Gantt chart of every request of a run; ``x="time"`` spaces steps by their measured duration."""
    lang = resolve(lang)
    records = check_records(records)
    fig = go.Figure(timeline_traces(records, x=x, lang=lang))
    fig.update_layout(
        barmode="overlay",
        title=title or text(lang, "timeline_title", steps=len(records)),
        xaxis_title=axis_title(x, lang),
        yaxis={
            "autorange": "reversed",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": _request_order(records),
        },
    )
    fig.update_layout(height=_height(fig, len(run_request_ids(records)), 300))
    return fig


def compare_timelines(
    continuous_records: Sequence[StepRecord],
    static_records: Sequence[StepRecord],
    x: str = "step",
    names: tuple[str, str] | None = None,
    title: str | None = None,
    lang: str | None = None,
) -> go.Figure:
    """Two runs of the same workload side by side on one x-axis (steps or time): by default continuous vs
    static batching; ``names`` labels the two panels for any other pair (recompute vs swap, say).
    ``names`` and ``title`` default to their words in ``lang``."""
    lang = resolve(lang)
    names = names or (text(lang, "continuous"), text(lang, "static"))
    title = text(lang, "compare_title") if title is None else title
    cont, stat = check_records(continuous_records), check_records(static_records)
    order = _request_order(cont)
    order += [r for r in _request_order(stat) if r not in order]
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=(
            text(lang, "compare_panel", name=names[0], steps=len(cont)),
            text(lang, "compare_panel", name=names[1], steps=len(stat)),
        ),
    )
    left = timeline_traces(cont, x=x, lang=lang)
    for trace in left:
        fig.add_trace(trace, 1, 1)
    shown = {t.name for t in left if t.showlegend}
    for trace in timeline_traces(stat, x=x, lang=lang):  # a legend entry only the right panel needs is shown once
        trace.showlegend = bool(trace.showlegend) and trace.name not in shown
        fig.add_trace(trace, 1, 2)
    last = max(step_edges(cont, x)[-1][1], step_edges(stat, x)[-1][1])
    fig.update_xaxes(title=axis_title(x, lang), range=[step_edges(cont, x)[0][0], last])
    fig.update_yaxes(autorange="reversed", type="category", categoryorder="array", categoryarray=order)
    fig.update_layout(barmode="overlay", height=_height(fig, len(order), 320), title=title)
    return fig
