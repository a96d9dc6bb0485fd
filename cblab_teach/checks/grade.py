"""Grade a class: every learner's exercise notebooks, each in a fresh kernel, into ``grades.csv`` and ``grades.html``.

The folder holds one folder per learner, with the notebooks in it or, as nbgrader lays
out submissions, in one folder per assignment inside it::

    DIR/<learner>/<exercise>.ipynb                e.g. DIR/ada/ex01_ragged_mask.ipynb
    DIR/<learner>/<assignment>/<exercise>.ipynb   e.g. submitted/ada/week1/ex01_ragged_mask.ipynb

Each notebook runs top to bottom in its own kernel, in a temporary working
directory, with a time limit on its cells; then the exercise's own check runs in
that kernel against the learner's definition (the notebook's own ``check(...)``
statements are left out, so the check runs once). One notebook's crash, hang or
broken JSON becomes its row's status and never stops the others. The kernels
record no progress (``CBLAB_TEACH_PROGRESS=off``): the learners' checks are not
the teacher's.

Running learners' code is the point, so it runs with the rights of whoever runs
the grader: grade a class in a container or a throw-away account.

    python -m cblab_teach.checks grade DIR [--time-limit 300] [--check-limit 300] [--jobs 2]
"""

from __future__ import annotations

import argparse
import ast
import csv
import html
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CBLabError
from ..progress import ENV as PROGRESS_ENV
from . import get_exercise
from ._base import UnknownExerciseError, cases_text

if TYPE_CHECKING:  # imported where used: ``python -m cblab_teach.checks`` shares without_own_check, not nbformat
    import nbformat

LAYOUTS = "DIR/<learner>/<exercise>.ipynb, or nbgrader's DIR/<learner>/<assignment>/<exercise>.ipynb"


class SubmissionFolderError(CBLabError, ValueError):
    """The class folder is not laid out as the grader reads it (no notebook found, or one handed in twice)."""


STATUSES = ("pass", "fail", "error", "timeout", "invalid", "missing")
STATUS_MEANING = {
    "pass": "every case of the check passed",
    "fail": "the check ran and a case failed (or the stub is still in place)",
    "error": "the notebook raised outside a cell tagged raises-exception, never defined the answer, or its kernel died",
    "timeout": "the notebook's cells (or the check) ran past the time limit",
    "invalid": "not a notebook (broken JSON, wrong format) or not named after an exercise",
    "missing": "another learner handed this exercise in; this learner did not",
}
STATUS_COLOURS = {
    "pass": "#d7f5dd",
    "fail": "#ffe0b3",
    "error": "#ffc9c9",
    "timeout": "#e5d4ff",
    "invalid": "#dddddd",
    "missing": "#ffffff",
}


@dataclass
class Grade:
    """One row of ``grades.csv``: a learner's result on one exercise."""

    learner: str
    exercise: str
    status: str
    cases_passed: int = 0
    cases_total: int = 0
    detail: str = ""  # the first failing case (fail), or what went wrong (error, timeout, invalid)
    seconds: float = 0.0


@dataclass
class Submission:
    learner: str
    exercise: str
    path: Path


