"""What a MetricsCollector measured: tokens per step, throughput over time, TTFT / TPOT distributions.

Reads only the collector's ``step_metrics()`` and ``request_metrics()``, so any
object with those two methods (and the documented fields) can be drawn.
"""

from __future__ import annotations

from itertools import accumulate

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .errors import VizError
from .labels import text
from .lang import resolve


def metrics_figure(collector, lang: str | None = None) -> go.Figure:
    """Four panels: tokens per step (decode / prefill), cumulative throughput, TTFT and TPOT histograms."""
    lang = resolve(lang)
    if not hasattr(collector, "step_metrics") or not hasattr(collector, "request_metrics"):
        raise VizError(f"{collector!r} is not a MetricsCollector (needs step_metrics() and request_metrics())")
    steps = list(collector.step_metrics())
    requests = list(collector.request_metrics())
    if not steps:
        raise VizError("the collector has no step metrics yet: run the engine with it first")
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[text(lang, f"metrics_{k}_panel") for k in ("tokens", "throughput", "ttft", "tpot")],
        vertical_spacing=0.16,
    )
    x = [m.step for m in steps]
    fig.add_bar(
        x=x, y=[m.decode_tokens for m in steps], name=text(lang, "decode"), marker_color="#2E91E5", row=1, col=1
    )
    fig.add_bar(
        x=x, y=[m.prefill_tokens for m in steps], name=text(lang, "prefill"), marker_color="#E15F99",
        marker_pattern_shape="/", row=1, col=1,
    )  # fmt: skip
    elapsed = list(accumulate(m.duration_s for m in steps))
    tokens = list(accumulate(m.decode_tokens + m.prefill_tokens for m in steps))
    throughput = [t / s if s > 0 else 0.0 for t, s in zip(tokens, elapsed)]
    fig.add_scatter(
        x=elapsed, y=throughput, mode="lines", name=text(lang, "metrics_throughput"), line_color="#1CA71C", row=1, col=2
    )
    ttft = [1e3 * r.ttft_s for r in requests if r.ttft_s is not None]
    tpot = [1e3 * r.tpot_s for r in requests if r.tpot_s is not None and r.num_output_tokens > 1]
    fig.add_histogram(x=ttft, name="TTFT", marker_color="#DA16FF", row=2, col=1)
    fig.add_histogram(x=tpot, name="TPOT", marker_color="#B68100", row=2, col=2)
    fig.update_layout(
        barmode="stack", height=620, title=text(lang, "metrics_title", steps=len(steps), requests=len(requests))
    )
    fig.update_xaxes(title_text=text(lang, "step_axis"), row=1, col=1)
    fig.update_xaxes(title_text=text(lang, "seconds_axis"), row=1, col=2)
    fig.update_xaxes(title_text=text(lang, "ms_axis"), row=2, col=1)
    fig.update_xaxes(title_text=text(lang, "ms_axis"), row=2, col=2)
    return fig
