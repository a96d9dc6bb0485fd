"""Turn a StepView into a self-contained animated figure: frames, a step slider, play / pause.

Everything lives in the figure's JSON, so it plays in exported HTML with no kernel.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.basewidget import BaseFigureWidget

from ._common import StepView, gaps_as_none
from .labels import text

CONTROLS_TOP_PX = 60  # below the plot area: room for the x tick labels and the axis title
_FRAME_ARGS = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}


def apply_frame(fig: go.Figure, view: StepView, step: int) -> None:
    """Write one step's data into ``fig`` in place (a Figure or a FigureWidget)."""
    data, layout = view.frame(step)
    if isinstance(fig, BaseFigureWidget):
        data = [widget_safe(update) for update in data]
    with fig.batch_update():
        for index, update in zip(view.trace_indices, data):
            fig.data[index].update(update, overwrite=True)
        if layout:
            fig.layout.update(layout)


def widget_safe(update: dict) -> dict:
    """A trace update a widget can send: float arrays holding NaN (a heatmap's gaps) become lists with None.

    A widget's messages are strict JSON; a NaN would make the kernel print "Message serialization failed".
    A plain figure needs no help: plotly writes its NaN as null.
    """
    out = {}
    for key, value in update.items():
        is_float = isinstance(value, np.ndarray) and value.dtype.kind == "f"
        out[key] = gaps_as_none(value) if is_float and not np.isfinite(value).all() else value
    return out


def replace_figure(target: go.Figure, source: go.Figure) -> None:
    """Make ``target`` (typically a FigureWidget already on screen) show ``source``, in place."""
    with target.batch_update():
        if len(target.data) == len(source.data) and all(t.type == s.type for t, s in zip(target.data, source.data)):
            for t, s in zip(target.data, source.data):
                props = s.to_plotly_json()
                props.pop("type", None)
                t.update(props, overwrite=True)
        else:
            target.data = ()
            target.add_traces(list(source.data))
        layout = source.layout.to_plotly_json()
        if target.layout.template == source.layout.template:
            layout.pop("template", None)  # rebuilding a template is the slowest part of a redraw
        target.layout.update(layout, overwrite=True)


def animated_figure(view: StepView, frame_ms: int = 400) -> go.Figure:
    """Frames for every step of ``view.records``, plus a slider and play / pause buttons (in ``view.lang``)."""
    lang = getattr(view, "lang", None)
    fig = view.base()
    apply_frame(fig, view, 0)
    frames = []
    for i, record in enumerate(view.records):
        data, layout = view.frame(i)
        data = [dict(d, type=fig.data[t].type) for t, d in zip(view.trace_indices, data)]
        frames.append(go.Frame(data=data, traces=view.trace_indices, name=str(record.step), layout=layout or None))
    fig.frames = frames
    play_args = dict(_FRAME_ARGS, frame={"duration": frame_ms, "redraw": True}, fromcurrent=True)
    # The controls hang below the plot area at fixed pixel offsets (``pad``), under the x tick labels and the
    # axis title: placed at a fraction of the height instead, they cover the ticks of a short figure.
    fig.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": 0.0,
                "xanchor": "left",
                "yanchor": "top",
                "pad": {"t": CONTROLS_TOP_PX + 32, "r": 10},
                "showactive": False,
                "buttons": [
                    {"label": text(lang, "play_button"), "method": "animate", "args": [None, play_args]},
                    {"label": text(lang, "pause_button"), "method": "animate", "args": [[None], _FRAME_ARGS]},
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.2,
                "len": 0.8,
                "y": 0.0,
                "yanchor": "top",
                "pad": {"t": CONTROLS_TOP_PX, "b": 10},
                "currentvalue": {"prefix": text(lang, "slider_prefix")},
                "steps": [{"label": f.name, "method": "animate", "args": [[f.name], _FRAME_ARGS]} for f in frames],
            }
        ],
    )
    bottom = fig.layout.margin.b
    fig.update_layout(margin=dict(b=max(bottom or 0, CONTROLS_TOP_PX + 100)))
    return fig