def _folders(folder: Path) -> list[Path]:
    """Sub-folders, sorted; hidden ones (``.ipynb_checkpoints``, ``.git``) hold no submissions."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_submissions(folder: Path) -> list[Submission]:
    """``folder/<learner>/<name>.ipynb`` and nbgrader's ``folder/<learner>/<assignment>/<name>.ipynb``, sorted.

    A folder with no notebook in either place is a :class:`SubmissionFolderError`, not an empty grade sheet:
    a wrong ``DIR`` should not look like a class that handed nothing in.
    """
    found = []
    for learner in _folders(folder):
        notebooks = sorted(learner.glob("*.ipynb")) + [n for a in _folders(learner) for n in sorted(a.glob("*.ipynb"))]
        first: dict[str, Path] = {}
        for notebook in notebooks:
            if notebook.stem in first:  # one row per learner and exercise: which one to grade is the teacher's call
                raise SubmissionFolderError(
                    f"{learner.name} hands in {notebook.stem} twice: {first[notebook.stem]} and {notebook}; keep one"
                )
            first[notebook.stem] = notebook
            found.append(Submission(learner.name, notebook.stem, notebook))
    if not found:
        loose = sorted(p.name for p in folder.glob("*.ipynb"))
        shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
        hint = f"; the notebooks directly in it ({shown}) need a folder per learner" if loose else ""
        raise SubmissionFolderError(f"no notebook to grade in {folder} (accepted layouts: {LAYOUTS}){hint}")
    return found


def grading_source(exercise: str, marker: str, seed: int) -> str:
    """The cell appended to a learner's notebook: run the check on their definition, print one JSON line."""
    return f"""
def _cblab_grade():
    import json
    from cblab_teach.checks import check, get_exercise

    entry = get_exercise({exercise!r}).entry
    learner = globals().get(entry)
    if learner is None:
        return {{"status": "error", "detail": "the notebook never defines " + entry}}
    result = check({exercise!r}, learner, seed={seed}, verbose=False)
    first = result.failures[0] if result.failures else None
    detail = "" if first is None else (
        f"case {{first.case}}: input {{first.inputs}}; expected {{first.expected}}; got {{first.got}}; hint {{first.hint}}"
    )
    return {{"status": "pass" if result.passed else "fail", "cases_passed": len(result.passed_cases),
            "cases_total": result.total, "detail": detail}}


print({marker!r} + __import__("json").dumps(_cblab_grade()))
"""


def calls_own_check(source: str, exercise: str) -> bool:
    """The notebook's ``check("exNN_...", ...)`` cell: the grader runs the check itself, once."""
    return re.search(rf"\bcheck\(\s*[\"']{re.escape(exercise)}[\"']", source) is not None


def _is_own_check(node: ast.AST, exercise: str) -> bool:
    """``check("exNN_...", ...)`` or ``checks.check(name="exNN_...", ...)``."""
    if not isinstance(node, ast.Call):
        return False
    if not (getattr(node.func, "id", None) == "check" or getattr(node.func, "attr", None) == "check"):
        return False
    first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
    return isinstance(first, ast.Constant) and first.value == exercise


def _bound_names(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}


def _parse_cell(source: str) -> ast.Module | None:
    """The cell as Python; IPython's own transformer turns ``%magic`` and ``!shell`` lines into calls first."""
    try:
        return ast.parse(source)
    except SyntaxError:
        pass
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(source))
    except (ImportError, SyntaxError):
        return None


def without_own_check(source: str, exercise: str) -> str:
    """The cell minus its ``check("exNN_...", ...)`` statements and the later ones that use what they bound
    (``assert result, result.summary``): the grader runs the check once, itself, and a function defined in
    the same cell stays defined. A cell that does not parse is left as it is, so its row reports the error."""
    if not calls_own_check(source, exercise):
        return source
    tree = _parse_cell(source)
    if tree is None:
        return source
    tainted: set[str] = set()
    kept = []
    for stmt in tree.body:
        loads = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if any(_is_own_check(n, exercise) for n in ast.walk(stmt)) or loads & tainted:
            tainted |= _bound_names(stmt)
        else:
            tainted -= _bound_names(stmt)
            kept.append(stmt)
    if len(kept) == len(tree.body):
        return source
    return ast.unparse(ast.Module(body=kept, type_ignores=[])) if kept else ""


def kernel_env() -> dict[str, str]:
    """The grader's environment with progress recording off: a learner's ``check()`` must not write the
    teacher's progress file (``~/.cblab_teach/progress.json``)."""
    return {**os.environ, PROGRESS_ENV: "off"}


def read_submission(path: Path) -> nbformat.NotebookNode:
    """The notebook, or ``ValueError`` saying why it is not one."""
    import nbformat

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the file: {e}") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from None
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # nbformat raises several types for a JSON file that is not a notebook
        raise ValueError(f"not a Jupyter notebook: {str(e).splitlines()[0][:200]}") from None
    return nb


