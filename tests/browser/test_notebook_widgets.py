"""What a learner and a presenter see of notebook 03 in a real browser, with the course's own JupyterLab settings.

* After Run All, the "your turn" sliders show the values the text starts from (budget 16, chunk 8), not the
  ones its check cell tried (5 and 3): the check moves them back.
* Reloaded after Run All (the kernel still alive), the page draws the players again from the kernel's widget
  models, with no error in the browser console (anywidget, which plotly's FigureWidget is built on, reports
  "Failed to initialize model" when a model's front end is not ready within 2 s).
* Presented with RISE in a half-width panel (a 700 px wide window: half a laptop screen), long code lines
  wrap instead of running off the slide: ``scripts/jupyterlab-overrides.json`` turns on line wrapping in code
  cells, and RISE reads the same settings as JupyterLab.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from .conftest import ARTIFACTS
from .jupyterlab import error_outputs, open_notebook, plot_state, run_all_cells, step_players, wait_for_idle_kernel
from .lab_server import LAB_SETTINGS, REPO, start_lab, stop_lab
from .test_notebooks_in_browser import check_widgets_and_play

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
NOTEBOOK = "notebooks/03_token_budget_scheduler.ipynb"
OVERRIDES = REPO / "scripts" / "jupyterlab-overrides.json"
READOUT = ".widget-slider:has(.widget-label:text-is('{name}')) .widget-readout"
# Every code editor on the current slide: [first line, scrollWidth, clientWidth, wraps, tallest line / line height].
EDITORS = """() => [...document.querySelectorAll('.reveal .jp-CodeCell .cm-scroller')]
    .filter(e => e.offsetParent && e.getBoundingClientRect().width > 0)
    .map(e => { const lines = [...e.querySelectorAll('.cm-line')], one = lines.length ? lines[0] : null;
        const h = Math.min(...lines.map(l => l.getBoundingClientRect().height).filter(x => x > 0));
        return [one ? one.textContent.slice(0, 40) : '', e.scrollWidth, e.clientWidth,
                e.querySelector('.cm-content').classList.contains('cm-lineWrapping'),
                Math.max(...lines.map(l => l.getBoundingClientRect().height)) / h]; })"""


def course_settings() -> dict[str, dict]:
    """The throw-away server's settings plus the course's own overrides (plugin "a:b" is settings file "a/b")."""
    settings = {k: dict(v) for k, v in LAB_SETTINGS.items()}
    for plugin, values in json.loads(OVERRIDES.read_text(encoding="utf-8")).items():
        settings.setdefault(plugin.replace(":", "/"), {}).update(values)
    return settings


@pytest.fixture(scope="module")
def course_lab(tmp_path_factory, chromium_path):
    work = tmp_path_factory.mktemp("widgets")
    (work / "root" / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / NOTEBOOK, work / "root" / NOTEBOOK)
    try:
        server = start_lab(work / "root", work / "lab", settings=course_settings())
    except RuntimeError as e:
        pytest.fail(str(e))
    yield server
    stop_lab(server)


def test_after_run_all_the_sliders_start_where_the_text_does_and_a_reload_redraws_the_players(course_lab, chromium):
    """One Run All for three checks (each would cost a notebook's run in a browser)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    open_notebook(page, course_lab, NOTEBOOK)
    run_all_cells(page)
    assert error_outputs(page) == []
    names = ("max_tokens_per_step", "prefill_chunk_size")
    values = {name: page.locator(READOUT.format(name=name)) for name in names}
    assert all(v.count() == 1 for v in values.values()), "the two sliders of 'your turn' did not render"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "03-sliders-after-run-all.png"))
    shown = {name: v.inner_text().strip() for name, v in values.items()}
    assert shown == {"max_tokens_per_step": "16", "prefill_chunk_size": "8"}, shown
    check_widgets_and_play(page, "03_token_budget_scheduler")  # the players play and follow their sliders

    before = step_players(page).count()
    page.keyboard.press("Control+s")  # what autosave does in make lab (this test server has autosave off)
    saved = lambda: course_lab.api(f"/api/contents/{NOTEBOOK}")["content"]["cells"]  # noqa: E731
    deadline = time.monotonic() + 30
    while not any(c.get("outputs") for c in saved()) and time.monotonic() < deadline:
        time.sleep(0.5)
    errors.clear()
    page.reload()
    wait_for_idle_kernel(page, course_lab, NOTEBOOK)
    page.wait_for_function("() => !document.body.innerText.includes('Loading widget')", timeout=60_000)
    players = step_players(page)
    players.first.wait_for(timeout=60_000)
    time.sleep(3)  # anywidget gives up on a model after 2 s: wait past that before reading the console
    drawn = [len(plot_state(players.nth(i))["data"]) for i in range(players.count())]
    page.screenshot(path=str(ARTIFACTS / "03-after-reload.png"))
    context.close()
    assert before >= 1 and len(drawn) == before, f"{before} players before the reload, {len(drawn)} after"
    assert all(drawn), f"a player came back without traces: {drawn}"
    assert errors == [], f"browser console errors after the reload: {errors}"


def test_rise_wraps_long_code_lines_in_a_half_width_panel(course_lab, chromium) -> None:
    assert course_settings()["@jupyterlab/notebook-extension/tracker"]["codeCellConfig"]["lineWrap"] is True
    context = chromium.new_context(viewport={"width": 700, "height": 800})
    page = context.new_page()
    page.goto(f"{course_lab.url}/rise/{NOTEBOOK}?token={course_lab.token}", timeout=90_000)
    page.wait_for_selector(".reveal .slides .jp-Cell", timeout=90_000)
    wait_for_idle_kernel(page, course_lab, NOTEBOOK)
    seen: dict[str, list] = {}
    for _ in range(14):  # through the deck's first slides and their subslides
        for editor in page.evaluate(EDITORS):
            seen[editor[0]] = editor
        page.keyboard.press("Space")
        time.sleep(0.5)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "03-rise-half-width.png"))
    context.close()
    assert len(seen) >= 3, f"the deck showed too few code cells to judge: {list(seen)}"
    cut = [e for e in seen.values() if e[1] > e[2] + 1]
    assert cut == [], f"code lines run off the slide (scrollWidth > clientWidth): {cut}"
    assert all(e[3] for e in seen.values()), "a code editor does not wrap its lines"
    assert any(e[4] > 1.5 for e in seen.values()), "no long line was wrapped: nothing here tested the wrapping"
