"""``make slides`` in a real browser, offline: a deck opens, its slides advance, and its animated figure plays.

A small notebook in the course's shape (title, set-up, the idea, a live demo with the
engine's animated mask figure, a fragment, speaker notes, recap) is built into a
temporary folder by scripts/build_slides.py, with its slide types filled in by
scripts/slide_metadata.py's rules. Chromium opens it from ``file://`` with every other
request refused: the test fails on any request at all, and on any console error.

The temporary folder already holds a site index (``make site`` ran first), which the build
must update to link the deck; a site index built after the decks links them too.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import nbformat
import pytest

from .conftest import ARTIFACTS, is_benign, offline_page
from .figure_boxes import frame_problems
from .lab_server import REPO

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

FIGURE = "document.querySelector('.reveal .js-plotly-plot')"
# A code line far wider than a slide: on a projector it must wrap, not run off the slide's edge.
LONG_LINE = "chunks = " + " + ".join(f"len(engine.records[{i} % len(engine.records)].plan.chunks)" for i in range(6))
LESSON = [
    ("markdown", "# 99 · A small deck\n\n**After this notebook you will be able to** read one step's mask."),
    ("code", "import torch\n\nfrom cblab_teach.viz import setup_notebook\n\nsetup_notebook()\ntorch.manual_seed(0)"),
    ("markdown", "## The idea\n\nQuery `i` reads key `j` iff same request and `pos(j) <= pos(i)`."),
    ("markdown", "## Live: the mask, step by step"),
    (
        "code",
        "from cblab_teach import Engine, EngineConfig\n"
        "from cblab_teach.demo_model import load_char_model\n"
        "from cblab_teach.viz import mask_figure\n\n"
        "model, tok = load_char_model()\n"
        "engine = Engine(model, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4))\n"
        'engine.generate([tok.encode(p) for p in ["Flat is ", "Now "]], max_new_tokens=3)\n'
        "mask_figure(engine.records)",
    ),
    ("markdown", "(Ask the room first: how many keys does the decode row read?)"),
    ("markdown", "The same run's token budget, step by step."),
    (
        "code",
        f"from cblab_teach.viz import budget_figure\n\n{LONG_LINE}\nbudget_figure(engine.records)",
    ),
    ("markdown", "**Check yourself.** Every request finished."),
    ("code", "\n".join(["finished = set()"] + [f"# step {i}" for i in range(16)] + ["print(len(engine.requests))"])),
    ("markdown", "## Recap\n\n* one mask per step"),
]


def build_site_module():
    """scripts/build_site.py, loaded by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_site", REPO / "scripts" / "build_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site_index(folder) -> str:
    """What ``make site`` writes as index.html (no notebook pages: only the slides entry matters here)."""
    site = build_site_module()
    (folder / "index.html").write_text(site.index_page([]), encoding="utf-8")
    site.publish_teaching(folder)
    return (folder / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def deck(tmp_path_factory):
    work = tmp_path_factory.mktemp("slides")
    before = site_index(work)  # make site, then make slides
    assert 'id="slides"' in before and "make slides" in before and "99_small_deck" not in before
    cells = [
        nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
        for kind, src in LESSON
    ]
    notebook = work / "99_small_deck.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
    out = work / "slides"
    build = subprocess.run(
        [sys.executable, "scripts/build_slides.py", "--notebook", str(notebook), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_deck_ships_its_own_reveal_and_plotly(deck) -> None:
    page = (deck / "99_small_deck.html").read_text(encoding="utf-8")
    assert (deck / "reveal.js" / "dist" / "reveal.js").exists() and (deck / "plotly.js").exists()
    assert 'src="reveal.js/dist/reveal.js"' in page and 'src="plotly.js"' in page
    assert "https://" not in "".join(line for line in page.splitlines() if "<script" in line or "<link" in line)
    assert '<aside class="notes">' in page, "the aside went to the speaker notes"
    assert 'class="fragment"' in page, "the long check code is a fragment"
    assert "99_small_deck.html" in (deck / "index.html").read_text(encoding="utf-8")


def test_deck_advances_and_its_figure_plays_offline(deck, chromium) -> None:
    context, page, requested, errors = offline_page(chromium, 1280, 900)
    page.goto((deck / "99_small_deck.html").as_uri())
    page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=60_000)
    assert page.evaluate("Reveal.getTotalSlides()") >= 5  # title, idea, live demo with its figure, check, recap
    assert page.evaluate("Reveal.getIndices().h") == 0

    page.keyboard.press("ArrowRight")  # the idea
    page.wait_for_function("Reveal.getIndices().h === 1")
    assert "the idea" in page.evaluate("Reveal.getCurrentSlide().innerText").lower()

    for _ in range(8):  # on to the slide with the figure
        if page.evaluate(f"Reveal.getCurrentSlide().contains({FIGURE})"):
            break
        page.keyboard.press("Space")
        page.wait_for_timeout(150)
    assert page.evaluate(f"Reveal.getCurrentSlide().contains({FIGURE})"), "never reached the figure's slide"
    page.wait_for_function(f"{FIGURE}._fullLayout && {FIGURE}.querySelector('.main-svg')", timeout=30_000)
    assert page.evaluate("typeof window.Plotly") == "object"
    assert page.evaluate(f"{FIGURE}.getBoundingClientRect().width") > 300, "the figure drew at a usable size"
    assert page.evaluate(f"({FIGURE}._transitionData?._frames || []).length") >= 2, "the figure has no frames"

    before = page.evaluate(f"JSON.stringify({FIGURE}.data.map(t => t.z))")
    page.evaluate(f"Plotly.animate({FIGURE}, null, {{frame: {{duration: 50, redraw: true}}, mode: 'immediate'}})")
    page.wait_for_function(f"JSON.stringify({FIGURE}.data.map(t => t.z)) !== {before!r}", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "slides-figure-after-play.png"))

    page.keyboard.press("End")  # the last slide: the recap
    page.wait_for_function("Reveal.isLastSlide()")
    assert "recap" in page.evaluate("Reveal.getCurrentSlide().innerText").lower()

    assert requested == [], f"the deck asked the network for {requested}"
    real = [e for e in errors if not is_benign(e)]
    assert real == [], f"browser console errors: {real}"
    context.close()


def test_site_index_links_the_decks_whichever_was_built_first(deck, chromium) -> None:
    site = deck.parent
    site_first = (site / "index.html").read_text(encoding="utf-8")  # the deck's build updated make site's index
    slides_first = site_index(site)  # make slides, then make site
    for page in (site_first, slides_first):
        assert 'href="slides/index.html"' in page and 'href="slides/99_small_deck.html"' in page, page
        assert page.count('id="slides"') == 1

    context, page, requested, errors = offline_page(chromium, 1280, 900)
    page.goto((site / "index.html").as_uri())
    page.click("#slides a[href='slides/index.html']")
    page.wait_for_url("**/slides/index.html")
    page.click("a[href='99_small_deck.html']")
    page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=60_000)
    assert page.evaluate("Reveal.getTotalSlides()") >= 5
    assert requested == [], f"the index or the deck asked the network for {requested}"
    real = [e for e in errors if not is_benign(e)]
    assert real == [], f"browser console errors: {real}"
    context.close()


