"""A simulated run on its own clock: what each step computed, how long it took, and the queue around it.

:func:`~cblab_teach.production.simulate.simulate` keeps one :class:`~cblab_teach.production.simulate.SimStep` per
engine step (start, seconds, decode and prefill tokens, running, waiting, preempted), not the engine's
``StepRecord``s, so the request Gantt chart of :mod:`cblab_teach.viz.timeline` does not apply; this view draws the
steps themselves. Top: one bar per step, as wide as the step took on the simulated GPU, decode tokens under prefill
tokens; a gap is the server idle until the next arrival. Bottom: requests running and waiting after each step, and a
red cross where a step preempted requests.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import ConfigError
from ..production.simulate import SimResult
from .labels import text
from .lang import resolve
from .legend import legend_above
from .timeline import PREEMPTED_COLOR

DECODE_COLOR = "#2E91E5"
PREFILL_COLOR = "#FF9616"
RUNNING_COLOR = "#1CA71C"
WAITING_COLOR = "#7f7f7f"


def _check(result: SimResult) -> SimResult:
    if not isinstance(result, SimResult):
        raise ConfigError(f"sim_timeline_figure draws a SimResult (from production.simulate), got {result!r}")
    if not result.steps:
        raise ConfigError("the SimResult has no steps to draw")
    return result


def _token_bars(result: SimResult, kind: str, lang: str) -> go.Bar:
    """One bar per step from its start, ``seconds`` wide; ``kind`` is ``decode`` or ``prefill``."""
    steps = result.steps
    counts = [s.decode_tokens if kind == "decode" else s.prefill_tokens for s in steps]
    words = text(lang, f"sim_{kind}")
    return go.Bar(
        name=words,
        legendgroup=kind,
        x=[s.start_s for s in steps],
        y=counts,
        width=[s.seconds for s in steps],
        offset=0,  # the bar starts at the step's start and spans its duration
        customdata=[[i, words, s.seconds * 1e3] for i, s in enumerate(steps)],
        hovertemplate=text(lang, "sim_step_hover"),
        marker={"color": DECODE_COLOR if kind == "decode" else PREFILL_COLOR, "line": {"width": 0}},
    )


def _count_line(result: SimResult, kind: str, lang: str) -> go.Scatter:
    """Requests ``running`` or ``waiting`` after each step, held until the next one (a step line)."""
    steps = result.steps
    ends = [s.start_s + s.seconds for s in steps]
    return go.Scatter(
        name=text(lang, f"sim_{kind}"),
        legendgroup=kind,
        mode="lines",
        x=ends,
        y=[getattr(s, kind) for s in steps],
        line={
            "shape": "hv",
            "width": 2,
            "color": RUNNING_COLOR if kind == "running" else WAITING_COLOR,
            "dash": "solid" if kind == "running" else "dash",
        },
        hovertemplate=f"%{{y}} {text(lang, f'sim_{kind}')}<extra></extra>",
    )


def _preemptions(result: SimResult, lang: str) -> go.Scatter:
    marked = [(i, s) for i, s in enumerate(result.steps) if s.preempted]
    return go.Scatter(
        name=text(lang, "sim_preempted"),
        legendgroup="preempted",
        showlegend=bool(marked),
        mode="markers",
        x=[s.start_s + s.seconds / 2 for _, s in marked],
        y=[s.running for _, s in marked],
        customdata=[[i, s.preempted] for i, s in marked],
        hovertemplate=text(lang, "sim_preempt_hover"),
        marker={"symbol": "x", "size": 12, "color": PREEMPTED_COLOR, "line": {"width": 1.5, "color": "white"}},
    )


def sim_timeline_figure(result: SimResult, lang: str | None = None) -> go.Figure:
    """Two panels on one simulated-seconds axis: tokens per step (bars as wide as the step), and the requests
    running / waiting, with preemptions marked. Reads ``result.steps`` only; nothing is recomputed."""
    lang = resolve(lang)
    result = _check(result)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.6, 0.4])
    fig.add_trace(_token_bars(result, "decode", lang), 1, 1)
    fig.add_trace(_token_bars(result, "prefill", lang), 1, 1)
    fig.add_trace(_count_line(result, "running", lang), 2, 1)
    fig.add_trace(_count_line(result, "waiting", lang), 2, 1)
    fig.add_trace(_preemptions(result, lang), 2, 1)
    last = result.steps[-1]
    start, end = result.steps[0].start_s, last.start_s + last.seconds
    fig.update_layout(legend_above())
    fig.update_layout(
        title={
            "text": text(lang, "sim_title", steps=len(result.steps), requests=len(result.requests), seconds=end - start)
        },
        barmode="stack",
        bargap=0,
        height=560,
        margin={"t": 90, "l": 70, "r": 20, "b": 60},
        hovermode="closest",
    )
    fig.update_xaxes(range=[start, end])
    fig.update_xaxes(title=text(lang, "sim_time_axis"), row=2, col=1)
    fig.update_yaxes(title=text(lang, "sim_tokens_axis"), rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title=text(lang, "sim_requests_axis"), rangemode="tozero", row=2, col=1)
    return fig
