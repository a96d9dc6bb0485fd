"""``make site``: execute the course and export it as static HTML that works offline.

Why: people want to read the course before they install anything. Each course
notebook is executed top to bottom (so the pages show real, current outputs)
and exported with nbconvert. The notebooks call ``setup_notebook()``, whose
renderer embeds plotly.js once in the page, so figures draw without a CDN and
animated figures (frames, a slider, play / pause) play without a kernel. Live
ipywidgets need a kernel; in the pages they are inert, and every animation the
course relies on also exists as a frame-based figure.

    .venv/bin/python scripts/build_site.py [--out site] [--only 03] [--timeout 300]
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import time
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import ExecutePreprocessor
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE_PATTERN = re.compile(r"^(\d\d)_.*\.ipynb$")
CDN_SCRIPT = re.compile(r"<script[^>]+src=[\"']https?://cdn\.plot\.ly", re.I)
REQUIRE_JS = re.compile(r"<script[^>]+require(?:\.min)?\.js[^>]*>\s*</script>\s*", re.I)
INLINE_PLOTLY = re.compile(r"<script([^>]*)>(\s*/\*\*\s*\* plotly\.js v.*?)</script>", re.S)
PLOTLY_FILE = "plotly.js"


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
    return problems


def build(out: Path, only: str | None, timeout: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    write_plotly(out)
    entries, problems = [], []
    paths = course_notebooks(only)
    if not paths:
        print(f"no course notebooks match {only!r}", file=sys.stderr)
        return 1
    for path in tqdm(paths, desc="executing the course", unit="notebook"):
        nb = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        try:
            executor = ExecutePreprocessor(timeout=timeout, kernel_name="python3", allow_errors=False)
            executor.preprocess(nb, {"metadata": {"path": str(NOTEBOOKS)}})
        except Exception as err:  # a failing notebook is reported, and the others are still built
            problems.append(f"{path.name}: execution failed: {str(err).splitlines()[0][:200]}")
            continue
        seconds = time.perf_counter() - started
        replace_widget_views(nb)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title_of(nb, path.stem)}})
        page = share_plotly(rewrite_links(body))
        problems += check_offline(page, path.name, out)
        (out / f"{path.stem}.html").write_text(page, encoding="utf-8")
        entries.append((path.stem, title_of(nb, path.stem), seconds, page.count("Plotly.addFrames(")))
    (out / "index.html").write_text(index_page(entries), encoding="utf-8")
    for stem, _, seconds, animations in entries:
        print(f"{stem:<32} executed in {seconds:5.1f} s, {animations} animated figures (play without a kernel)")
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    print(f"wrote {len(entries)} pages and index.html to {out}")
    return 1 if problems else 0


def index_page(entries: list[tuple[str, str, float, int]]) -> str:
    items = "\n".join(f'    <li><a href="{stem}.html">{html.escape(title)}</a></li>' for stem, title, *_ in entries)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>cblab-teach: continuous batching for LLM inference</title>
  <style>
    body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 3rem auto; line-height: 1.5; padding: 0 1rem; }}
    li {{ margin: 0.4rem 0; }}
  </style>
</head>
<body>
  <h1>Continuous batching for LLM inference</h1>
  <p>An interactive course on a compact, correct PyTorch engine. These pages are the executed notebooks, readable
  offline; figures are interactive and animations play without a kernel. To change things and run the widgets,
  install the course and run <code>make lab</code>.</p>
  <ol start="0">
{items}
  </ol>
</body>
</html>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "site")
    parser.add_argument("--only", help="build only notebooks whose name starts with (or contains) this")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    args = parser.parse_args()
    raise SystemExit(build(args.out, args.only, args.timeout))


if __name__ == "__main__":
    main()
