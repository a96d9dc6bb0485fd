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

The Chinese notebooks (``notebooks/zh/``, built by ``scripts/make_zh_notebooks.py``) become ``zh/<name>.html``
beside a Chinese index, ``zh/index.html``; each index links the other. They are executed too (in their own
folder, with ``CBLAB_TEACH_LANG=zh``), so their figures and widgets carry Chinese labels. ``--lang en`` or
``--lang zh`` builds one language only.

    .venv/bin/python scripts/build_site.py [--out site] [--only 03] [--lang en|zh|both] [--timeout 300]
        [--notebook-timeout 240]
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


LANGS = {"en": "", "zh": "zh"}  # language -> its folder under notebooks/ and under the site
HTML_LANG = {"en": "en", "zh": "zh-CN"}
LANG_ENV = "CBLAB_TEACH_LANG"  # the figures' language in the executing kernel (cblab_teach.viz.lang)


def course_notebooks(only: str | None = None, lang: str = "en") -> list[Path]:
    """Numbered notebooks of ``lang`` in course order (``only``: a number prefix or a name fragment)."""
    folder = NOTEBOOKS / LANGS[lang]
    paths = sorted(p for p in folder.glob("*.ipynb") if COURSE_PATTERN.match(p.name))
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
    """Links between course notebooks point at their pages (a Chinese page's ``../17_...`` too); exercise links go
    to the repository files."""
    return re.sub(r'href="((?:\.\./)?\d\d_[\w-]+)\.ipynb"', r'href="\1.html"', body)


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTES = {
    "en": '<p style="color:#666;font-style:italic">A live widget is here when the notebook runs in JupyterLab '
    "(<code>make lab</code>); the animated figures on this page play without it.</p>",
    "zh": '<p style="color:#666;font-style:italic">在 JupyterLab 里运行这个 notebook（<code>make lab</code>）时，'
    "这里是一个可交互的控件；本页的动画图不需要它也能播放。</p>",
}
WIDGET_NOTE = WIDGET_NOTES["en"]


def replace_widget_views(nb: nbformat.NotebookNode, lang: str = "en") -> int:
    """Widget views need a kernel (and their state would add megabytes): show a short note instead."""
    replaced = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                output["data"] = {"text/html": WIDGET_NOTES[lang], "text/plain": "(live widget)"}
                replaced += 1
    nb.metadata.pop("widgets", None)
    return replaced


def write_plotly(out: Path) -> None:
    """One local copy of plotly.js for every page (the package's own bundle, so no network is ever needed)."""
    from plotly.offline import get_plotlyjs

    (out / PLOTLY_FILE).write_text(get_plotlyjs(), encoding="utf-8")


def share_plotly(page: str, up: str = "") -> str:
    """Drop the plotly.js a notebook inlined (about 5 MB, wherever its first figure was) and load the local copy
    in <head>, before any figure draws. The template's require.js goes too: where it loads (online), plotly.js
    registers as an AMD module instead of ``window.Plotly`` and no figure draws. ``up``: the way from the page's
    folder to the site's root (``../`` for a Chinese page), where the one copy lives."""
    page = REQUIRE_JS.sub("", page)
    page = FIGURE_MATHJAX.sub("", page)
    page = INLINE_PLOTLY.sub("<script></script>", page, count=1)
    if "Plotly.newPlot" not in page:
        return page
    return page.replace("</head>", f'<script src="{up}{PLOTLY_FILE}"></script>\n</head>', 1)


def check_offline(page: str, name: str, out: Path, up: str = "") -> list[str]:
    """Figures must draw from local files only (``out``: the site's root; ``up``: from the page's folder to it)."""
    problems = []
    if CDN_SCRIPT.search(page):
        problems.append(f"{name}: loads plotly.js from a CDN")
    if REQUIRE_JS.search(page):
        problems.append(f"{name}: loads require.js, which hides window.Plotly")
    draws = "Plotly.newPlot" in page
    if draws and not (f'src="{up}{PLOTLY_FILE}"' in page and (out / PLOTLY_FILE).exists()):
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


