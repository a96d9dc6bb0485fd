"""``make site``: execute the course and export it as static HTML that works offline.

Why: people want to read the course before they install anything. Each course
notebook is executed top to bottom (so the pages show real, current outputs)
and exported with nbconvert. The notebooks call ``setup_notebook()``, whose
renderer embeds plotly.js once in the page, so figures draw without a CDN and
animated figures (frames, a slider, play / pause) play without a kernel. Live
ipywidgets need a kernel; in the pages they are inert, and every animation the
course relies on also exists as a frame-based figure.

Each notebook runs in a process of its own (its own kernel, sockets and event loop) under a
wall-clock limit: one that stalls is stopped and reported with the cell it was running, and the
build goes on. Nothing on the pages loads from the network: plotly.js is a local file, and the
export template drops MathJax (the course has no TeX math; a page that gains some gets a warning).

    .venv/bin/python scripts/build_site.py [--out site] [--only 03] [--timeout 300] [--notebook-timeout 240]
"""

from __future__ import annotations

import argparse
import html
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE_PATTERN = re.compile(r"^(\d\d)_.*\.ipynb$")
CDN_SCRIPT = re.compile(r"<script[^>]+src=[\"']https?://cdn\.plot\.ly", re.I)
REQUIRE_JS = re.compile(r"<script[^>]+require(?:\.min)?\.js[^>]*>\s*</script>\s*", re.I)
INLINE_PLOTLY = re.compile(r"<script([^>]*)>(\s*/\*\*\s*\* plotly\.js v.*?)</script>", re.S)
PLOTLY_FILE = "plotly.js"
# plotly's "notebook" renderer puts a MathJax <script> from a CDN before every figure (for TeX in labels, which
# the course never uses): dropped, like the template's own.
FIGURE_MATHJAX = re.compile(r"<script[^>]+src=[\"']https?://[^\"']*/mathjax/[^\"']*[\"'][^>]*>\s*</script>", re.I)
REMOTE_ASSET = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"'](?:https?:)?//[^\"']+", re.I)
TEX_MATH = re.compile(r"\$\$.+?\$\$|\\\(.+?\\\)|\\begin\{|(?<![\w$])\$[^\s$][^$\n]*(?<=[^\s$])\$(?![\w$])", re.S)
# The lab template with its MathJax <script> (a CDN) left out: the pages must need no network.
OFFLINE_TEMPLATE = "{%- extends 'lab/index.html.j2' -%}\n{%- block html_head_js_mathjax -%}{%- endblock -%}\n"
CELL_MARK = "cell "  # progress lines the executing process prints: "cell 3/20"


def course_notebooks(only: str | None = None) -> list[Path]:
    """Numbered notebooks in course order (``only``: a number prefix or a name fragment)."""
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if COURSE_PATTERN.match(p.name))
    if only:
        paths = [p for p in paths if p.name.startswith(only) or only in p.stem]
    return paths


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def rewrite_links(body: str) -> str:
    """Links between course notebooks point at their pages; exercise links go to the repository files."""
    return re.sub(r'href="((?:\d\d)_[\w-]+)\.ipynb"', r'href="\1.html"', body)


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    '<p style="color:#666;font-style:italic">A live widget is here when the notebook runs in JupyterLab '
    "(<code>make lab</code>); the animated figures on this page play without it.</p>"
)


def replace_widget_views(nb: nbformat.NotebookNode) -> int:
    """Widget views need a kernel (and their state would add megabytes): show a short note instead."""
    replaced = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                output["data"] = {"text/html": WIDGET_NOTE, "text/plain": "(live widget)"}
                replaced += 1
    nb.metadata.pop("widgets", None)
    return replaced


def write_plotly(out: Path) -> None:
    """One local copy of plotly.js for every page (the package's own bundle, so no network is ever needed)."""
    from plotly.offline import get_plotlyjs

    (out / PLOTLY_FILE).write_text(get_plotlyjs(), encoding="utf-8")


def share_plotly(page: str) -> str:
    """Drop the plotly.js a notebook inlined (about 5 MB, wherever its first figure was) and load the local copy
    in <head>, before any figure draws. The template's require.js goes too: where it loads (online), plotly.js
    registers as an AMD module instead of ``window.Plotly`` and no figure draws."""
    page = REQUIRE_JS.sub("", page)
    page = FIGURE_MATHJAX.sub("", page)
    page = INLINE_PLOTLY.sub("<script></script>", page, count=1)
    if "Plotly.newPlot" not in page:
        return page
    return page.replace("</head>", f'<script src="{PLOTLY_FILE}"></script>\n</head>', 1)


