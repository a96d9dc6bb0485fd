"""Notebook rendering that works in JupyterLab and in exported HTML, with no CDN, in the notebook's language."""

from __future__ import annotations

import plotly.io as pio

from .lang import detect_language, set_language

RENDERER = "plotly_mimetype+notebook"

# ipywidgets gives every inline label (a slider's description) a fixed 80 px and cuts the rest with an
# ellipsis: ``max_tokens_per_step`` reads ``max_toke…``. Let labels grow to their text instead (at least
# the usual 80 px, so short labels still line up). A label given an explicit ``description_width`` keeps it.
WIDGET_CSS = """<style>
.jupyter-widget-inline-hbox > .jupyter-widget-label, .widget-inline-hbox > .widget-label {
  width: auto; min-width: var(--jp-widgets-inline-label-width, 80px); max-width: none;
}
</style>"""


def setup_notebook(renderer: str = RENDERER, widget_css: bool = True, lang: str | None = None) -> str:
    """Show figures in JupyterLab (mimetype) and embed plotly.js once (``notebook``) so exported HTML works offline.

    ``widget_css``: also let widget labels show their whole text (a small ``<style>`` output).
    ``lang``: the language of every later figure and widget; None detects it now (``CBLAB_TEACH_LANG``, else a
    kernel started in a folder named ``zh`` draws in Chinese: see :mod:`cblab_teach.viz.lang`), so the
    Chinese notebooks, whose code is the English notebooks' code, draw in Chinese.
    """
    set_language(detect_language() if lang is None else lang)
    pio.renderers.default = renderer
    if widget_css:
        from IPython import get_ipython
        from IPython.display import HTML, display

        if get_ipython() is not None:  # in a kernel; a plain script has no page to style
            display(HTML(WIDGET_CSS))
    return renderer