def execute_isolated(
    path: Path, timeout: int, notebook_timeout: int, lang: str = "en"
) -> tuple[nbformat.NotebookNode | None, str]:
    """Execute ``path`` in a fresh process, its figures in ``lang``; ``(executed notebook, "")`` or ``(None, why)``.

    Why a process per notebook: run one after another in one process, the build once stalled for minutes
    (tornado logged a ``ZMQError: Socket operation on non-socket``). Caught in the act with py-spy
    (``scripts/time_notebooks.py`` had the same loop): the client waited on a cell the kernel had finished, a
    ``widgets.interact`` cell of the third notebook, kernel idle, its reply never read; with ipykernel 7.4
    and 6.31 alike, and nbclient's open issue #312 reports the same for widget cells. It is intermittent
    (it also hit notebook 18's quiz cell, first in its own process): the wall-clock limit turns a stall into
    an error naming the cell it was running, instead of a silent wait.
    """
    with tempfile.TemporaryDirectory(prefix="cblab_site_") as tmp:
        target, log_path = Path(tmp) / path.name, Path(tmp) / "execute.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--execute-one", str(path), "--to", str(target),
               "--timeout", str(timeout)]  # fmt: skip
        env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                            LANG_ENV: lang}  # fmt: skip
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


def build(
    out: Path, only: str | None, timeout: int, notebook_timeout: int = 240, langs: tuple[str, ...] = ("en", "zh")
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    write_plotly(out)
    problems: list[str] = []
    built = {lang: build_language(out, lang, only, timeout, notebook_timeout, problems) for lang in langs}
    if not any(built.values()):
        print(f"no course notebooks match {only!r}", file=sys.stderr)
        return 1
    (out / "index.html").write_text(index_page(built.get("en", []), languages=langs), encoding="utf-8")
    if "zh" in langs:
        (out / "zh" / "index.html").write_text(index_page(built["zh"], "zh", langs), encoding="utf-8")
    publish_docs(out)
    publish_teaching(out)
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    pages = sum(len(e) for e in built.values())
    print(f"wrote {pages} pages and index.html to {out}" + (" (Chinese ones in zh/)" if built.get("zh") else ""))
    return 1 if problems else 0


def build_language(
    out: Path, lang: str, only: str | None, timeout: int, notebook_timeout: int, problems: list[str]
) -> list[tuple[str, str, float, int]]:
    """Execute and export the course notebooks of ``lang`` into their folder of the site; returns the index's
    entries and adds what went wrong to ``problems``."""
    folder = out / LANGS[lang]
    folder.mkdir(parents=True, exist_ok=True)
    up = "../" if LANGS[lang] else ""
    exporter = offline_exporter()
    exporter.language_code = HTML_LANG[lang]  # <html lang="zh-CN">: the browser picks Simplified Chinese glyphs
    entries = []
    paths = course_notebooks(only, lang)
    total = len(paths)
    for i, path in enumerate(paths, 1):
        print(f"[{i:>2}/{total}] {path.relative_to(NOTEBOOKS)} ...", end=" ", flush=True)
        started = time.perf_counter()
        nb, why = execute_isolated(path, timeout, notebook_timeout, lang)
        if nb is None and why.startswith("stalled"):  # rare and intermittent (see execute_isolated): once more
            print(f"stalled, running it again ({why.splitlines()[0]})", end=" ", flush=True)
            nb, why = execute_isolated(path, timeout, notebook_timeout, lang)
        seconds = time.perf_counter() - started
        if nb is None:  # a failing notebook is reported, and the others are still built
            print(f"FAILED after {seconds:.1f} s", flush=True)
            problems.append(f"{path.name}: {why}")
            continue
        warning = math_warning(nb, path.name)
        if warning:
            print(f"\n  warning: {warning}", end=" ", flush=True)
        replace_widget_views(nb, lang)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title_of(nb, path.stem)}})
        page = share_plotly(rewrite_links(body), up)
        problems += check_offline(page, f"{LANGS[lang] + '/' if up else ''}{path.name}", out, up)
        (folder / f"{path.stem}.html").write_text(page, encoding="utf-8")
        animations = page.count("Plotly.addFrames(")
        print(f"{seconds:5.1f} s, {animations} animated figures", flush=True)
        entries.append((path.stem, title_of(nb, path.stem), seconds, animations))
    return entries


DOC_PAGES = ("glossary", "reading", "glossary_zh", "reading_zh")  # docs/<name>.md -> <name>.html
DOC_TITLES = {
    "glossary": "Glossary: the words the course uses",
    "reading": "Reading list: the papers behind it",
    "glossary_zh": "术语表：课程里用到的词",
    "reading_zh": "阅读清单：课程依据的论文和文章",
}


