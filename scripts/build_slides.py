"""``make slides``: every course notebook as an offline reveal.js deck in ``site/slides/``, for teaching in a room.

Why offline: a classroom projector's network is the first thing to fail. Each
notebook is executed (so the slides show real outputs) and exported with
nbconvert's reveal.js exporter through a small template that loads nothing from
the network: reveal.js comes from the ``sphinx-revealjs`` package on PyPI (a
test dependency of the course, so ``make install`` brings it), is copied next to
the decks and named by a relative ``reveal_url_prefix``; plotly.js is the plotly
package's own bundle, shared by every deck; there is no MathJax, jQuery or
require.js (the course's formulas are code, not LaTeX). Frame animations play
without a kernel; live widgets need one, so a deck shows a note where a widget
is (``make lab`` and the RISE button present the notebook live, widgets and all).

Slide types come from each cell's ``metadata.slideshow`` (``scripts/slide_metadata.py``
writes them); a cell without one gets what those rules give.

Each notebook runs as ``make site`` runs it (``build_site.execute_isolated``): in a process of
its own under a wall-clock limit, so a stalled one is stopped and reported with the cell it
was running, and the other decks are still built. A stall is intermittent (a rerun of the
same notebook builds in seconds), so a stalled notebook is run again, each time in a fresh
kernel under a shorter limit (``--retry-timeout``), before it counts as failed.

``index.html`` lists every deck on disk, not only this run's (``--only 02`` rebuilds one deck
and keeps the others linked), and names each course notebook whose deck is missing or failed
to build this time, with why. When the site is already built, its ``index.html`` is updated to
link the decks, so ``make site`` and ``make slides`` may run in either order.

    .venv/bin/python scripts/build_slides.py [--out site/slides] [--only 03] [--notebook PATH ...]
        [--timeout 300] [--notebook-timeout 240] [--retry-timeout 120] [--retries 2]
"""

from __future__ import annotations

import argparse
import functools
import html
import importlib.util
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
from jinja2 import DictLoader
from nbconvert import SlidesExporter

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE_PATTERN = re.compile(r"^(\d\d)_.*\.ipynb$")
REVEAL_DIR = "reveal.js"  # next to the decks; the template's reveal_url_prefix
PLOTLY_FILE = "plotly.js"
THEME = "white"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    '<p style="color:#666;font-style:italic">A live widget is here when the notebook runs in JupyterLab '
    "(<code>make lab</code>, then the RISE button presents it as slides).</p>"
)
INLINE_PLOTLY = re.compile(r"<script([^>]*)>(\s*/\*\*\s*\* plotly\.js v.*?)</script>", re.S)
PLOTLY_MATHJAX = re.compile(r"<script src=\"https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^\"]*\"></script>")
MANIFEST = "decks.json"  # stem -> title and slide count of each deck on disk, for the index
RETRIES = 2  # runs after a stall, each in a fresh kernel
NETWORK_ASSET = re.compile(r"<(?:script[^>]+src|link[^>]+href|img[^>]+src)=[\"'](?:https?:)?//", re.I)

# nbconvert's reveal template, with every network load taken out and reveal.js loaded from a local copy.
TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_css -%}
<script src="PLOTLY_FILE"></script>
<style>
  .reveal .slides { text-align: left; }
  .reveal section img, .reveal .js-plotly-plot { margin: 0 auto; }
  .reveal pre { box-shadow: none; white-space: pre-wrap; word-break: break-word; }  /* long lines wrap, not cut */
  :root { --jp-code-font-size: 16px; }
</style>
{%- endblock html_head_css -%}
{% block footer_js %}
<script src="{{ resources.reveal.url_prefix }}/dist/reveal.js"></script>
<script src="{{ resources.reveal.url_prefix }}/plugin/notes/notes.js"></script>
<script>
  // Figures drawn while their slide was hidden have no size yet: size them when their slide shows.
  function resizeFigures(slide) {
    if (!window.Plotly || !slide) return;
    slide.querySelectorAll(".js-plotly-plot").forEach(gd => Plotly.Plots.resize(gd));
  }
  Reveal.initialize({
    controls: true, progress: true, history: true, hash: true,
    transition: "{{ resources.reveal.transition | default('slide', true) }}",
    slideNumber: "{{ resources.reveal.number | default('', true) }}",
    width: {{ resources.reveal.width | default('1100', true) }}, height: {{ resources.reveal.height | default('780', true) }},
    plugins: [RevealNotes],
  });
  Reveal.on("ready", event => resizeFigures(event.currentSlide));
  Reveal.on("slidechanged", event => resizeFigures(event.currentSlide));
  Reveal.on("fragmentshown", () => resizeFigures(Reveal.getCurrentSlide()));
