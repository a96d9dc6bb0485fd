"""Where am I? A learner's local record of passed checks, and a map of the course that shows it.

Every ``check(...)`` run and every quiz mark is recorded in one small JSON file,
``~/.cblab_teach/progress.json`` (or the path in the ``CBLAB_TEACH_PROGRESS``
environment variable; ``CBLAB_TEACH_PROGRESS=off`` records nothing). Nothing
leaves the machine, and deleting the file starts the record afresh::

    import cblab_teach
    cblab_teach.progress()          # in a notebook: the course map, done items ticked

    make progress                   # the same map in a terminal
    make progress ARGS=--reset      # forget everything (or delete the file)

A missing or corrupt file never breaks a check: a corrupt one is moved aside
(``progress.json.corrupt``) with a warning and a fresh record starts.
"""

from __future__ import annotations

import argparse
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .progress_store import (  # noqa: F401 - the record's API, under the names the course has always used
    DEFAULT,
    ENV,
    VERSION,
    ProgressWarning,
    load,
    progress_path,
    record_check,
    record_quiz,
    reset,
    save,
)

REPO = Path(__file__).resolve().parents[1]


# -- the course map ---------------------------------------------------------------------------
@dataclass
class Item:
    name: str
    kind: str  # "notebook", "exercise", "capstone"
    done: bool | None  # None: nothing to pass here
    note: str = ""
    children: tuple = ()


def course_notebooks() -> list[str]:
    folder = REPO / "notebooks"
    return sorted(p.stem for p in folder.glob("[0-9][0-9]_*.ipynb")) if folder.is_dir() else []


def course_order() -> list[tuple[str, str]]:
    """(notebook, exercise) in the order a learner meets them: each exercise right after the notebook that
    teaches its idea (its check's ``course``), then the capstone last.

    Why not the exercise numbers: they record when each exercise was written, not where its idea is taught
    (ex01's mask is taught in notebook 04, after ex06 and ex02). This is the one source of the order the
    READMEs, the course maps and each notebook's exercise cell state; ``tests/test_exercise_order.py`` holds
    them to it.
    """
    from .checks import EXERCISES, PROJECTS

    exercises = sorted(EXERCISES.items(), key=lambda item: (item[1].course, item[0]))
    return [(ex.course, name) for name, ex in exercises] + [(ex.course, name) for name, ex in PROJECTS.items()]


def exercises_after(notebook: str) -> list[str]:
    """The exercises (not the capstone) whose idea ``notebook`` teaches, in course order; [] for none."""
    from .checks import EXERCISES

    return [name for course, name in course_order() if course == notebook and name in EXERCISES]


def cases_in_words(stored: str | None) -> str:
    """The record's "3/17" as "3 of 17 cases passed": after "tried", a bare "3/17" reads as three failures."""
    passed, _, total = (stored or "").partition("/")
    return f"{passed} of {total} cases passed" if passed.isdigit() and total.isdigit() else "? cases"


def course_map(data: dict[str, Any] | None = None) -> list[Item]:
    """Notebooks in course order, each with the exercises that practise it; then the capstone."""
    from .checks import EXERCISES, PROJECTS

    data = load() if data is None else data
    checks = data["checks"]

    def exercise(name: str, kind: str) -> Item:
        entry = checks.get(name, {})
        note = (
            f"passed {entry['first_passed']}"
            if entry.get("passed")
            else (f"tried {entry['last_run']} ({cases_in_words(entry.get('last_cases'))})" if entry else "")
        )
        return Item(name, kind, bool(entry.get("passed")), note)

    by_course: dict[str, list[str]] = {}
    for course, name in course_order():
        if name in EXERCISES:
            by_course.setdefault(course, []).append(name)
    notebooks = course_notebooks()
    items = []
    for nb in notebooks + sorted(set(by_course) - set(notebooks)):
        children = tuple(exercise(n, "exercise") for n in by_course.get(nb, []))
        done = all(c.done for c in children) if children else None
        items.append(Item(nb, "notebook", done, "" if nb in notebooks else "(notebook not here)", children))
    items += [exercise(name, "capstone") for name in PROJECTS]
    return items


