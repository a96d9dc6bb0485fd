"""Make exercises/ from solutions/: every solution region becomes a stub that raises NotImplementedError.

In a solution notebook, a region is marked inside a code cell::

    ### BEGIN SOLUTION
    # HINT: write the decode-first planner
    ...the solution...
    ### END SOLUTION

and becomes ``raise NotImplementedError("write the decode-first planner; see the hints below")`` at the
same indentation. The message only names the task: a learner who runs the cell before thinking must not read
the answer in it, so a ``# HINT:`` that reads as code or a formula is refused (:func:`message_problems`). The
help lives in the markdown cell after the exercise cell, in three collapsible tiers (a nudge, the idea,
pseudo-code), which the learner opens one at a time.
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
DEFAULT_HINT = "write your solution here"
HINTS_BELOW = "see the hints below"
MAX_MESSAGE = 100  # characters: a stub's message names the task, it does not explain it
# What makes a stub's message read as code or a formula, each with the reason it is refused. Prose may use
# commas, semicolons, apostrophes and hyphenated words ("decode-first"); nothing else a formula needs.
CODE_SIGNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an operator, bracket, quote or backtick", re.compile(r"[\[\](){}=+*/<>%^|&~`\"\\:@!]")),
    ("a minus sign (a hyphen joins two letters)", re.compile(r"(?<![A-Za-z])-|-(?![A-Za-z])")),
    ("a digit", re.compile(r"\d")),
    ("an identifier with an underscore", re.compile(r"\w*_\w*")),
    ("a dotted name", re.compile(r"[A-Za-z_]\w*\.\w")),
    ("a CamelCase name", re.compile(r"\b[A-Z]?[a-z]+[A-Z]\w*")),
    (
        "a Python keyword used as code",
        re.compile(r"\b(?:lambda|def|elif|None|True|False|nonlocal|import|yield|assert|del)\b|\bfor \w+ in\b"),
    ),
)
RAISES = "raises-exception"
PATTERNS = ("ex*.ipynb", "capstone*.ipynb")  # the exercises, then the capstone built from them


def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in folder.glob(pattern))


def message_problems(message: str) -> list[str]:
    """Why ``message`` would give the answer away (empty when it is a plain sentence that points to the hints)."""
    found = [f"{why}: {m.group(0)!r}" for why, pattern in CODE_SIGNS if (m := pattern.search(message))]
    if len(message) > MAX_MESSAGE:
        found.append(f"longer than {MAX_MESSAGE} characters ({len(message)})")
    if not message.endswith(HINTS_BELOW):
        found.append(f"does not end with {HINTS_BELOW!r}")
    return found


def stub_message(hints: list[str]) -> str:
    """The stub's message: the ``# HINT:`` sentence (or the default), then where the help is."""
    message = f"{' '.join(hints) or DEFAULT_HINT}; {HINTS_BELOW}"
    problems = message_problems(message)
    if problems:
        raise ValueError(f"stub message {message!r} gives the answer away: {'; '.join(problems)}")
    return message


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
            out.append(f"{indent}raise NotImplementedError({json.dumps(stub_message(hints))})")
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
