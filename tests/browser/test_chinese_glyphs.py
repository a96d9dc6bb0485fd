"""Chinese figures in Chromium: the labels are Chinese, drawn as Chinese glyphs (not boxes), and off the data.

A browser with no font for a character draws the font's ``.notdef`` glyph, the same empty box for every
such character. So a label is drawn, not boxed, when each of its Han characters, painted on a canvas in the
font the label's SVG text uses (its computed ``font-family`` and size, inside the same page), leaves ink that
differs from the box and from every other Han character of the label. The box is painted the same way from a
code point no font covers (U+100000, private use). The test first shows that the check calls such
characters boxes in this very browser, so it cannot pass by measuring nothing.

The font comes from the system (Debian's ``fonts-noto-cjk``, installed by ``.ci/run`` in CI), never from the
network: the page refuses every request that is not ``file://``. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import re

import pytest
from plotly.offline import get_plotlyjs

from cblab_teach.viz import budget_figure, compare_timelines, metrics_figure, timeline_figure

from ..viz_layout_cases import _runs
from .conftest import ARTIFACTS, is_benign, offline_page
from .figure_boxes import frame_problems

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
HAN_JS = "[\\u3400-\\u4dbf\\u4e00-\\u9fff]"  # the same class, for a JavaScript RegExp
NO_FONT_HAS = "\U00100000"  # supplementary private use: drawn as .notdef (a box) whatever fonts are installed
LABELS = ".gtitle, .g-xtitle text, .g-ytitle text, .annotation-text, .legendtext, .updatemenu-button text, .slider-container text"

# For every label with Han characters: its text, and for each distinct Han character whether it drew ink,
# whether its ink equals the box's, and a fingerprint of its ink (to tell the characters apart).
GLYPHS = """([selector, box, pattern]) => {
    const canvas = document.createElement('canvas'); canvas.width = 96; canvas.height = 96;
    const ctx = canvas.getContext('2d', {willReadFrequently: true});
    const paint = (ch, font) => {
        ctx.clearRect(0, 0, 96, 96); ctx.font = font; ctx.fillStyle = '#000'; ctx.textBaseline = 'top';
        ctx.fillText(ch, 8, 8);
        const d = ctx.getImageData(0, 0, 96, 96).data; let ink = 0, print = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i]) { ink++; print = (print * 31 + i * d[i]) >>> 0; }
        return {ink, print};
    };
    const wanted = () => new RegExp(pattern, 'gu');
    return [...document.querySelectorAll(selector)].filter(el => wanted().test(el.textContent)).map(el => {
        const style = getComputedStyle(el);
        const font = `${style.fontSize} ${style.fontFamily}`;
        const notdef = paint(box, font);
        const chars = [...new Set(el.textContent.match(wanted()))];
        return {text: el.textContent, font, chars: chars.map(ch => {
            const g = paint(ch, font);
            return {ch, ink: g.ink, boxed: g.ink === notdef.ink && g.print === notdef.print, print: g.print};
        })};
    });
}"""


def boxed_labels(measured: list[dict]) -> list[str]:
    """The labels whose Han characters were drawn as boxes (or not at all), with the characters at fault."""
    bad = []
    for label in measured:
        prints = [c["print"] for c in label["chars"]]
        wrong = [c["ch"] for c in label["chars"] if c["boxed"] or not c["ink"]]
        if wrong or len(set(prints)) < len(prints):
            bad.append(f"{label['text']!r} in {label['font']}: {wrong or 'characters drawn alike'}")
    return bad


FIGURES = ("budget", "timeline", "comparison", "metrics")


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    """One page (``lang="zh-CN"``, as the site's) with four Chinese figures, beside one copy of plotly.js: titles,
    axis and subplot titles, legends, play / pause buttons and a step slider. One page, one load of plotly.js."""
    from ..test_viz import StandInCollector

    folder = tmp_path_factory.mktemp("zh-figures")
    (folder / "plotly.js").write_text(get_plotlyjs(), encoding="utf-8")
    runs = _runs()
    figures = {
        "budget": budget_figure(runs["continuous"], lang="zh"),
        "timeline": timeline_figure(runs["cramped"], lang="zh"),
        "comparison": compare_timelines(runs["continuous"], runs["static"], lang="zh"),
        "metrics": metrics_figure(StandInCollector(), lang="zh"),
    }
    divs = "".join(
        fig.to_html(include_plotlyjs=False, full_html=False, div_id=name, default_width="100%", auto_play=False)
        for name, fig in figures.items()
    )
    page = '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><script src="plotly.js"></script></head>'
    page += f'<body style="margin: 1rem 2rem">{divs}<p id="probe">{NO_FONT_HAS * 3}</p></body></html>'
    (folder / "figures.html").write_text(page, encoding="utf-8")
    return folder / "figures.html"


def test_chinese_labels_are_drawn_as_chinese_glyphs_not_boxes(page_file, chromium) -> None:
    context, page, refused, errors = offline_page(chromium, 1280, 800)
    page.goto(page_file.as_uri())
    ready = " && ".join(f"document.getElementById('{name}')?._fullLayout" for name in FIGURES)
    page.wait_for_function(ready, timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "figures-zh.png"), full_page=True)

    # first, the same measurement on characters that are certainly boxes: it must call them boxes
    probe = page.evaluate(GLYPHS, ["#probe", NO_FONT_HAS, "[\\u{100000}-\\u{10FFFD}]"])
    assert len(probe) == 1 and [c["boxed"] for c in probe[0]["chars"]] == [True]
    assert boxed_labels(probe), "a label drawn as boxes must be reported"

    for name in FIGURES:
        texts = page.evaluate(
            f"[...document.getElementById('{name}').querySelectorAll({LABELS!r})].map(e => e.textContent)"
        )
        assert len([t for t in texts if HAN.search(t)]) >= 3, f"{name}: expected Chinese titles, axes, legend: {texts}"
    measured = page.evaluate(GLYPHS, [LABELS, NO_FONT_HAS, HAN_JS])
    assert len(measured) >= 4 * 3
    bad = boxed_labels(measured)
    assert bad == [], "Chinese drawn as boxes (no CJK font? apt-get install fonts-noto-cjk):\n" + "\n".join(bad)

    # the Chinese words change every label's width: legends, controls and titles must still stay off the data
    # and inside the figure, in every frame (as tests/browser/test_figure_layout.py checks the English ones)
    for name in FIGURES:
        gd = page.evaluate_handle(f"document.getElementById('{name}')")
        frames = page.evaluate("gd => (gd._transitionData?._frames || []).map(f => f.name)", gd)
        problems, _ = frame_problems(page, gd, frames)
        assert problems == [], f"{name}: " + "\n".join(problems)
    assert refused == [], f"the page tried the network: {refused}"
    assert [e for e in errors if not is_benign(e)] == []
    context.close()