def check_offline(page: str, name: str, out: Path) -> list[str]:
    """Figures must draw from local files only."""
    problems = []
    if CDN_SCRIPT.search(page):
        problems.append(f"{name}: loads plotly.js from a CDN")
    if REQUIRE_JS.search(page):
        problems.append(f"{name}: loads require.js, which hides window.Plotly")
    draws = "Plotly.newPlot" in page
    if draws and not (f'src="{PLOTLY_FILE}"' in page and (out / PLOTLY_FILE).exists()):
        problems.append(f"{name}: draws plotly figures but has no local plotly.js")
    remote = sorted({m.group(0)[:120] for m in REMOTE_ASSET.finditer(page)})
    if remote:
        problems.append(f"{name}: loads from the network: {remote}")
    return problems


def math_warning(nb: nbformat.NotebookNode, name: str) -> str | None:
    """The pages carry no MathJax; say so if a notebook starts using TeX math (it would show as source)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and TEX_MATH.search(cell.source):
            return f"{name}: has TeX math, which the offline pages show as plain text (no MathJax is shipped)"
    return None


def offline_exporter() -> HTMLExporter:
    """nbconvert's lab template without the MathJax script it loads from a CDN."""
    loader = jinja2.DictLoader({"cblab_offline.html.j2": OFFLINE_TEMPLATE})
    return HTMLExporter(template_name="lab", extra_loaders=[loader], template_file="cblab_offline.html.j2")


def execute_here(path: Path, target: Path, timeout: int) -> None:
    """Run in the executing process: execute ``path`` cell by cell (printing ``cell i/n``), write it to ``target``."""
    nb = nbformat.read(path, as_version=4)
    total = sum(c.cell_type == "code" for c in nb.cells)
    done = {"n": 0}

    def started(cell, cell_index) -> None:
        if cell.cell_type == "code":
            done["n"] += 1
            first = cell.source.strip().splitlines()[0][:80] if cell.source.strip() else ""
            print(f"{CELL_MARK}{done['n']}/{total} (index {cell_index}): {first}", flush=True)

    executor = ExecutePreprocessor(timeout=timeout, kernel_name="python3", allow_errors=False)
    executor.on_cell_start = started
    executor.preprocess(nb, {"metadata": {"path": str(path.parent)}})
    nbformat.write(nb, target)


def execute_isolated(path: Path, timeout: int, notebook_timeout: int) -> tuple[nbformat.NotebookNode | None, str]:
    """Execute ``path`` in a fresh process; ``(executed notebook, "")`` or ``(None, why it failed)``.

    Why a process per notebook: run one after another in one process, the build once stalled for minutes
    (tornado logged a ``ZMQError: Socket operation on non-socket``). Caught in the act with py-spy
    (``scripts/time_notebooks.py`` had the same loop): the client waited on a cell the kernel had finished, a
    ``widgets.interact`` cell of the third notebook, kernel idle, its reply never read; with ipykernel 7.4
    and 6.31 alike, and nbclient's open issue #312 reports the same for widget cells. It is intermittent
    (it also hit notebook 17's quiz cell, first in its own process): the wall-clock limit turns a stall into
    an error naming the cell it was running, instead of a silent wait.
    """
    with tempfile.TemporaryDirectory(prefix="cblab_site_") as tmp:
        target, log_path = Path(tmp) / path.name, Path(tmp) / "execute.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--execute-one", str(path), "--to", str(target),
               "--timeout", str(timeout)]  # fmt: skip
        env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=notebook_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # the kernel follows: it exits when its parent is gone
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                code = None
        log_text = log_path.read_text(errors="replace")
        cells = [line for line in log_text.splitlines() if line.startswith(CELL_MARK)]
        where = f"while running {cells[-1]}" if cells else "before its first cell ran (kernel start-up)"
        if code is None:
            return None, f"stalled: stopped after {notebook_timeout} s {where}; log tail:\n{log_text[-1500:]}"
        if code != 0 or not target.exists():
            errors = [line for line in log_text.splitlines() if re.search(r"\w+Error\b", line)]
            first = errors[-1][:300] if errors else log_text[-300:]
            return None, f"execution failed {where}: {first}"
        return nbformat.read(target, as_version=4), ""