@pytest.mark.parametrize("viewport", [(1280, 800), (1024, 768)], ids=["1280x800", "1024x768"])
def test_deck_figures_keep_legend_and_controls_off_the_data(deck, chromium, viewport) -> None:
    """On a projector's 1024x768 too: each animated figure, on its own slide, in every frame (the budget figure's
    legend once sat on its bar from frame 1 on)."""
    context, page, requested, errors = offline_page(chromium, *viewport)
    page.goto((deck / "99_small_deck.html").as_uri())
    page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=60_000)
    page.evaluate("Reveal.configure({transition: 'none'})")  # measure figures that stand still
    count = page.evaluate("document.querySelectorAll('.reveal .js-plotly-plot').length")
    assert count >= 2, "the deck has the mask and the budget figure"
    problems = []
    for i in range(count):
        gd = page.evaluate_handle(f"document.querySelectorAll('.reveal .js-plotly-plot')[{i}]")
        page.evaluate(
            "gd => { const s = gd.closest('section'); const at = Reveal.getIndices(s); Reveal.slide(at.h, at.v); }", gd
        )
        page.wait_for_function("gd => gd.getBoundingClientRect().width > 300 && gd._fullLayout", arg=gd, timeout=30_000)
        page.wait_for_timeout(300)  # the slide transition and the resize on "slidechanged"
        frames = page.evaluate("gd => (gd._transitionData?._frames || []).map(f => f.name)", gd)
        found, _ = frame_problems(page, gd, frames)
        problems += [f"figure {i}: {p}" for p in found]
        page.screenshot(path=str(ARTIFACTS / f"slides-figure-{i}-{viewport[0]}x{viewport[1]}.png"))
    assert problems == [], "\n".join(problems)
    assert requested == [] and [e for e in errors if not is_benign(e)] == []
    context.close()


def test_long_code_lines_wrap_on_the_slide(deck, chromium) -> None:
    """A long code line wraps inside its slide (the deck's CSS) at a projector's 1024x768, never cut off."""
    context, page, requested, errors = offline_page(chromium, 1024, 768)
    page.goto((deck / "99_small_deck.html").as_uri())
    page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=60_000)
    page.evaluate("Reveal.configure({transition: 'none'})")
    pre = page.evaluate_handle(
        "text => [...document.querySelectorAll('.reveal pre')].find(p => p.textContent.includes(text))", LONG_LINE[:40]
    )
    assert page.evaluate("p => p !== undefined", pre), "the long line is not on any slide"
    page.evaluate("p => { const at = Reveal.getIndices(p.closest('section')); Reveal.slide(at.h, at.v); }", pre)
    page.wait_for_function("p => p.getBoundingClientRect().width > 0", arg=pre, timeout=30_000)
    box = page.evaluate(
        """p => { const r = p.getBoundingClientRect(), s = p.closest('section').getBoundingClientRect(),
                  line = parseFloat(getComputedStyle(p).lineHeight) || 20;
                  return {scroll: p.scrollWidth, client: p.clientWidth, right: r.right, slide: s.right,
                          lines: r.height / line}; }""",
        pre,
    )
    page.screenshot(path=str(ARTIFACTS / "slides-long-line-1024x768.png"))
    assert box["scroll"] <= box["client"] + 1, f"the long line is cut (scrolls): {box}"
    assert box["lines"] >= 2, f"the long line did not wrap: {box}"
    assert box["right"] <= box["slide"] + 8, f"the code runs past the slide's edge: {box}"
    assert requested == [] and [e for e in errors if not is_benign(e)] == []
    context.close()