def grade_notebook(
    sub: Submission, time_limit: float = 300, check_limit: float = 300, seed: int = 0, kernel: str = "python3"
) -> Grade:
    """Execute one submission in a fresh kernel and a temporary directory, then run its exercise's check there."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    started = time.perf_counter()

    def done(status: str, detail: str = "", **extra: Any) -> Grade:
        return Grade(
            sub.learner,
            sub.exercise,
            status,
            detail=one_line(detail),
            seconds=round(time.perf_counter() - started, 1),
            **extra,
        )

    try:
        get_exercise(sub.exercise)  # an exercise, or a project such as capstone_engine
    except UnknownExerciseError as e:
        return done("invalid", f"{sub.path.name} is not named after an exercise: {e}")
    try:
        nb = read_submission(sub.path)
    except ValueError as e:
        return done("invalid", str(e))

    marker = f"CBLAB-GRADE-{secrets.token_hex(8)}:"
    for c in nb.cells:  # emptied, not removed: "code cell N" in an error row stays the learner's numbering
        if c.cell_type == "code":
            c.source = without_own_check(c.source, sub.exercise)
    grading = nbformat.v4.new_code_cell(grading_source(sub.exercise, marker, seed))
    nb.cells.append(grading)
    deadline: list[float] = []
    running: list[nbformat.NotebookNode] = []

    def cell_timeout(cell: nbformat.NotebookNode) -> int:
        running[:] = [cell]
        if cell is grading:
            return max(1, round(check_limit))
        if not deadline:  # the clock starts with the first cell, not with the kernel's start-up
            deadline.append(time.monotonic() + time_limit)
        return max(1, round(deadline[0] - time.monotonic()))

    with tempfile.TemporaryDirectory(prefix=f"grade-{sub.learner}-") as workdir:
        client = NotebookClient(
            nb,
            kernel_name=kernel,
            timeout_func=cell_timeout,
            allow_errors=False,  # a cell tagged raises-exception may still raise, as in CI
            resources={"metadata": {"path": workdir}},
            startup_timeout=120,
        )
        try:
            client.execute(env=kernel_env())
        except CellTimeoutError:
            if running and running[0] is grading:
                return done("timeout", f"the check ran past {check_limit:g} s")
            return done("timeout", f"the notebook's cells ran past {time_limit:g} s")
        except DeadKernelError as e:
            return done("error", f"the kernel died: {e}")
        except CellExecutionError as e:
            where = cell_number(nb, e)
            return done("error", f"{where}{e.ename}: {e.evalue}")
        except Exception as e:  # a kernel that never starts, a broken cell type: this row only
            return done("error", f"{type(e).__name__}: {e}")

    verdict = read_verdict(grading, marker)
    if verdict is None:
        return done("error", "the check printed no result")
    return done(verdict.pop("status"), verdict.pop("detail", ""), **verdict)


def cell_number(nb: nbformat.NotebookNode, error: Exception) -> str:
    """'code cell 3: ' for the cell that raised (found by its source in the traceback message)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code[:-1], start=1):
        if cell.source.strip() and cell.source.strip() in str(error):
            return f"code cell {i}: "
    return ""


def read_verdict(cell: nbformat.NotebookNode, marker: str) -> dict[str, Any] | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            for line in output.get("text", "").splitlines():
                if line.startswith(marker):
                    verdict = json.loads(line[len(marker) :])
                    allowed = {f.name for f in fields(Grade)}
                    return {k: v for k, v in verdict.items() if k in allowed}
    return None


def one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def with_missing(grades: list[Grade]) -> list[Grade]:
    """A ``missing`` row wherever a learner lacks an exercise that someone else handed in."""
    learners = sorted({g.learner for g in grades})
    exercises = sorted({g.exercise for g in grades})
    seen = {(g.learner, g.exercise) for g in grades}
    rows = grades + [Grade(name, ex, "missing") for name in learners for ex in exercises if (name, ex) not in seen]
    return sorted(rows, key=lambda g: (g.learner, g.exercise))