def build(out: Path, only: str | None, timeout: int, notebook_timeout: int = 240) -> int:
    out.mkdir(parents=True, exist_ok=True)
    exporter = offline_exporter()
    write_plotly(out)
    entries, problems = [], []
    paths = course_notebooks(only)
    if not paths:
        print(f"no course notebooks match {only!r}", file=sys.stderr)
        return 1
    total = len(paths)
    for i, path in enumerate(paths, 1):
        print(f"[{i:>2}/{total}] {path.name} ...", end=" ", flush=True)
        started = time.perf_counter()
        nb, why = execute_isolated(path, timeout, notebook_timeout)
        if nb is None and why.startswith("stalled"):  # rare and intermittent (see execute_isolated): once more
            print(f"stalled, running it again ({why.splitlines()[0]})", end=" ", flush=True)
            nb, why = execute_isolated(path, timeout, notebook_timeout)
        seconds = time.perf_counter() - started
        if nb is None:  # a failing notebook is reported, and the others are still built
            print(f"FAILED after {seconds:.1f} s", flush=True)
            problems.append(f"{path.name}: {why}")
            continue
        warning = math_warning(nb, path.name)
        if warning:
            print(f"\n  warning: {warning}", end=" ", flush=True)
        replace_widget_views(nb)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title_of(nb, path.stem)}})
        page = share_plotly(rewrite_links(body))
        problems += check_offline(page, path.name, out)
        (out / f"{path.stem}.html").write_text(page, encoding="utf-8")
        animations = page.count("Plotly.addFrames(")
        print(f"{seconds:5.1f} s, {animations} animated figures", flush=True)
        entries.append((path.stem, title_of(nb, path.stem), seconds, animations))
    (out / "index.html").write_text(index_page(entries), encoding="utf-8")
    publish_docs(out)
    publish_teaching(out)
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    print(f"wrote {len(entries)} pages and index.html to {out}")
    return 1 if problems else 0


DOC_PAGES = ("glossary", "reading")  # docs/<name>.md -> <name>.html, linked from the notebooks


def publish_docs(out: Path) -> None:
    """Render docs/glossary.md and docs/reading.md into the site, with GitHub-style heading anchors, and point the
    notebook pages' ``../docs/<name>.md#term`` links at them."""
    import mistune

    def slug(text: str) -> str:
        return re.sub(r"[^\w\- ]", "", html.unescape(text).strip().lower()).replace(" ", "-")

    for name in DOC_PAGES:
        source = ROOT / "docs" / f"{name}.md"
        if not source.exists():
            continue
        body = mistune.html(source.read_text(encoding="utf-8"))
        body = re.sub(r"<h([1-3])>(.*?)</h\1>", lambda m: f'<h{m[1]} id="{slug(re.sub("<[^>]+>", "", m[2]))}">'
                      f"{m[2]}</h{m[1]}>", body)
        body = re.sub(r'href="(glossary|reading)\.md', r'href="\1.html', body)
        (out / f"{name}.html").write_text(
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
            '<style>body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 3rem auto; line-height: 1.5; '
            f"padding: 0 1rem; }}</style></head><body>\n{body}</body></html>\n",
            encoding="utf-8",
        )
    for page in out.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        fixed = re.sub(r'href="\.\./docs/(glossary|reading)\.md', r'href="\1.html', text)
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")
    titles = {"glossary": "Glossary: the words the course uses", "reading": "Reading list: the papers behind it"}
    links = [f'<li><a href="{n}.html">{titles[n]}</a></li>' for n in DOC_PAGES if (out / f"{n}.html").exists()]
    index = out / "index.html"
    if links and index.exists():  # list them on the first page, after the notebooks
        section = '  <h2 id="reference">Reference</h2>\n  <ul>\n    ' + "\n    ".join(links) + "\n  </ul>\n"
        index.write_text(index.read_text(encoding="utf-8").replace("</body>", f"{section}</body>", 1), encoding="utf-8")


TEACHING_PAGES = {"cheatsheet_en": "en", "cheatsheet_zh": "zh-CN", "teaching": "en"}  # docs/<name>.md -> <name>.html


