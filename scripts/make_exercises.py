"""Make exercises/ from solutions/: every solution region becomes a stub that raises NotImplementedError.

In a solution notebook, a region is marked inside a code cell::

    ### BEGIN SOLUTION
    # HINT: what the stub's message says (optional; a default otherwise)
    ...the solution...
    ### END SOLUTION

and becomes ``raise NotImplementedError("<hint>")`` at the same indentation.
Cells that use a stubbed name (or anything computed from one) get the
``raises-exception`` tag, so the exercise notebook still runs top to bottom
under nbval. Outputs and execution counts are stripped.

    python scripts/make_exercises.py           # write exercises/*.ipynb
    python scripts/make_exercises.py --check   # exit 1 if exercises/ differs from what would be written
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "# HINT:"
DEFAULT_HINT = "write your solution here (the explanation above says what it must do)"
RAISES = "raises-exception"
PATTERNS = ("ex*.ipynb", "capstone*.ipynb")  # the exercises, then the capstone built from them


def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in folder.glob(pattern))


def stub_source(source: str) -> tuple[str, bool]:
    """Replace every solution region of a cell's source; also say whether there was one."""
    out: list[str] = []
    region: list[str] | None = None
    indent = ""
    found = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if region is not None:
                raise ValueError(f"nested {BEGIN!r}")
            region, indent, found = [], line[: len(line) - len(line.lstrip())], True
        elif stripped == END:
            if region is None:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            hints = [r.strip()[len(HINT) :].strip() for r in region if r.strip().startswith(HINT)]
            out.append(f"{indent}raise NotImplementedError({json.dumps(' '.join(hints) or DEFAULT_HINT)})")
            region = None
        elif region is not None:
            region.append(line)
        else:
            out.append(line)
    if region is not None:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "\n".join(out), found


def _names(source: str) -> tuple[set[str], set[str]]:
    """Names a cell reads and names it binds (a regex fallback when the cell is not plain Python)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        words = set(re.findall(r"[A-Za-z_]\w*", source))
        return words, set()
    loads, stores = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else stores).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stores.add(node.name)
    return loads, stores


def _defined_at_top(source: str) -> set[str]:
    tree = ast.parse(source)
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def render_exercise(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The exercise notebook for one solution notebook."""
    nb = copy.deepcopy(solution)
    tainted: set[str] = set()  # stubbed names, and names computed from them
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        source, had_region = stub_source(cell.source)
        tags = [t for t in cell.metadata.get("tags", []) if t != RAISES]
        if had_region:
            tainted |= _defined_at_top(cell.source)
        else:
            loads, stores = _names(source)
            if loads & tainted:
                tags.append(RAISES)
                tainted |= stores
        cell.source = source
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
    return nb


def expected_files() -> dict[str, str]:
    """exercise file name -> the text it should hold."""
    out = {}
    for path in _notebooks(SOLUTIONS):
        nb = nbformat.read(path, as_version=4)
        out[path.name] = nbformat.writes(render_exercise(nb)) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift; write nothing")
    args = parser.parse_args(argv)
    wanted = expected_files()
    present = {p.name for p in _notebooks(EXERCISES)}
    drift = sorted(
        n for n, text in wanted.items() if not (EXERCISES / n).exists() or (EXERCISES / n).read_text() != text
    )
    extra = sorted(present - set(wanted))
    if args.check:
        for name in drift:
            print(f"exercises/{name} differs from solutions/{name} (run python scripts/make_exercises.py)")
        for name in extra:
            print(f"exercises/{name} has no solution notebook")
        return 1 if drift or extra else 0
    EXERCISES.mkdir(exist_ok=True)
    for name in drift:
        (EXERCISES / name).write_text(wanted[name])
        print(f"wrote exercises/{name}")
    for name in extra:
        print(f"exercises/{name} has no solution notebook (left alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