</script>
{% endblock footer_js %}
""".replace("PLOTLY_FILE", PLOTLY_FILE)


def course_notebooks(only: str | None = None) -> list[Path]:
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if COURSE_PATTERN.match(p.name))
    if only:
        paths = [p for p in paths if p.name.startswith(only) or only in p.stem]
    return paths


@functools.cache
def sibling(name: str):
    """``scripts/<name>.py``, loaded by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slide_rules():
    return sibling("slide_metadata")


def fill_slide_types(nb: nbformat.NotebookNode) -> int:
    """Cells without a slide type get the rules' one; committed ones are kept. Returns how many were filled."""
    filled = 0
    for cell, kind in zip(nb.cells, slide_rules().slide_types(nb)):
        slideshow = cell.metadata.setdefault("slideshow", {})
        if "slide_type" not in slideshow:
            slideshow["slide_type"] = kind
            filled += 1
    return filled


def reveal_source() -> Path:
    """reveal.js as the sphinx-revealjs package ships it (dist/, plugin/, LICENSE), found without importing Sphinx."""
    spec = importlib.util.find_spec("sphinx_revealjs")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("reveal.js comes from the sphinx-revealjs package: pip install -e '.[test]' (make install)")
    path = Path(list(spec.submodule_search_locations)[0]) / "_static" / "revealjs"
    if not (path / "dist" / "reveal.js").exists():
        raise SystemExit(f"{path} has no dist/reveal.js: this sphinx-revealjs ships reveal.js elsewhere")
    return path


def ship_assets(out: Path) -> None:
    """reveal.js (core, the theme with its fonts, the speaker-notes plugin, its licence) and plotly.js, beside the decks."""
    source, target = reveal_source(), out / REVEAL_DIR
    if target.exists():
        shutil.rmtree(target)
    skip = shutil.ignore_patterns("*.map", "*.esm.js")
    shutil.copytree(source / "dist", target / "dist", ignore=skip)
    shutil.copytree(source / "plugin" / "notes", target / "plugin" / "notes", ignore=skip)
    shutil.copy(source / "LICENSE", target / "LICENSE")
    from plotly.offline import get_plotlyjs

    (out / PLOTLY_FILE).write_text(get_plotlyjs(), encoding="utf-8")


def exporter() -> SlidesExporter:
    return SlidesExporter(
        extra_loaders=[DictLoader({"offline_reveal.html.j2": TEMPLATE})],
        template_file="offline_reveal.html.j2",
        reveal_url_prefix=REVEAL_DIR,
        reveal_theme=THEME,
        reveal_scroll=True,  # a tall slide scrolls instead of being cut off
        reveal_number="c/t",
        exclude_input_prompt=True,  # "In [3]:" is noise on a projector
        exclude_output_prompt=True,
    )


