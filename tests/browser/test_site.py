"""``make site`` in a real browser, offline: figures draw and frame animations play without a kernel.

The mask notebook is built into a temporary folder, opened from ``file://`` with every
network request refused, and its animated figure is played; its trace data must change.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ARTIFACTS, is_benign
from .lab_server import REPO

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

ANIMATED = "[...document.querySelectorAll('.js-plotly-plot')].filter(gd => (gd._transitionData?._frames || []).length)"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "scripts/build_site.py", "--only", "04", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_site_page_draws_and_plays_offline(site, chromium) -> None:
    page_file = next(site.glob("04_*.html"))
    assert "require.min.js" not in page_file.read_text() and (site / "plotly.js").exists()
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    refused: list[str] = []

    def offline(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.goto(page_file.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0", timeout=60_000)
    assert page.evaluate("typeof window.Plotly") == "object"
    assert page.evaluate(f"{ANIMATED}.length") >= 1, "the page has no frame-based animation"

    before = page.evaluate(f"JSON.stringify({ANIMATED}[0].data.map(t => t.z ?? t.y))")
    page.evaluate(f"Plotly.animate({ANIMATED}[0], null, {{frame: {{duration: 50, redraw: true}}, mode: 'immediate'}})")
    page.wait_for_function(
        f"JSON.stringify({ANIMATED}[0].data.map(t => t.z ?? t.y)) !== {before!r}",
        timeout=30_000,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "site-04-after-play.png"))

    # The only requests a page may make are for MathJax (typesetting, optional); they were refused.
    assert all("mathjax" in url for url in refused), refused
    real = [e for e in errors if not is_benign(e) and "net::ERR_FAILED" not in e]
    assert real == [], f"browser console errors: {real}"
    context.close()
