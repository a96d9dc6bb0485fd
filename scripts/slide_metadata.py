"""Give every cell of the course notebooks a slide type, from the course's shape, so each notebook is a deck.

Why rules and not hand-picking: the notebooks change, and a deck chosen by hand
drifts with every edit. These rules read the shape every course notebook shares
(title and objectives, the idea, the live demo, its figure, check yourself, your
turn, exercise, recap, interview corner) and give ``metadata.slideshow.slide_type``
to each cell, which RISE (``make lab``) and ``make slides`` both read.

Markdown cells, first rule that matches:

* ``# title`` and every ``## section`` (the idea, live demo, your turn, exercise,
  recap, interview corner) start a **slide**; a ``### question`` starts a **subslide**.
* ``**Check yourself...`` starts a **subslide**: the check gets its own slide.
* A cell that is one aside in parentheses, ``(...)``, goes to the speaker **notes**.
* A paragraph right before a figure is its caption: it starts a **subslide**, and the
  figure shares it.
* Any other paragraph continues the slide it follows (``-``).

Code cells:

* The set-up cell (the notebook's first code cell, or one tagged ``qa-setup``) is
  **skip**ped: it ran, and a room does not need to read its imports.
* A cell that ends in a view (a figure, a widget, a value to show; not ``print``)
  shares the slide of the short heading or caption right above it, and otherwise
  starts a **subslide** of its own; a long one (more than 15 lines) always does.
* A long cell that shows nothing: **skip** when it only defines things (helpers,
  imports, assignments), a **fragment** (revealed on the next key press) when it
  runs and prints.
* Any other cell continues its slide.

    python scripts/slide_metadata.py                 # write the metadata into notebooks/*.ipynb
    python scripts/slide_metadata.py --check         # exit 1 if a notebook lacks what the rules give
    python scripts/slide_metadata.py PATH... [--check]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SLIDE_TYPES = ("slide", "subslide", "fragment", "skip", "notes", "-")
LONG_CODE = 15  # lines: a code cell longer than this does not fit beside other cells on a slide
SHORT_TEXT = 6  # lines: a heading or caption this short leaves room for the figure under it
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign,
               ast.AnnAssign, ast.AugAssign)


def lines(cell: nbformat.NotebookNode) -> int:
    return len(cell.source.strip().splitlines())


def statements(source: str) -> list[ast.stmt] | None:
    """Top-level statements (IPython magics dropped), or None when the cell is not plain Python."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        return ast.parse(code).body
    except SyntaxError:
        return None


def ends_in_view(source: str) -> bool:
    """The cell's last statement is an expression whose value Jupyter displays (not ``print(...)``)."""
    body = statements(source)
    if not body or not isinstance(body[-1], ast.Expr):
        return False
    value = body[-1].value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return False
    return not isinstance(value, ast.Constant)  # a docstring-like string or ``...`` shows nothing worth a slide


def only_defines(source: str) -> bool:
    body = statements(source)
    return bool(body) and all(isinstance(s, DEFINITIONS) for s in body)


def heading_level(cell: nbformat.NotebookNode) -> int:
    first = cell.source.lstrip().split("\n", 1)[0]
    hashes = len(first) - len(first.lstrip("#"))
    return hashes if 0 < hashes <= 6 and first[hashes : hashes + 1] == " " else 0


def is_setup(cell: nbformat.NotebookNode, first_code: bool) -> bool:
    return first_code or "qa-setup" in cell.metadata.get("tags", [])


def is_view(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and ends_in_view(cell.source)


def markdown_type(cell: nbformat.NotebookNode, next_cell: nbformat.NotebookNode | None) -> str:
    level = heading_level(cell)
    text = cell.source.strip()
    if level in (1, 2):
        return "slide"
    if level >= 3:
        return "subslide"
    if text.startswith("**Check yourself"):
        return "subslide"
    if text.startswith("(") and text.endswith(")"):
        return "notes"
    if next_cell is not None and is_view(next_cell):
        return "subslide"
    return "-"


def code_type(cell: nbformat.NotebookNode, first_code: bool, above: tuple[nbformat.NotebookNode, str] | None) -> str:
    """``above``: the nearest cell before this one that the deck shows, with its slide type."""
    if is_setup(cell, first_code):
        return "skip"
    long = lines(cell) > LONG_CODE
    if is_view(cell):
        if long:
            return "subslide"
        if above is not None:
            prev, prev_type = above
            if prev.cell_type == "markdown" and prev_type in ("slide", "subslide") and lines(prev) <= SHORT_TEXT:
                return "-"
        return "subslide"
    if long:
        return "skip" if only_defines(cell.source) else "fragment"
    return "-"


def slide_types(nb: nbformat.NotebookNode) -> list[str]:
    """The slide type the rules give each cell, in order."""
    types: list[str] = []
    above: tuple[nbformat.NotebookNode, str] | None = None
    seen_code = False
    for i, cell in enumerate(nb.cells):
        next_cell = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        if cell.cell_type == "markdown":
            kind = markdown_type(cell, next_cell)
        elif cell.cell_type == "code":
            kind = code_type(cell, not seen_code, above)
            seen_code = True
        else:  # raw cells are not shown in a deck
            kind = "skip"
        types.append(kind)
        if kind not in ("skip", "notes"):
            above = (cell, kind)
    return types


def committed_types(nb: nbformat.NotebookNode) -> list[str | None]:
    return [c.metadata.get("slideshow", {}).get("slide_type") for c in nb.cells]


def apply(nb: nbformat.NotebookNode) -> int:
    """Write the rules' slide types into ``nb``'s cells; how many cells changed."""
    changed = 0
    for cell, kind in zip(nb.cells, slide_types(nb)):
        if cell.metadata.get("slideshow", {}).get("slide_type") != kind:
            cell.metadata.setdefault("slideshow", {})["slide_type"] = kind
            changed += 1
    return changed


def deck_length(types: list[str]) -> int:
    """Slides a presenter steps through (slides and subslides)."""
    return sum(t in ("slide", "subslide") for t in types)


def mismatches(nb: nbformat.NotebookNode) -> list[str]:
    wanted, have = slide_types(nb), committed_types(nb)
    return [f"cell {i}: has {h!r}, the rules give {w!r}" for i, (w, h) in enumerate(zip(wanted, have)) if w != h]


def course_notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/NN_*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any notebook differs")
    args = parser.parse_args(argv)
    paths = args.paths or course_notebooks()
    bad = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        types = slide_types(nb)
        if args.check:
            problems = mismatches(nb)
            if problems:
                bad += 1
                print(f"{path}: {len(problems)} cells lack the slide metadata the rules give, e.g. {problems[0]}")
            continue
        if apply(nb):
            nbformat.write(nb, path)
        print(f"{path.name:<40} {deck_length(types):3d} slides  {types.count('skip'):2d} skipped  "
              f"{types.count('fragment'):2d} fragments  {types.count('notes')} notes")
    if args.check and bad:
        print(f"{bad} notebook(s) out of date: run python scripts/slide_metadata.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
