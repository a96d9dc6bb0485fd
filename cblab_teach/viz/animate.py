"""Turn a StepView into a self-contained animated figure: frames, a step slider, play / pause.

Everything lives in the figure's JSON, so it plays in exported HTML with no kernel.
"""

from __future__ import annotations

import plotly.graph_objects as go

from ._common import StepView

_FRAME_ARGS = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}


def apply_frame(fig: go.Figure, view: StepView, step: int) -> None:
    """Write one step's data into ``fig`` in place (a Figure or a FigureWidget)."""
    data, layout = view.frame(step)
    with fig.batch_update():
        for index, update in zip(view.trace_indices, data):
            fig.data[index].update(update, overwrite=True)
        if layout:
            fig.layout.update(layout)


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
    """Frames for every step of ``view.records``, plus a slider and play / pause buttons."""
    fig = view.base()
    apply_frame(fig, view, 0)
    frames = []
    for i, record in enumerate(view.records):
        data, layout = view.frame(i)
        data = [dict(d, type=fig.data[t].type) for t, d in zip(view.trace_indices, data)]
        frames.append(go.Frame(data=data, traces=view.trace_indices, name=str(record.step), layout=layout or None))
    fig.frames = frames
    play_args = dict(_FRAME_ARGS, frame={"duration": frame_ms, "redraw": True}, fromcurrent=True)
    fig.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": -0.12,
                "xanchor": "left",
                "yanchor": "top",
                "showactive": False,
                "buttons": [
                    {"label": "▶ play", "method": "animate", "args": [None, play_args]},
                    {"label": "❚❚ pause", "method": "animate", "args": [[None], _FRAME_ARGS]},
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.18,
                "len": 0.82,
                "y": -0.06,
                "yanchor": "top",
                "currentvalue": {"prefix": "step "},
                "steps": [{"label": f.name, "method": "animate", "args": [[f.name], _FRAME_ARGS]} for f in frames],
            }
        ],
    )
    fig.update_layout(margin=dict(b=110))
    return fig
