"""Driving JupyterLab from Playwright the way a learner does: open a notebook, Run All, press play."""

from __future__ import annotations

import json
import re
import time
import urllib.error

from playwright.sync_api import Locator, Page

from .lab_server import LabServer

CELL_PROMPTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'))
    .map(e => e.textContent.trim())"""


# Plotly keeps a figure's traces on the element itself (``el.data``): read what each trace draws, with
# typed arrays as lists so JSON can compare them (plotly's own bookkeeping keys are left out).
DRAWN_KEYS = ["x", "y", "z", "base", "text", "customdata", "marker"]
PLOT_DATA = """(el, keys) => JSON.stringify(
    {data: el.data.map(t => Object.fromEntries(keys.filter(k => k in t).map(k => [k, t[k]]))),
     title: el.layout && el.layout.title},
    (key, value) => ArrayBuffer.isView(value) ? Array.from(value) : value)"""


def open_notebook(page: Page, server: LabServer, path: str, timeout_ms: int = 90_000) -> None:
    """Open ``path`` in JupyterLab and wait until its kernel is connected and idle."""
    page.goto(server.lab_url(path), timeout=timeout_ms)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_ms)
    wait_for_idle_kernel(page, server, path, timeout_ms)


def wait_for_idle_kernel(page: Page, server: LabServer, path: str = "the notebook", timeout_ms: int = 90_000) -> None:
    """Wait until the open notebook's kernel is connected and idle (accepting the kernel dialog if one shows)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if dialog.count():  # "Select Kernel": keep the notebook's own (the .venv's python3)
            dialog.first.click()
        try:
            sessions = server.api("/api/sessions") or []
        except (urllib.error.URLError, OSError):  # a busy server may answer 500 while a kernel starts
            sessions = []
        # this notebook's own kernel: another notebook's idle kernel says nothing about this one's start-up
        mine = [s for s in sessions if s.get("path", "").endswith(path) and s.get("kernel")]
        status = page.locator(".jp-Notebook-ExecutionIndicator").first.get_attribute("data-status")
        if mine and all(s["kernel"]["execution_state"] == "idle" for s in mine) and status == "idle":
            return
        time.sleep(0.5)
    raise TimeoutError(f"the kernel of {path} was not idle after {timeout_ms / 1000:.0f} s")


def run_all_cells(page: Page, timeout_s: float = 150.0) -> None:
    """Run > Run All Cells from the menu bar; wait until every code cell has an execution count.

    If the kernel goes idle with cells left unrun (a cell raised, so Run All stopped), fail at once
    with the prompts and the error outputs rather than waiting for the timeout. If no cell ran at all
    (the request came before the kernel took it), press Run All once more, as a learner would.
    """
    deadline = time.monotonic() + timeout_s
    for attempt in range(2):
        page.click("li.lm-MenuBar-item:has-text('Run')")
        page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
        idle_polls, started = 0, False
        while True:
            prompts = page.evaluate(CELL_PROMPTS)
            if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                page.wait_for_function("() => !document.body.innerText.includes('Loading widget')", timeout=30_000)
                return
            started = started or any(p != "[ ]:" for p in prompts)
            status = page.locator(".jp-Notebook-ExecutionIndicator").first.get_attribute("data-status")
            idle_polls = idle_polls + 1 if status == "idle" and "[*]:" not in prompts else 0
            if idle_polls >= 6 and not started and attempt == 0:
                break  # nothing ran: try once more
            if idle_polls >= 6 or time.monotonic() > deadline:
                raise AssertionError(f"Run All did not run every cell: prompts {prompts}; errors {error_outputs(page)}")
            time.sleep(0.5)


def error_outputs(page: Page) -> list[str]:
    """Texts of outputs that show a traceback (an exception in a cell)."""
    texts = page.locator(".jp-OutputArea-output").all_inner_texts()
    return [t[:2000] for t in texts if "Traceback" in t or re.search(r"^\w+Error\b", t, re.M)]


def step_players(page: Page) -> Locator:
    """Widget boxes that hold a play button, a slider and a plotly figure: StepPlayer and friends."""
    return page.locator(".widget-vbox:has(> .widget-hbox > .widget-play):has(.js-plotly-plot)")


def plot_state(player: Locator) -> dict:
    return json.loads(player.locator(".js-plotly-plot").first.evaluate(PLOT_DATA, DRAWN_KEYS))


def slider_value(player: Locator) -> float:
    return float(player.locator(".widget-slider .noUi-handle").first.get_attribute("aria-valuenow"))


def wait_for_new_plot(player: Locator, before: dict, timeout_s: float = 20.0) -> dict:
    """Poll the figure until its traces differ from ``before`` (the kernel redraws it over the widget comm)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = plot_state(player)
        if now["data"] != before["data"]:
            return now
        time.sleep(0.2)
    raise AssertionError(f"the plot did not change within {timeout_s:.0f} s")


def settled_plot(player: Locator, quiet_s: float = 0.6, timeout_s: float = 20.0) -> dict:
    """The figure once it and the slider have stopped changing (no redraw in flight)."""
    deadline = time.monotonic() + timeout_s
    last = (plot_state(player), slider_value(player))
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = (plot_state(player), slider_value(player))
        if now == last:
            return now[0]
        last = now
    raise AssertionError(f"the figure kept changing for {timeout_s:.0f} s")