def grade_folder(
    folder: Path, time_limit: float = 300, check_limit: float = 300, seed: int = 0, jobs: int = 1
) -> list[Grade]:
    """Grade every submission under ``folder`` (``jobs`` notebooks at a time); one row per learner and exercise."""
    subs = find_submissions(folder)
    if jobs <= 1 or len(subs) <= 1:
        grades = [grade_notebook(s, time_limit, check_limit, seed) for s in subs]
    else:  # separate processes: each kernel client has its own event loop, and one's trouble stays its own
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            grades = list(pool.map(grade_notebook, subs, *([x] * len(subs) for x in (time_limit, check_limit, seed))))
    return with_missing(grades)


def cases_of(grade: Grade) -> str:
    """The counts in words ("3 of 17 cases passed"), as the check prints them; empty when no case ran."""
    return cases_text(grade.cases_passed, grade.cases_total) if grade.cases_total else ""


def write_csv(grades: Iterable[Grade], path: Path) -> None:
    """One row per grade; a ``cases`` column says the counts in words beside the two numbers."""
    names = [f.name for f in fields(Grade)]
    names.insert(names.index("cases_total") + 1, "cases")
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for g in grades:
            writer.writerow(asdict(g) | {"cases": cases_of(g)})


def summary_html(grades: list[Grade], title: str) -> str:
    """Learners down, exercises across, a coloured status in each cell with its whole detail (wrapped: a
    cut-off "expected ... got ..." tells the teacher nothing), pass counts below."""
    learners = sorted({g.learner for g in grades})
    exercises = sorted({g.exercise for g in grades})
    cell = {(g.learner, g.exercise): g for g in grades}
    esc = html.escape
    head = "".join(f"<th>{esc(ex)}</th>" for ex in exercises)
    rows = []
    for name in learners:
        tds = []
        for ex in exercises:
            g = cell[(name, ex)]
            cases = f"<div class=cases>{cases_of(g)}</div>" if g.cases_total else ""
            tds.append(
                f'<td class="{g.status}">{g.status}{cases}'
                + (f"<div class=detail>{esc(g.detail)}</div>" if g.detail else "")  # whole, wrapped
                + "</td>"
            )
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(tds)}</tr>")
    passes = "".join(
        f"<td>{sum(cell[(n, ex)].status == 'pass' for n in learners)} of {len(learners)}</td>" for ex in exercises
    )
    styles = "\n".join(f"  td.{s} {{ background: {c}; }}" for s, c in STATUS_COLOURS.items())
    legend = "".join(f"<li><b>{s}</b>: {esc(m)}</li>" for s, m in STATUS_MEANING.items())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
  table {{ border-collapse: collapse; }}
  th, td {{ border: 1px solid #bbb; padding: .3rem .5rem; vertical-align: top; text-align: left; }}
  .detail {{ font-size: .75rem; color: #444; max-width: 18rem; white-space: pre-wrap; overflow-wrap: anywhere; }}
{styles}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<table>
<tr><th>learner</th>{head}</tr>
{chr(10).join(rows)}
<tr><th>passed</th>{passes}</tr>
</table>
<ul>{legend}</ul>
</body>
</html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cblab_teach.checks grade", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help=f"the class folder: {LAYOUTS}")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds a notebook's cells may run in all")
    parser.add_argument("--check-limit", type=float, default=300, help="seconds the check may run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the checks' randomised cases")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time")
    parser.add_argument("--out", type=Path, help="where grades.csv and grades.html go (default: DIR)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"{args.folder} is not a folder", file=sys.stderr)
        return 2
    try:
        grades = grade_folder(args.folder, args.time_limit, args.check_limit, args.seed, args.jobs)
    except SubmissionFolderError as e:
        print(e, file=sys.stderr)
        return 2
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    write_csv(grades, out / "grades.csv")
    (out / "grades.html").write_text(summary_html(grades, f"Grades: {args.folder.resolve().name}"), encoding="utf-8")
    for g in grades:
        print(f"{g.learner:<20} {g.exercise:<30} {g.status:<8} {g.detail[:80]}")
    counts = ", ".join(f"{sum(g.status == s for g in grades)} {s}" for s in STATUSES)
    print(f"{len(grades)} rows ({counts}); wrote {out / 'grades.csv'} and {out / 'grades.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
