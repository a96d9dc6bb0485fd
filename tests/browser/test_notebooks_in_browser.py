"""The course in a real browser: JupyterLab + Chromium, Run All, then play the step players.

For each notebook (04 here; 03 in test_notebook_widgets.py, which runs it once for several checks): every cell runs without an exception, every widget renders (no
"Loading widget..." left), pressing play and dragging the step slider redraw the plotly
figure (its trace data in the DOM changes), and the browser console stays free of errors.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, NOTEBOOKS, is_benign
from .jupyterlab import (
    error_outputs,
    open_notebook,
    plot_state,
    run_all_cells,
    settled_plot,
    slider_value,
    step_players,
    wait_for_new_plot,
)
from .lab_server import REPO

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

# Every widget label with text (a slider's description): [text, scrollWidth, clientWidth].
WIDGET_LABELS = """() => [...document.querySelectorAll('.jp-OutputArea .widget-label, .jp-OutputArea .jupyter-widget-label')]
    .filter(l => l.textContent.trim() && l.clientWidth > 0).map(l => [l.textContent, l.scrollWidth, l.clientWidth])"""


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_and_its_player_redraws(notebook: str, lab_page, lab_server) -> None:
    if not (REPO / "notebooks" / notebook).exists():
        pytest.skip(f"notebooks/{notebook} does not exist yet")
    page = lab_page
    open_notebook(page, lab_server, f"notebooks/{notebook}")
    run_all_cells(page)
    check_widgets_and_play(page, notebook.removesuffix(".ipynb"))
    errors = [e for e in page.console_errors if not is_benign(e)]
    assert errors == [], f"browser console errors: {errors}"


def check_widgets_and_play(page, stem: str) -> None:
    """After Run All: no cell raised, every widget drew with its labels whole, and the first step player redraws
    its figure when played, paused and dragged to either end. (test_notebook_widgets.py runs notebook 03 with it.)"""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{stem}-after-run-all.png"))
    assert error_outputs(page) == [], f"cells of {stem} raised"
    assert page.locator(".jp-OutputArea .jupyter-widgets").count() > 0, "no widget rendered"
    assert page.locator(".js-plotly-plot").count() > 0, "no plotly figure rendered"
    assert page.get_by_text("Loading widget", exact=False).count() == 0
    labels = page.evaluate(WIDGET_LABELS)
    cut = [text for text, scroll_width, client_width in labels if scroll_width > client_width]
    assert cut == [], f"widget labels cut short (their text is wider than the label): {cut}"

    players = step_players(page)
    assert players.count() > 0, f"{stem} shows no step player (play button + slider + figure)"
    player = players.first
    player.scroll_into_view_if_needed()
    start, start_step = plot_state(player), slider_value(player)

    # Play: the kernel redraws the figure step after step; the same button pauses.
    play_pause = player.locator(".widget-play button").first
    play_pause.click()
    wait_for_new_plot(player, start)
    play_pause.click()
    paused = settled_plot(player)
    assert paused["data"] != start["data"] and slider_value(player) != start_step
    page.screenshot(path=str(ARTIFACTS / f"{stem}-after-play.png"))

    # Slider: the keyboard moves the handle to the first step, then to the last; the figure follows.
    handle = player.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("Home")
    first = wait_for_new_plot(player, paused)
    if start_step == 0:
        assert first["data"] == start["data"], "step 0 should draw as it did before playing"
    first = settled_plot(player)
    handle.press("End")
    assert slider_value(player) == float(handle.get_attribute("aria-valuemax"))
    at_end = wait_for_new_plot(player, first)
    assert at_end["data"] != start["data"], "moving the slider did not redraw the figure"
    page.screenshot(path=str(ARTIFACTS / f"{stem}-after-slider.png"))