def doc_lang(name: str) -> str:
    return "zh-CN" if name.endswith("_zh") else "en"


def point_at_doc_pages(out: Path) -> None:
    """The notebook pages' links to ``docs/<name>.md`` point at the rendered ``<name>.html`` where there is one
    (``../docs/`` from a page at the root, ``../../docs/`` from a Chinese page in ``zh/``)."""
    pages = {p.stem for p in out.glob("*.html")}

    def fix(up: str, text: str) -> str:
        link = re.compile(r'href="' + re.escape(up) + r"\.\./docs/(\w+)\.md")
        return link.sub(lambda m: f'href="{up}{m[1]}.html' if m[1] in pages else m[0], text)

    for folder, up in ((out, ""), (out / "zh", "../")):
        for page in folder.glob("*.html"):
            text = page.read_text(encoding="utf-8")
            fixed = fix(up, text)
            if fixed != text:
                page.write_text(fixed, encoding="utf-8")


def add_section(index: Path, section: str) -> None:
    if index.exists():
        index.write_text(index.read_text(encoding="utf-8").replace("</body>", f"{section}</body>", 1), encoding="utf-8")


def publish_docs(out: Path) -> None:
    """Render the glossaries and reading lists (docs/<name>.md, English and Chinese) into the site, with
    GitHub-style heading anchors, point the notebook pages' links at them, and list them on each index."""
    import mistune

    def slug(text: str) -> str:
        return re.sub(r"[^\w\- ]", "", html.unescape(text).strip().lower()).replace(" ", "-")

    for name in DOC_PAGES:
        source = ROOT / "docs" / f"{name}.md"
        if not source.exists():
            continue
        body = mistune.html(source.read_text(encoding="utf-8"))
        body = re.sub(
            r"<h([1-3])>(.*?)</h\1>",
            lambda m: f'<h{m[1]} id="{slug(re.sub("<[^>]+>", "", m[2]))}">{m[2]}</h{m[1]}>',
            body,
        )
        body = re.sub(r'href="(\w+)\.md', r'href="\1.html', body)
        (out / f"{name}.html").write_text(
            f'<!doctype html>\n<html lang="{doc_lang(name)}"><head><meta charset="utf-8"><title>{name}</title>'
            f"<style>body {{ font-family: {FONTS}; max-width: 46rem; margin: 3rem auto; line-height: 1.5; "
            f"padding: 0 1rem; }}</style></head><body>\n{body}</body></html>\n",
            encoding="utf-8",
        )
    point_at_doc_pages(out)
    for index, lang, up, heading in (
        (out / "index.html", "en", "", "Reference"),
        (out / "zh" / "index.html", "zh-CN", "../", "参考"),
    ):
        links = [f'<li><a href="{up}{n}.html">{DOC_TITLES[n]}</a></li>' for n in DOC_PAGES
                 if doc_lang(n) == lang and (out / f"{n}.html").exists()]  # fmt: skip
        if links:  # list them on the first page, after the notebooks
            add_section(
                index, f'  <h2 id="reference">{heading}</h2>\n  <ul>\n    ' + "\n    ".join(links) + "\n  </ul>\n"
            )


TEACHING_PAGES = {"cheatsheet_en": "en", "cheatsheet_zh": "zh-CN", "teaching": "en", "teaching_zh": "zh-CN"}


