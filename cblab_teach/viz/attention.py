"""Which keys each query of one step read: the attention probabilities an AttentionRecorder kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from .errors import StepOutOfRangeError, VizError
from .labels import text
from .lang import resolve
from .mask import axis_labels

if TYPE_CHECKING:
    from ..plugins.attention_recorder import AttentionRecorder


def attention_figure(
    recorder: AttentionRecorder, step: int = 0, layer: int = 0, head: int = 0, lang: str | None = None
) -> go.Figure:
    """Heatmap ``[queries, keys]`` of one head; masked keys (exactly zero probability) stay blank."""
    lang = resolve(lang)
    if not recorder.maps:
        raise VizError("the AttentionRecorder holds no maps: add it to the engine before running")
    if (step, layer) not in recorder.maps:
        have = sorted(recorder.maps)
        raise StepOutOfRangeError(
            f"no attention map for step={step!r}, layer={layer!r}; recorded (step, layer): {have[:8]}..."
        )
    probs = recorder.maps[(step, layer)]
    if not isinstance(head, int) or not 0 <= head < probs.shape[0]:
        raise VizError(f"head={head!r} is out of range: the model has {probs.shape[0]} heads")
    layout = recorder.layouts[step]
    queries, keys = axis_labels(layout, recorder.request_ids[step])
    mask = layout.mask.numpy()
    z = np.where(mask, probs[head].numpy(), np.nan)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=keys,
            y=queries,
            colorscale="Viridis",
            zmin=0.0,
            zmax=1.0,
            hoverongaps=False,
            colorbar={"title": "p"},
            hovertemplate="query %{y}<br>key %{x}<br>p = %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=text(lang, "attention_title", step=step, layer=layer, head=head),
        xaxis={"type": "category", "showticklabels": len(keys) <= 48, "title": text(lang, "keys_axis")},
        yaxis={
            "type": "category",
            "autorange": "reversed",
            "showticklabels": len(queries) <= 48,
            "title": text(lang, "queries_axis"),
        },
        height=520,
        plot_bgcolor="white",
    )
    return fig
