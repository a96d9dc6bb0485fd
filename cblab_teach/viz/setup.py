"""Notebook rendering that works in JupyterLab and in exported HTML, with no CDN."""

from __future__ import annotations

import plotly.io as pio

RENDERER = "plotly_mimetype+notebook"


def setup_notebook(renderer: str = RENDERER) -> str:
    """Show figures in JupyterLab (mimetype) and embed plotly.js once (``notebook``) so exported HTML works offline."""
    pio.renderers.default = renderer
    return renderer
