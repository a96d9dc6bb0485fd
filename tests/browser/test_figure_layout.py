"""The animated figures in Chromium: legend and controls never over the data, no jump between frames.

Each figure of ``tests/viz_layout_cases.py`` is written to a page that loads the plotly
package's own plotly.js from ``file://`` (the way the site and the decks draw it), opened at
1280x800 and at a projector's 1024x768, and shown frame by frame. In every frame the test
measures the drawn boxes: the legend, the play / pause buttons and the step slider must not
meet a plot area, a tick label or an axis title; no text may run past the figure's edges;
and the plot area and the legend must keep the box they had in the first frame.
"""

from __future__ import annotations

import pytest
from plotly.offline import get_plotlyjs

from ..viz_layout_cases import VIEWPORTS, figures
from .conftest import ARTIFACTS, is_benign, offline_page
from .figure_boxes import frame_problems

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

FIGURES = figures()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """name -> the figure's page, beside one copy of plotly.js."""
    folder = tmp_path_factory.mktemp("figures")
    (folder / "plotly.js").write_text(get_plotlyjs(), encoding="utf-8")
    out = {}
    for name, make in FIGURES.items():
        fig = make()
        div = fig.to_html(
            include_plotlyjs=False, full_html=False, div_id="figure", default_width="100%", auto_play=False
        )
        page = '<!doctype html><html><head><meta charset="utf-8"><script src="plotly.js"></script></head>'
        page += f'<body style="margin: 1rem 2rem">{div}</body></html>'
        (folder / f"{name}.html").write_text(page, encoding="utf-8")
        out[name] = (folder / f"{name}.html", [f.name for f in fig.frames])
    return out


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=lambda v: f"{v[0]}x{v[1]}")
@pytest.mark.parametrize("name", list(FIGURES))
def test_legend_and_controls_stay_off_the_data_in_every_frame(pages, chromium, name, viewport) -> None:
    path, frames = pages[name]
    context, page, refused, errors = offline_page(chromium, *viewport)
    page.goto(path.as_uri())
    page.wait_for_function("document.getElementById('figure')?._fullLayout", timeout=60_000)
    gd = page.evaluate_handle("document.getElementById('figure')")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"figure-{name}-{viewport[0]}x{viewport[1]}.png"))
    problems, first = frame_problems(page, gd, frames)
    assert first["plots"] and first["labels"], f"found no plot area or labels to measure: {first}"
    assert not frames or first["controls"] >= 3, f"found no play / pause buttons or slider: {first}"
    if problems:
        page.screenshot(path=str(ARTIFACTS / f"figure-{name}-{viewport[0]}x{viewport[1]}-failure.png"))
    assert problems == [], "\n".join(problems)
    assert refused == [], f"the page tried the network: {refused}"
    assert [e for e in errors if not is_benign(e)] == []
    context.close()
