"""Measuring a drawn plotly figure, frame by frame: what covers the data, what runs off the edge, what moves.

Used by ``test_figure_layout.py`` (each figure on a page of its own) and ``test_slides.py``
(the figures inside a reveal.js deck).
"""

from __future__ import annotations

# One frame's boxes, and what overlaps or sticks out. ``gd`` is the figure's div.
MEASURE = """gd => {
    const r = el => { const b = el.getBoundingClientRect(); return {l: b.left, t: b.top, r: b.right, b: b.bottom}; };
    const hit = (a, b) => a.l < b.r - 1 && b.l < a.r - 1 && a.t < b.b - 1 && b.t < a.b - 1;
    const named = (sel, what) => [...gd.querySelectorAll(sel)].map(el => ({what: what(el), box: r(el)}))
        .filter(x => x.box.r > x.box.l && x.box.b > x.box.t);
    const plots = named('.draglayer .nsewdrag', el => 'plot area ' + (el.closest('g[class]')?.getAttribute('class') || ''));
    const labels = named('.xtick text, .ytick text, .g-xtitle text, .g-x2title text, .g-ytitle text', el => `label '${el.textContent}'`)
        .filter(x => x.what !== "label ''");
    const legend = named('.legend > .bg', () => 'legend');
    const controls = named('.updatemenu-button, .slider-container .slider-rail-rect, .slider-container .slider-label', el => 'control ' + (el.textContent || el.getAttribute('class')));
    const texts = named('.gtitle, .annotation-text, .legendtext, .xtick text, .ytick text, .g-xtitle text, .g-x2title text, .g-ytitle text, .slider-container text, .updatemenu-button text',
        el => `text '${el.textContent}'`).filter(x => x.what !== "text ''");
    const frame = r(gd.querySelector('.main-svg'));
    const over = [];
    for (const a of [...legend, ...controls]) for (const b of [...plots, ...labels])
        if (hit(a.box, b.box)) over.push(`${a.what} over ${b.what}`);
    for (const a of legend) for (const b of controls) if (hit(a.box, b.box)) over.push(`legend over ${b.what}`);
    const titles = named('.gtitle, .annotation-text', el => `title '${el.textContent}'`);
    for (const a of legend) for (const b of titles) if (hit(a.box, b.box)) over.push(`legend over ${b.what}`);
    const clipped = texts.filter(x => x.box.l < frame.l - 1 || x.box.r > frame.r + 1 || x.box.t < frame.t - 1 || x.box.b > frame.b + 1)
        .map(x => `${x.what} runs past the figure's edge`);
    const round = b => [b.l - frame.l, b.t - frame.t, b.r - frame.l, b.b - frame.t].map(Math.round);  // in the figure, wherever it scrolled
    return {over, clipped, plots: plots.map(p => round(p.box)), legend: legend.map(x => round(x.box)),
            controls: controls.length, labels: labels.length};
}"""

GO_TO = """async ([gd, name]) => {
    await Plotly.animate(gd, [name], {mode: 'immediate', frame: {duration: 0, redraw: true}, transition: {duration: 0}});
    await new Promise(requestAnimationFrame);
}"""


def frame_problems(page, gd, frames: list[str]) -> tuple[list[str], dict]:
    """Show each of ``frames`` in the figure ``gd`` (a JS handle) and measure it; returns the problems found, each
    once, and the first frame's measurements."""
    problems, first = [], None
    for frame in frames or [None]:
        if frame is not None:
            page.evaluate(GO_TO, [gd, frame])
        m = page.evaluate(MEASURE, gd)
        first = first or m
        where = f"frame {frame}" if frame is not None else "the figure"
        problems += [f"{where}: {p}" for p in m["over"] + m["clipped"]]
        if m["plots"] != first["plots"]:
            problems.append(f"{where}: the plot area moved from {first['plots']} to {m['plots']}")
        if m["legend"] != first["legend"]:
            problems.append(f"{where}: the legend moved from {first['legend']} to {m['legend']}")
    return list(dict.fromkeys(problems)), first
