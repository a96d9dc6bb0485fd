"""A legend that stays put: above the plot area, the same entries in every frame.

Plotly leaves out the legend entry of a trace with no data in the current frame, and the
whole legend when one entry is left; so an animated figure whose first step has only
prefill drew no legend at frame 0, then one from frame 1 on, and the plot area jumped.
A placed-by-fraction legend (``y=1.25``) also landed on the data once the controls' margin
shrank the plot area. Here every entry comes from a key trace of its own (one empty
point: nothing is drawn, nothing hovers) and the legend sits in the top margin in pixels
that the layout reserves for it under the title.
"""

from __future__ import annotations

import plotly.graph_objects as go

TITLE_PX = 40  # the title's line at the top of the figure
LEGEND_PX = 34  # one row of legend entries under it, just above the plot area


def legend_key(name: str, group: str, marker: dict, orientation: str = "h") -> go.Bar:
    """An entry in the legend for the traces of ``group``: shown in every frame, drawing nothing."""
    return go.Bar(
        x=[None],
        y=[None],
        name=name,
        legendgroup=group,
        orientation=orientation,
        marker=marker,
        hoverinfo="skip",
        showlegend=True,
    )


def legend_above(title_size: int = 15) -> dict:
    """Layout for a one-row legend between the title and the plot area, the same whatever the frame."""
    return {
        "showlegend": True,
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1, "yanchor": "bottom", "yref": "paper"},
        "margin": {"t": TITLE_PX + LEGEND_PX},
        "title": {"y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 12}, "font": {"size": title_size}},
    }
