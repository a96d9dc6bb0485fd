"""The course as ``make lab`` opens it: its own command line, a copy of the repository, a real Chromium.

The server serves the repository root and prints notebook 00's URL; that URL opens notebook 00 with
the repository's folders served. Run All runs every cell (only the one meant to fail raises). A link
from the notebook to an exercise opens the exercise. The news prompt is off in the environment's own settings.
"""

from __future__ import annotations

import re
import shutil

import pytest

from .conftest import ARTIFACTS, is_benign
from .jupyterlab import error_outputs, plot_state, run_all_cells, wait_for_idle_kernel, wait_for_new_plot
from .lab_server import COURSE_SETTINGS, REPO, make_lab_command, start_lab, stop_lab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
COPIED = ["notebooks", "exercises", "solutions", "docs"]
NOTEBOOK_00 = "notebooks/00_start_here.ipynb"


@pytest.fixture(scope="module")
def make_lab(tmp_path_factory, chromium_path):
    """``make lab``'s server over a copy of the repository's course folders (outputs never reach the repository)."""
    command = make_lab_command()
    work = tmp_path_factory.mktemp("make_lab")
    root = work / "repo"
    for name in COPIED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    try:
        server = start_lab(root, work / "lab", lab_args=command[2:], settings=COURSE_SETTINGS)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield command, server
    stop_lab(server)


def test_make_lab_serves_the_repository_and_prints_notebook_00(make_lab) -> None:
    command, server = make_lab
    assert "--ServerApp.root_dir=." in command, f"make lab must serve the repository root: {command}"
    printed = re.findall(r"http://127\.0\.0\.1:\d+(/\S*)", server.log_tail(20_000))
    assert printed, f"the server printed no URL:\n{server.log_tail()}"
    assert all(p.startswith(f"/lab/tree/{NOTEBOOK_00}?token=") for p in printed), printed
    listing = {item["name"] for item in server.api("/api/contents")["content"]}
    assert {"notebooks", "exercises", "solutions"} <= listing, listing


def test_news_prompt_is_off_in_the_course_environment(make_lab) -> None:
    _, server = make_lab
    schema = server.api("/lab/api/settings/@jupyterlab/apputils-extension:notification")["schema"]
    default = schema["properties"]["fetchNews"].get("default")  # overrides.json replaces the schema's default
    assert default == "false", (
        f"fetchNews defaults to {default!r}: the install step writes "
        ".venv/share/jupyter/lab/settings/overrides.json from scripts/jupyterlab-overrides.json (run make install)"
    )


def test_notebook_00_opens_steps_after_run_all_and_links_to_an_exercise(make_lab, chromium) -> None:
    _, server = make_lab
    printed = re.findall(r"(http://127\.0\.0\.1:\d+/\S+)", server.log_tail(20_000))[-1]
    # The server prints the token as "..." when it was given one (as here); a learner's line holds the real one.
    printed = re.sub(r"token=[^&\s]*", f"token={server.token}", printed)
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.goto(printed, timeout=90_000)  # exactly what a learner copies from the terminal
        heading = page.locator(".jp-Notebook .jp-RenderedMarkdown h1").first
        heading.wait_for(timeout=90_000)
        assert "00 · Start here" in heading.inner_text()
        wait_for_idle_kernel(page, server, "notebooks/00_start_here.ipynb")
        page.screenshot(path=str(ARTIFACTS / "make-lab-00-opened.png"))

        run_all_cells(page)
        unexpected = [e for e in error_outputs(page) if "max_new_tokens" not in e]  # one cell is meant to fail
        assert unexpected == [], f"cells of notebook 00 raised: {unexpected}"
        button = page.get_by_role("button", name="run one step")
        assert button.count() == 1, "the step widget did not render"
        page.screenshot(path=str(ARTIFACTS / "make-lab-00-after-run-all.png"))
        # The first thing a learner tries after Run All: the button still steps (the check ran its own engine).
        widget = page.locator(".widget-vbox:has(button:has-text('run one step')):has(.js-plotly-plot)").last
        # its legend shows every request, none scrolled out of the legend's box (on screen first: plotly may draw a
        # figure's legend only once its widget is in view after Run All has scrolled to the bottom)
        widget.scroll_into_view_if_needed()
        legend = widget.locator(".legend").first
        legend.locator("rect.bg").first.wait_for(state="attached", timeout=60_000)
        box = legend.locator("rect.bg").first.bounding_box()
        entries = [e.bounding_box() for e in legend.locator("g.traces").all()]
        assert len(entries) == 3, f"the legend lists {len(entries)} requests, not 3"
        clipped = [
            e
            for e in entries
            if e is None or e["y"] < box["y"] - 1 or e["y"] + e["height"] > box["y"] + box["height"] + 1
        ]
        assert not clipped, f"legend entries outside the legend's box (clipped, scrolled): {clipped} vs {box}"
        widget.screenshot(path=str(ARTIFACTS / "make-lab-00-step-widget.png"))
        before = plot_state(widget)
        button.click()
        wait_for_new_plot(widget, before)

        # notebook 00 sends a new learner to the first exercise in course order: ex06, after notebook 02
        link = page.locator(".jp-RenderedMarkdown a[href*='exercises/ex06_static_vs_continuous.ipynb']").first
        link.scroll_into_view_if_needed()
        link.click()
        tab = page.locator(".lm-TabBar-tab:has-text('ex06_static_vs_continuous.ipynb')")
        tab.first.wait_for(timeout=30_000)
        # the exercise's own title, drawn: a new panel shows one empty cell until the file's contents arrive, and
        # notebook 00's panel stays in the page behind it (its link text names the exercise too)
        title = page.locator(".jp-NotebookPanel .jp-RenderedMarkdown h1").filter(has_text="Exercise 6")
        title.first.wait_for(timeout=60_000)
        assert title.first.is_visible() and "static vs continuous batching" in title.first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "make-lab-exercise-opened.png"))
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "make-lab-failure.png"), full_page=True)
        print(f"--- jupyter lab log (tail) ---\n{server.log_tail()}")
        raise
    real = [e for e in errors if not is_benign(e)]
    assert real == [], f"browser console errors: {real}"
    context.close()
