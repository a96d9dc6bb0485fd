"""The visual layer: pure functions from StepRecords to plotly figures, and widgets around them.

Every figure reads engine records and never re-schedules. Animated figures carry
their frames, slider and play / pause buttons, so they play in exported HTML;
``StepPlayer`` and ``Playground`` are the live (ipywidgets) forms. Every view and widget takes
``lang="en"`` or ``"zh"`` for its words; left out, the language comes from ``set_language`` or the
notebook's folder (:mod:`cblab_teach.viz.lang`).
"""

from .attention import attention_figure
from .blocks import block_map_figure
from .budget import budget_figure, budget_overview
from .colors import request_color, request_colors
from .errors import (
    NoRecordsError,
    NotPagedError,
    StepOutOfRangeError,
    UnknownLanguageError,
    UnknownViewError,
    VizError,
)
from .lang import current_language, set_language
from .mask import mask_figure
from .memory_bar import memory_bar_figure
from .metrics import metrics_figure
from .players import StepPlayer
from .playground import Playground
from .roofline_chart import roofline_figure
from .setup import setup_notebook
from .sim_timeline import sim_timeline_figure
from .timeline import compare_timelines, request_states, timeline_figure

__all__ = [
    "NoRecordsError",
    "NotPagedError",
    "Playground",
    "StepOutOfRangeError",
    "StepPlayer",
    "UnknownLanguageError",
    "UnknownViewError",
    "VizError",
    "attention_figure",
    "block_map_figure",
    "budget_figure",
    "budget_overview",
    "compare_timelines",
    "current_language",
    "mask_figure",
    "memory_bar_figure",
    "metrics_figure",
    "request_color",
    "request_colors",
    "request_states",
    "roofline_figure",
    "set_language",
    "setup_notebook",
    "sim_timeline_figure",
    "timeline_figure",
]
