"""Fixtures of the browser suite: Debian's Chromium (never a downloaded one) against a throw-away JupyterLab.

Locally the suite skips when /usr/bin/chromium is missing; with CI=true it fails instead,
so CI cannot pass without having run it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab_server import REPO, LabServer, start_lab, stop_lab

CHROMIUM = Path(os.environ.get("CBLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"
NOTEBOOKS = ["04_ragged_batching_mask.ipynb"]  # 03 runs in test_notebook_widgets.py, with its own checks

# Console errors we know to be harmless, each with the reason. Anything else fails the test.
BENIGN_CONSOLE_ERRORS: list[tuple[str, str]] = [
    # Nothing listed yet: the course notebooks run with a clean console.
]


def pytest_collection_modifyitems(items) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def is_benign(text: str) -> bool:
    return any(re.search(pattern, text) for pattern, _ in BENIGN_CONSOLE_ERRORS)


def offline_page(chromium, width: int, height: int, allowed: str = "file://"):
    """A page that may load URLs starting with ``allowed`` only (file:// by default, or one local server):
    returns (context, page, refused urls, console errors)."""
    context = chromium.new_context(viewport={"width": width, "height": height})
    refused: list[str] = []

    def offline(route) -> None:
        if route.request.url.startswith(allowed):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    return context, page, refused, errors


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (the browser tests never download one)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    import playwright.sync_api  # noqa: F401  (a test dependency: fail loudly if it is missing)

    return CHROMIUM


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory, chromium_path) -> Iterator[LabServer]:
    """JupyterLab serving copies of the course notebooks (so outputs never land in the repository)."""
    work = tmp_path_factory.mktemp("jupyterlab")
    root = work / "root"
    (root / "notebooks").mkdir(parents=True)
    for name in NOTEBOOKS:
        if (REPO / "notebooks" / name).exists():
            shutil.copy(REPO / "notebooks" / name, root / "notebooks" / name)
    try:
        server = start_lab(root, work / "lab")
    except RuntimeError as e:
        pytest.fail(str(e))
    yield server
    stop_lab(server)


@pytest.fixture(scope="session")
def chromium(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def lab_page(chromium, lab_server, request):
    """A fresh page that records console errors; on failure it saves a screenshot and prints the server log."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.console_errors.append(f"uncaught: {exc}"))
    yield page
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
        print(f"--- jupyter lab log (tail) ---\n{lab_server.log_tail()}")
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
