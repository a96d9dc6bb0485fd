"""``python -m cblab_teach.checks [NAME]``: list the exercises, or check your answer to one.

The code is taken from your ``exercises/NAME.ipynb`` (``--solution``: the worked
``solutions/NAME.ipynb``; ``--notebook PATH``: any other): its code cells run in
order until the one that defines the exercise's entry point; checks run against
that definition. ``--reference`` checks the library's own reference instead.

``python -m cblab_teach.checks grade DIR`` grades a class folder (see ``grade.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from . import EXERCISES, check, get_exercise
from ._base import Exercise, UnknownExerciseError
from .grade import without_own_check

REPO = Path(__file__).resolve().parents[2]


def _is_cell(cell: object) -> bool:
    """A cell ``load_solution`` can read: a typed dict whose code cells hold their source as text."""
    if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
        return False
    source = cell.get("source")
    text = isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))
    return cell["cell_type"] != "code" or text


def read_cells(notebook: Path) -> list[dict[str, Any]]:
    """The notebook's cells, or ``SystemExit`` with one line naming the file: a traceback from ``json`` or a
    ``KeyError`` would hide that the learner passed the wrong file.

    Raw JSON rather than ``grade.read_submission``: that needs nbformat, which a core install lacks; this checks
    only what the loader reads."""
    try:
        data = json.loads(notebook.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SystemExit(f"{notebook}: not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"{notebook}: cannot read the file: {e}") from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise SystemExit(f'{notebook}: not a Jupyter notebook: no "cells" list')
    for i, cell in enumerate(cells):
        if not _is_cell(cell):
            raise SystemExit(f"{notebook}: not a Jupyter notebook: cell {i} is not a cell (cell_type, source)")
    return cells


def load_solution(exercise: Exercise, notebook: Path) -> Any:
    """Run the notebook's code cells up to the one defining ``exercise.entry``; return that definition.

    A ``check(...)`` in that same cell is left out: ``main`` runs the check once, with its own seed."""
    cells = read_cells(notebook)
    namespace: dict[str, Any] = {"__name__": "__solution__"}
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        code = without_own_check(code, exercise.name)  # the cell's own check(...) would run before this one
        exec(compile(code, f"{notebook.name}", "exec"), namespace)
        if re.search(rf"^(def|class) {re.escape(exercise.entry)}\b", source, flags=re.M):
            return namespace[exercise.entry]
    raise SystemExit(f"{notebook} never defines {exercise.entry!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["grade"]:  # grade a class folder: see cblab_teach/checks/grade.py
        from .grade import main as grade_main

        return grade_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m cblab_teach.checks", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="exercise name; leave out to list them")
    parser.add_argument("--notebook", type=Path, help="notebook holding the answer (default: exercises/NAME.ipynb)")
    parser.add_argument("--solution", action="store_true", help="check the worked solutions/NAME.ipynb")
    parser.add_argument("--reference", action="store_true", help="check the library's reference instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomised cases")
    args = parser.parse_args(argv)
    if not args.name:
        for name, ex in EXERCISES.items():
            print(f"{name:32s} {ex.title}  (course: notebooks/{ex.course}.ipynb)")
        return 0
    try:
        exercise = get_exercise(args.name)
    except UnknownExerciseError as e:
        print(e, file=sys.stderr)
        return 2
    if args.reference:
        learner = exercise.reference
    else:
        folder = "solutions" if args.solution else "exercises"
        notebook = args.notebook or REPO / folder / f"{exercise.name}.ipynb"
        if not notebook.exists():
            print(f"{notebook} not found; use --notebook PATH or --reference", file=sys.stderr)
            return 2
        learner = load_solution(exercise, notebook)
    return 0 if check(exercise.name, learner, seed=args.seed) else 1


if __name__ == "__main__":
    sys.exit(main())