def replace_widget_views(nb: nbformat.NotebookNode) -> None:
    """Widget views need a kernel (and their state would add megabytes): a short note instead."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if WIDGET_MIME in output.get("data", {}):
                output["data"] = {"text/html": WIDGET_NOTE, "text/plain": "(live widget)"}
    nb.metadata.pop("widgets", None)


def drop_inlined_plotly(page: str) -> str:
    """The first figure inlines plotly.js (about 5 MB): every deck loads the one shared copy in <head> instead.
    Each figure also asks a CDN for MathJax (for LaTeX labels, which the course's figures never use): dropped."""
    page = PLOTLY_MATHJAX.sub("", page)
    return INLINE_PLOTLY.sub("<script></script>", page, count=1)


def rewrite_links(page: str) -> str:
    """A link to another course notebook opens its deck."""
    return re.sub(r'href="(?:\.\./notebooks/)?((?:\d\d)_[\w-]+)\.ipynb"', r'href="\1.html"', page)


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def offline_problems(page: str, name: str) -> list[str]:
    found = NETWORK_ASSET.findall(page)
    return [f"{name}: loads {len(found)} asset(s) from the network, e.g. {found[0]!r}"] if found else []


def retry_limits(notebook_timeout: int, retry_timeout: int | None = None, retries: int = RETRIES) -> list[int]:
    """Wall-clock limits of the first run and of each rerun after a stall. A rerun is shorter: a stall is the
    client waiting on a reply it never reads, not slow work (a stalled notebook rebuilt alone in 7.5 s)."""
    again = retry_timeout if retry_timeout is not None else max(60, notebook_timeout // 2)
    return [notebook_timeout] + [min(again, notebook_timeout)] * retries


def execute_with_retries(
    path: Path, timeout: int, limits: list[int], log: Callable[..., None] = print
) -> tuple[nbformat.NotebookNode | None, str]:
    """``build_site.execute_isolated`` under each limit in turn while the notebook stalls; an error is final
    (it would fail again). Each run is a new process, so each rerun has a fresh kernel."""
    nb, why = None, "not run"
    for attempt, limit in enumerate(limits):
        if attempt:
            log(f"stalled ({why.splitlines()[0]}); again in a fresh kernel, {limit} s at most ...", end=" ", flush=True)
        nb, why = sibling("build_site").execute_isolated(path, timeout, limit)
        if nb is not None or not why.startswith("stalled"):
            break
    if nb is None and why.startswith("stalled") and len(limits) > 1:
        why = f"stalled in all {len(limits)} runs; the last {why}"
    return nb, why


def build_deck(
    path: Path, out: Path, timeout: int, notebook_timeout: int = 240, limits: list[int] | None = None
) -> tuple[str, float, int]:
    """Execute ``path`` (its own process, ``notebook_timeout`` seconds at most, rerun after a stall under
    ``limits``) and write ``out/<stem>.html``; returns its title, execution seconds and slide count. A notebook
    that fails or stalls every time raises, saying where."""
    started = time.perf_counter()
    nb, why = execute_with_retries(path, timeout, limits or [notebook_timeout])
    seconds = time.perf_counter() - started
    if nb is None:
        raise RuntimeError(why)
    fill_slide_types(nb)
    replace_widget_views(nb)
    title = title_of(nb, path.stem)
    page, _ = exporter().from_notebook_node(nb, resources={"metadata": {"name": title}})
    page = rewrite_links(drop_inlined_plotly(page))
    (out / f"{path.stem}.html").write_text(page, encoding="utf-8")
    slides = sum(c.metadata.get("slideshow", {}).get("slide_type") in ("slide", "subslide") for c in nb.cells)
    return title, seconds, slides


def read_manifest(out: Path) -> dict[str, dict]:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def deck_title(page: Path) -> str:
    """A deck's <title>, for a deck on disk that the manifest does not know (built before it existed)."""
    found = re.search(r"<title>(.*?)</title>", page.read_text(encoding="utf-8", errors="replace"), re.S)
    title = html.unescape(found.group(1).strip()) if found else page.stem
    return title.removesuffix(" slides")  # nbconvert's reveal template adds it


def decks_on_disk(out: Path, built: list[tuple[str, str, int]]) -> list[tuple[str, str, int | None]]:
    """Every deck in ``out`` (this run's and earlier ones), as (stem, title, slide count or None), by name;
    the manifest is brought up to date with this run's decks."""
    known = read_manifest(out) | {stem: {"title": title, "slides": n} for stem, title, n in built}
    stems = sorted(p.stem for p in out.glob("*.html") if p.name != "index.html")
    known = {stem: known[stem] for stem in stems if stem in known}
    (out / MANIFEST).write_text(json.dumps(known, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return [
        (stem, known[stem]["title"], known[stem]["slides"])
        if stem in known
        else (stem, deck_title(out / f"{stem}.html"), None)
        for stem in stems
    ]


def missing_decks(out: Path, expected: list[Path], failed: dict[str, str]) -> dict[str, str]:
    """stem -> why, for each expected notebook without a deck on disk, and each whose build failed this run."""
    missing = {p.stem: "not built yet" for p in expected if not (out / f"{p.stem}.html").exists()}
    for stem, why in failed.items():
        old = (out / f"{stem}.html").exists()
        missing[stem] = f"this build failed ({why})" + (
            "; the deck linked above is from an earlier build" if old else ""
        )
    return dict(sorted(missing.items()))


def index_page(entries: list[tuple[str, str, int | None]], missing: dict[str, str] | None = None) -> str:
    """The decks' index: a link to each deck, then what is missing and how to build it."""
    items = "\n".join(
        f'    <li><a href="{stem}.html">{html.escape(title)}</a>'
        + (f" ({n} slides)" if n is not None else "")
        + "</li>"
        for stem, title, n in entries
    )
    absent = "\n".join(
        f'    <li id="missing-{stem}"><b>{html.escape(stem)}</b>: {html.escape(why)}. Build it with '
        f"<code>python scripts/build_slides.py --only {html.escape(stem)}</code></li>"
        for stem, why in (missing or {}).items()
    )
    missing_section = (
        f'  <section id="missing">\n  <h2>Missing decks ({len(missing)})</h2>\n  <ul>\n{absent}\n  </ul>\n  </section>\n'
        if missing
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>cblab-teach: slides</title>
  <style>body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 3rem auto; line-height: 1.5; }}</style>
</head>
<body>
  <h1>Slides: continuous batching for LLM inference</h1>
  <p>One deck per notebook, executed, working offline. Arrow keys or space move; <kbd>s</kbd> opens the speaker
  notes; <kbd>Esc</kbd> shows every slide. Frame animations play in the decks; the live widgets run in JupyterLab
  (<code>make lab</code>, then the RISE button). Lesson plans: <code>docs/teaching.md</code>.</p>
  <ul>
{items}
  </ul>
{missing_section}  <p><a href="../index.html">Back to the course pages</a></p>
</body>
</html>
"""


def build(
    out: Path,
    paths: list[Path],
    timeout: int,
    notebook_timeout: int = 240,
    expected: list[Path] | None = None,
    limits: list[int] | None = None,
) -> int:
    """Build a deck of each of ``paths``; the index lists every deck in ``out`` and each of ``expected``
    (default: ``paths``) that has none or failed."""
    if not paths:
        print("no notebooks to build", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    ship_assets(out)
    limits = limits or retry_limits(notebook_timeout)
    entries, problems, failed = [], [], {}
    for i, path in enumerate(paths, 1):
        print(f"[{i:>2}/{len(paths)}] {path.name} ...", end=" ", flush=True)
        try:
            title, seconds, slides = build_deck(path, out, timeout, notebook_timeout, limits)
        except Exception as err:  # one failing notebook is reported; the other decks are still built
            print("FAILED", flush=True)
            first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            problems.append(f"{path.name}: {type(err).__name__}: {first}")
            failed[path.stem] = first
            continue
        problems += offline_problems((out / f"{path.stem}.html").read_text(encoding="utf-8"), path.name)
        entries.append((path.stem, title, slides))
        print(f"{slides:3d} slides, executed in {seconds:5.1f} s", flush=True)
    missing = missing_decks(out, expected if expected is not None else paths, failed)
    (out / "index.html").write_text(index_page(decks_on_disk(out, entries), missing), encoding="utf-8")
    site_index = out.parent / "index.html"
    linked = sibling("build_site").link_slides(site_index, out)
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    print(
        f"wrote {len(entries)} decks and index.html to {out}" + (f"; linked them from {site_index}" if linked else "")
    )
    if missing:
        print(f"missing decks, named in the index: {', '.join(missing)}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "site" / "slides")
    parser.add_argument("--only", help="course notebooks whose name starts with (or contains) this")
    parser.add_argument("--notebook", type=Path, nargs="+", help="build these notebooks instead of the course")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    parser.add_argument("--notebook-timeout", type=int, default=240, help="seconds per notebook, start-up included")
    parser.add_argument(
        "--retry-timeout", type=int, help="seconds per rerun after a stall (default: half, 60 at least)"
    )
    parser.add_argument(
        "--retries", type=int, default=RETRIES, help="reruns of a stalled notebook, each in a fresh kernel"
    )
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebook] if args.notebook else course_notebooks(args.only)
    expected = paths if args.notebook else course_notebooks()  # --only: the index still covers the course
    limits = retry_limits(args.notebook_timeout, args.retry_timeout, args.retries)
    return build(args.out, paths, args.timeout, args.notebook_timeout, expected, limits)


if __name__ == "__main__":
    sys.exit(main())
