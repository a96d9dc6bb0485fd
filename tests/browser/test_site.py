"""``make site`` in a real browser, offline: figures draw and frame animations play without a kernel.

The mask notebook is built into a temporary folder, opened from ``file://`` with every
network request refused (a page that tries one fails the test), and its animated figure is
played; its trace data must change. The play / pause buttons must not cover the x tick labels,
and the index must number each notebook once.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import ARTIFACTS, is_benign, offline_page
from .lab_server import REPO

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

ANIMATED = "[...document.querySelectorAll('.js-plotly-plot')].filter(gd => (gd._transitionData?._frames || []).length)"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "scripts/build_site.py", "--only", "04", "--lang", "en", "--out", str(out)],
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
    context, page, refused, errors = offline_page(chromium, 1400, 1000)
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

    checks = page.evaluate(f"{ANIMATED}.map(gd => ({CONTROLS_OVER_AXIS})(gd))")
    page.evaluate(f"{ANIMATED}[0].scrollIntoView()")
    page.screenshot(path=str(ARTIFACTS / "site-04-controls.png"))
    for c in checks:
        assert c["controls"] >= 3 and c["labels"] >= 1, f"found no buttons, slider or tick labels to compare: {c}"
        assert c["overlaps"] == [], f"play / pause or the step slider cover axis labels: {c['overlaps']}"

    assert refused == [], f"the page tried the network: {refused}"
    real = [e for e in errors if not is_benign(e)]
    assert real == [], f"browser console errors: {real}"
    context.close()


# For one figure: which controls (play / pause buttons, the step slider) overlap an x tick label or axis title.
CONTROLS_OVER_AXIS = """gd => {
    const box = el => el.getBoundingClientRect();
    const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
    const labels = [...gd.querySelectorAll('.xtick text, .g-xtitle text, .g-x2title text')].filter(e => e.textContent);
    const controls = [...gd.querySelectorAll('.updatemenu-button, .slider-container .slider-rail-rect')];
    const overlaps = [];
    for (const c of controls) for (const l of labels)
        if (hit(box(c), box(l))) overlaps.push(`${c.textContent || c.getAttribute('class')} covers '${l.textContent}'`);
    return {controls: controls.length, labels: labels.length, overlaps};
}"""


def test_site_index_numbers_each_notebook_once(site, chromium) -> None:
    context = chromium.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.goto((site / "index.html").as_uri())
    items = page.locator("ul.course > li")  # the course list; glossary, reading and slides have lists of their own
    assert items.count() >= 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "site-index.png"))
    for i in range(items.count()):
        item = items.nth(i)
        text = item.inner_text().strip()
        assert re.match(r"^\d\d · ", text), f"an entry should read '04 · title', got {text!r}"
        style = item.evaluate("li => getComputedStyle(li).listStyleType")
        assert style == "none", f"the list adds its own number ({style}) before {text!r}"
    context.close()
