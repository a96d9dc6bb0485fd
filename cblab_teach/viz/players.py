"""StepPlayer: play / pause and a step slider around a FigureWidget, updated in place.

Moving the slider rewrites only the data of the view's traces inside one
``batch_update`` (one message to the browser), so scrubbing a long run stays
fast. ``show_step(i)`` does the same from Python, synchronously.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import ipywidgets as widgets
import plotly.graph_objects as go

from ._common import StepView, check_records, check_step
from .animate import apply_frame, replace_figure
from .blocks import BlockView
from .budget import BudgetView
from .errors import UnknownViewError
from .labels import text
from .lang import resolve
from .mask import MaskView

if TYPE_CHECKING:
    from ..core.engine import StepRecord

VIEWS = ("budget", "mask", "blocks")


def make_view(
    records: Sequence[StepRecord],
    view: str,
    num_blocks: int | None = None,
    block_size: int | None = None,
    lang: str | None = None,
) -> StepView:
    """The step view named ``view`` over ``records``, its words in ``lang`` (None: the current language)."""
    if view == "budget":
        return BudgetView(records, lang)
    if view == "mask":
        return MaskView(records, lang)
    if view == "blocks":
        return BlockView(records, num_blocks, block_size, lang=lang)
    raise UnknownViewError(f"unknown view {view!r}; choose one of {VIEWS}")


class StepPlayer:
    """A live view of one run, one step at a time: ``budget``, ``mask`` or ``blocks``."""

    def __init__(
        self,
        records: Sequence[StepRecord],
        view: str = "budget",
        num_blocks: int | None = None,
        block_size: int | None = None,
        interval_ms: int = 400,
        lang: str | None = None,
    ) -> None:
        if view not in VIEWS:
            raise UnknownViewError(f"unknown view {view!r}; choose one of {VIEWS}")
        self.lang = resolve(lang)
        self.view_name = view
        self.num_blocks, self.block_size = num_blocks, block_size
        self.view = make_view(check_records(records), view, num_blocks, block_size, self.lang)
        self.figure = go.FigureWidget(self.view.base())
        last = len(self.view.records) - 1
        self.slider = widgets.IntSlider(value=0, min=0, max=last, description=text(self.lang, "player_slider"),
                                         continuous_update=True)  # fmt: skip
        self.play = widgets.Play(value=0, min=0, max=last, interval=interval_ms,
                                 description=text(self.lang, "player_play"))  # fmt: skip
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.slider.observe(self._on_slider, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), self.figure])
        self.step = -1
        self.show_step(0)

    @property
    def records(self) -> list[StepRecord]:
        return self.view.records

    def _on_slider(self, change: dict) -> None:
        if change["new"] != self.step:
            self.show_step(change["new"])

    def show_step(self, step: int) -> None:
        """Redraw the figure in place with step ``step`` (and move the slider there)."""
        step = check_step(self.view.records, step)
        apply_frame(self.figure, self.view, step)
        self.step = step
        if self.slider.value != step:
            self.slider.value = step  # _on_slider sees self.step == step and does not redraw again

    def set_records(self, records: Sequence[StepRecord]) -> None:
        """Show a new run (same view) without replacing the widget."""
        self.view = make_view(check_records(records), self.view_name, self.num_blocks, self.block_size, self.lang)
        replace_figure(self.figure, self.view.base())
        last = len(self.view.records) - 1
        self.slider.max = self.play.max = last
        self.step = -1
        if self.slider.value > last:
            self.slider.value = last  # observer redraws
        else:
            self.show_step(self.slider.value)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