def _next_step(items: list[Item]) -> str:
    """The first exercise not passed, in course order (not number order), then the capstone."""
    taught = {c.name: (c, item.name) for item in items for c in item.children}
    for name in (name for _, name in course_order() if name in taught):
        child, notebook = taught[name]
        if not child.done:
            return f"{name} (exercises/{name}.ipynb, taught in notebooks/{notebook}.ipynb)"
    for item in items:
        if item.kind == "capstone" and not item.done:
            return f"the capstone (exercises/{item.name}.ipynb)"
    return "nothing: every exercise and the capstone are done"


def _quiz_line(data: dict[str, Any]) -> str:
    q = data.get("quiz")
    if not q:
        return "Quiz: not taken yet (notebooks/18_interview_review_en.ipynb)"
    return (
        f"Quiz: {q['known']}/{q['answered']} known in the last session ({q.get('updated', '?')}), "
        f"best {q.get('best_known', q['known'])}/{q.get('best_answered', q['answered'])}"
    )


def _counts(items: list[Item]) -> tuple[int, int]:
    exercises = [c for i in items for c in i.children]
    return sum(bool(c.done) for c in exercises), len(exercises)


def render_text(data: dict[str, Any] | None = None) -> str:
    data = load() if data is None else data
    items = course_map(data)
    mark = {True: "[x]", False: "[ ]", None: " - "}
    done, total = _counts(items)
    where = progress_path()
    lines = [f"Course progress  ({where if where else 'recording is off'})", ""]
    for item in items:
        label = "capstone: " + item.name if item.kind == "capstone" else item.name
        lines.append(f"{mark[item.done]} {label}  {item.note}".rstrip())
        for child in item.children:
            lines.append(f"      {mark[child.done]} {child.name}  {child.note}".rstrip())
    lines += ["", f"Exercises passed: {done}/{total}", _quiz_line(data), f"Next: {_next_step(items)}"]
    return "\n".join(lines)


def render_html(data: dict[str, Any] | None = None) -> str:
    data = load() if data is None else data
    items = course_map(data)
    mark = {True: "&#9989;", False: "&#11036;", None: "&#183;"}
    rows = []
    for item in items:
        label = f"<b>capstone</b>: {item.name}" if item.kind == "capstone" else f"<b>{html.escape(item.name)}</b>"
        rows.append(f"<tr><td>{mark[item.done]}</td><td>{label}</td><td>{html.escape(item.note)}</td></tr>")
        for child in item.children:
            rows.append(
                f"<tr><td></td><td>{mark[child.done]} {html.escape(child.name)}</td>"
                f"<td>{html.escape(child.note)}</td></tr>"
            )
    done, total = _counts(items)
    where = html.escape(str(progress_path() or "recording is off"))
    return (
        f"<div class='cblab-progress'><p><b>Course progress</b> <small>({where})</small></p>"
        f"<table>{''.join(rows)}</table>"
        f"<p>Exercises passed: {done}/{total}<br>{html.escape(_quiz_line(data))}<br>"
        f"Next: {html.escape(_next_step(items))}</p></div>"
    )


class ProgressView:
    """What ``cblab_teach.progress()`` returns: HTML in a notebook, text in a terminal."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.items = course_map(data)

    def _repr_html_(self) -> str:
        return render_html(self.data)

    def __str__(self) -> str:
        return render_text(self.data)

    __repr__ = __str__


def progress() -> ProgressView:
    """The course map with what you have done (read from the local progress file)."""
    return ProgressView(load())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make progress ARGS=...", description=__doc__.splitlines()[0])
    parser.add_argument("--reset", action="store_true", help="delete the progress file")
    args = parser.parse_args(argv)
    if args.reset:
        reset()
        print(f"progress reset ({progress_path()})")
        return 0
    print(render_text())
    return 0