def publish_teaching(out: Path) -> None:
    """Render the cheat sheets and lesson plans into the site, and link them and the decks (``make slides`` writes
    ``slides/``) from index.html, so a teacher finds everything for the room on the first page (the Chinese ones
    from zh/index.html too)."""
    import mistune

    links, zh_links = [], []
    for name, lang in TEACHING_PAGES.items():
        source = ROOT / "docs" / f"{name}.md"
        if not source.exists():
            continue
        body = mistune.html(source.read_text(encoding="utf-8"))
        body = re.sub(r'href="(?:\.\./notebooks/)?(\d\d_[\w-]+)\.ipynb"', r'href="\1.html"', body)
        body = re.sub(r'href="(?:\.\./notebooks/)?zh/(\d\d_[\w-]+)\.ipynb"', r'href="zh/\1.html"', body)
        body = re.sub(r'href="(\w+)\.md', r'href="\1.html', body)
        title = re.search(r"<h1>(.*?)</h1>", body)
        title = re.sub("<[^>]+>", "", title[1]) if title else name
        (out / f"{name}.html").write_text(
            f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>body {{ font-family: {FONTS}; max-width: 52rem; margin: 3rem auto; line-height: 1.5;"
            " padding: 0 1rem; } table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2rem"
            " .5rem; } pre { background: #f5f5f5; padding: .5rem; }</style></head><body>\n"
            f"{body}</body></html>\n",
            encoding="utf-8",
        )
        links.append(f'<li><a href="{name}.html">{title}</a></li>')
        if lang == "zh-CN":
            zh_links.append(f'<li><a href="../{name}.html">{title}</a></li>')
    slides = slides_item(out / "slides")
    section = f'  <h2 id="teaching">Teaching it in a room</h2>\n  <ul>\n    {slides}\n    ' + "\n    ".join(links)
    add_section(out / "index.html", f"{section}\n  </ul>\n")
    if zh_links:
        add_section(
            out / "zh" / "index.html",
            '  <h2 id="teaching">教学</h2>\n  <ul>\n    ' + "\n    ".join(zh_links) + "\n  </ul>\n",
        )


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


# CJK fonts by name, after the system's own: whatever the reader's system has (Debian's fonts-noto-cjk, macOS,
# Windows); nothing is downloaded.
FONTS = 'system-ui, sans-serif, "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei"'
INDEX_TEXT = {
    "en": {
        "html": "en",
        "title": "cblab-teach: continuous batching for LLM inference",
        "heading": "Continuous batching for LLM inference",
        "intro": "An interactive course on a compact, correct PyTorch engine. These pages are the executed notebooks, "
        "readable\n  offline; figures are interactive and animations play without a kernel. To change things and run "
        "the widgets,\n  install the course and run <code>make lab</code>.",
        "other": '中文：<a href="zh/index.html">整门课程的中文版</a>',
    },
    "zh": {
        "html": "zh-CN",
        "title": "cblab-teach：大模型推理的连续批处理",
        "heading": "大模型推理的连续批处理",
        "intro": "一门基于一个精简、正确的 PyTorch 引擎的交互式课程。这些网页是执行过的 notebook，不联网也能阅读；"
        "图表可以交互，\n  动画不需要内核也能播放。想改参数、用控件，请安装课程后运行 <code>make lab</code>。"
        "代码与英文版完全相同，讲解和图表是中文。",
        "other": 'English: <a href="../index.html">the course in English</a>',
    },
}


def index_page(
    entries: list[tuple[str, str, float, int]], lang: str = "en", languages: tuple[str, ...] = ("en",)
) -> str:
    """The course's first page in ``lang``; it links the other language's index when ``languages`` has both."""
    # A plain list: each title already starts with its number ("03 · ..."), so an <ol> would number it twice.
    text = INDEX_TEXT[lang]
    items = "\n".join(f'    <li><a href="{stem}.html">{html.escape(title)}</a></li>' for stem, title, *_ in entries)
    other = f'  <p class="languages">{text["other"]}</p>\n' if len(set(languages)) > 1 else ""
    return f"""<!doctype html>
<html lang="{text["html"]}">
<head>
  <meta charset="utf-8">
  <title>{text["title"]}</title>
  <style>
    body {{ font-family: {FONTS}; max-width: 46rem; margin: 3rem auto; line-height: 1.5; padding: 0 1rem; }}
    ul.course {{ list-style: none; padding-left: 0; }}
    li {{ margin: 0.4rem 0; }}
  </style>
</head>
<body>
  <h1>{text["heading"]}</h1>
{other}  <p>{text["intro"]}</p>
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
    parser.add_argument("--lang", choices=("en", "zh", "both"), default="both", help="the course's language(s)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    parser.add_argument("--notebook-timeout", type=int, default=240, help="seconds per notebook, start-up included")
    parser.add_argument("--execute-one", type=Path, help=argparse.SUPPRESS)  # the per-notebook process
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.execute_one:
        execute_here(args.execute_one, args.to, args.timeout)
        return
    langs = ("en", "zh") if args.lang == "both" else (args.lang,)
    raise SystemExit(build(args.out, args.only, args.timeout, args.notebook_timeout, langs))


if __name__ == "__main__":
    main()