def publish_teaching(out: Path) -> None:
    """Render the cheat sheets and lesson plans into the site, and link them and the decks (``make slides`` writes
    ``slides/``) from index.html, so a teacher finds everything for the room on the first page."""
    import mistune

    links = []
    for name, lang in TEACHING_PAGES.items():
        source = ROOT / "docs" / f"{name}.md"
        if not source.exists():
            continue
        body = mistune.html(source.read_text(encoding="utf-8"))
        body = re.sub(r'href="(?:\.\./notebooks/)?(\d\d_[\w-]+)\.ipynb"', r'href="\1.html"', body)
        body = re.sub(r'href="(\w+)\.md', r'href="\1.html', body)
        title = re.search(r"<h1>(.*?)</h1>", body)
        title = re.sub("<[^>]+>", "", title[1]) if title else name
        (out / f"{name}.html").write_text(
            f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
            "<style>body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 3rem auto; line-height: 1.5;"
            " padding: 0 1rem; } table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2rem"
            " .5rem; } pre { background: #f5f5f5; padding: .5rem; }</style></head><body>\n"
            f"{body}</body></html>\n",
            encoding="utf-8",
        )
        links.append(f'<li><a href="{name}.html">{title}</a></li>')
    slides = slides_item(out / "slides")
    section = f'  <h2 id="teaching">Teaching it in a room</h2>\n  <ul>\n    {slides}\n    ' + "\n    ".join(links)
    index = out / "index.html"
    if index.exists():
        page = index.read_text(encoding="utf-8")
        index.write_text(page.replace("</body>", f"{section}\n  </ul>\n</body>", 1), encoding="utf-8")


SLIDES_ITEM = re.compile(r'<li id="slides">.*?</li>', re.S)


def slides_item(slides: Path) -> str:
    """The index's entry for the decks in ``slides`` (beside index.html): a link to each, or how to build them."""
    decks = sorted(slides.glob("[0-9][0-9]_*.html")) if slides.is_dir() else []
    deck_links = " · ".join(f'<a href="{slides.name}/{p.name}">{p.stem[:2]}</a>' for p in decks)
    if decks:
        return f'<li id="slides"><a href="{slides.name}/index.html">Slides</a>, one offline deck per notebook: {deck_links}</li>'
    return (
        '<li id="slides">Slides: <code>make slides</code> writes one offline deck per notebook to '
        f"<code>{slides.name}/</code></li>"
    )


def link_slides(index: Path, slides: Path) -> bool:
    """Bring a built index.html's slides entry up to date with ``slides``; ``make slides`` calls it, so the decks
    are linked whichever of ``make site`` and ``make slides`` ran first. False when there is no entry to update."""
    if not index.exists():
        return False
    page = index.read_text(encoding="utf-8")
    if not SLIDES_ITEM.search(page):
        return False
    index.write_text(SLIDES_ITEM.sub(lambda _: slides_item(slides), page, count=1), encoding="utf-8")
    return True


def index_page(entries: list[tuple[str, str, float, int]]) -> str:
    # A plain list: each title already starts with its number ("03 · ..."), so an <ol> would number it twice.
    items = "\n".join(f'    <li><a href="{stem}.html">{html.escape(title)}</a></li>' for stem, title, *_ in entries)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>cblab-teach: continuous batching for LLM inference</title>
  <style>
    body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 3rem auto; line-height: 1.5; padding: 0 1rem; }}
    ul.course {{ list-style: none; padding-left: 0; }}
    li {{ margin: 0.4rem 0; }}
  </style>
</head>
<body>
  <h1>Continuous batching for LLM inference</h1>
  <p>An interactive course on a compact, correct PyTorch engine. These pages are the executed notebooks, readable
  offline; figures are interactive and animations play without a kernel. To change things and run the widgets,
  install the course and run <code>make lab</code>.</p>
  <ul class="course">
{items}
  </ul>
</body>
</html>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "site")
    parser.add_argument("--only", help="build only notebooks whose name starts with (or contains) this")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    parser.add_argument("--notebook-timeout", type=int, default=240, help="seconds per notebook, start-up included")
    parser.add_argument("--execute-one", type=Path, help=argparse.SUPPRESS)  # the per-notebook process
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.execute_one:
        execute_here(args.execute_one, args.to, args.timeout)
        return
    raise SystemExit(build(args.out, args.only, args.timeout, args.notebook_timeout))


if __name__ == "__main__":
    main()
