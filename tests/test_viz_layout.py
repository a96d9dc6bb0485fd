"""The animated figures' layout, read from their JSON: a legend off the data and the same in every frame.

The drawn boxes are measured in Chromium by ``browser/test_figure_layout.py``; these checks
need no browser and say why a figure would fail there: a legend placed inside the plot
area, a legend that depends on which traces a frame fills, frames that change the layout,
a plot area squeezed by the controls' margin.
"""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from .viz_layout_cases import figures

FIGURES = figures()
DEFAULT_MARGIN = {"t": 100, "b": 80}  # plotly's
FRAME_LAYOUT_KEYS = {"title", "xaxis.showticklabels", "yaxis.showticklabels"}  # what a frame may change
LEAST_PLOT_PX = 90  # a bar row, or a few heatmap rows, still readable


@pytest.fixture(scope="module", params=list(FIGURES))
def figure(request) -> tuple[str, go.Figure]:
    return request.param, FIGURES[request.param]()


def legend_off_the_data(fig: go.Figure) -> str | None:
    """Why the legend would cover the plot area, or None: it must sit right of it or above it, anchored there."""
    legend = fig.layout.legend
    x = 1.02 if legend.x is None else legend.x
    y = 1 if legend.y is None else legend.y
    if legend.orientation != "h" and x >= 1 and legend.xanchor in (None, "auto", "left"):
        return None  # plotly's default: a column to the right of the plot area
    if legend.orientation == "h" and y >= 1 and legend.yanchor == "bottom" and legend.yref in (None, "paper"):
        return None  # a row whose bottom edge is the plot area's top
    return f"legend at x={legend.x}, y={legend.y}, anchored {legend.xanchor}/{legend.yanchor}: inside the plot area"


def test_the_legend_is_placed_off_the_plot_area(figure) -> None:
    name, fig = figure
    assert legend_off_the_data(fig) is None, f"{name}: {legend_off_the_data(fig)}"


def test_the_plot_area_keeps_room_under_title_legend_and_controls(figure) -> None:
    name, fig = figure
    margin = {k: getattr(fig.layout.margin, k) or DEFAULT_MARGIN[k] for k in ("t", "b")}
    height = fig.layout.height or 450
    assert height - margin["t"] - margin["b"] >= LEAST_PLOT_PX, f"{name}: {height} px tall, margins {margin}"
    if fig.layout.legend.orientation == "h":  # a row above the plot: the top margin holds the title and it
        assert margin["t"] >= 70, f"{name}: a {margin['t']} px top margin has no room for title and legend"


def test_frames_change_the_data_and_title_only(figure) -> None:
    name, fig = figure
    for frame in fig.frames:
        changed = set(frame.layout.to_plotly_json()) if frame.layout else set()
        flat = {f"{k}.{sub}" for k in changed for sub in frame.layout[k].to_plotly_json()} if changed else set()
        keys = {k for k in changed if k == "title"} | {k for k in flat if not k.startswith("title.")}
        assert keys <= FRAME_LAYOUT_KEYS, f"{name}: frame {frame.name} changes {sorted(keys - FRAME_LAYOUT_KEYS)}"


def in_legend(trace) -> bool:
    """Whether plotly gives ``trace`` a legend entry (heatmaps have none unless asked)."""
    shown = trace.showlegend if trace.showlegend is not None else trace.type not in ("heatmap", "image")
    return bool(shown and trace.name)


def test_the_legend_has_the_same_entries_in_every_frame(figure) -> None:
    """Plotly drops a trace without data from the legend (and a legend of one entry altogether), so every entry
    comes from a trace no frame rewrites, and the legend is shown explicitly."""
    name, fig = figure
    entries = [i for i, t in enumerate(fig.data) if in_legend(t)]
    if not fig.frames or not entries:
        return
    animated = set().union(*(set(f.traces) for f in fig.frames))
    assert not animated & set(entries), f"{name}: legend entries {sorted(animated & set(entries))} change by frame"
    assert fig.layout.showlegend is True, f"{name}: plotly hides a one-entry legend unless showlegend is set"
    for i in entries:
        points = fig.data[i].x if fig.data[i].x is not None else ()
        assert len(points) >= 1, f"{name}: entry {fig.data[i].name!r} has no point: plotly leaves it out"
