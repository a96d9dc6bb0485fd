"""Exercises come in course order: each right after the notebook that teaches its idea, said alike everywhere.

The exercise numbers record when each exercise was written, not where its idea is taught: ex01's
mask is notebook 04's idea, yet notebook 00 once sent a new learner there first and the README said
"do them in order". The order has one source, each check's ``course`` read through
``cblab_teach.progress.course_order()``, and every place that names an exercise is held to it here:
the course maps (notebooks/README.md and notebook 00), the "after notebook NN" lists (README.md,
notebooks/README.md, exercises/README.md), each notebook's exercise cell, and the progress map's "Next".
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from cblab_teach.checks import EXERCISES, PROJECTS
from cblab_teach.progress import course_order, exercises_after, render_text

ROOT = Path(__file__).resolve().parents[1]
COURSE = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if re.match(r"\d\d_", p.name))
EXERCISE_LINK = re.compile(r"\]\(\.\./exercises/(ex\d\d_\w+)\.ipynb\)")
CELL = re.compile(r"(?<!\\)\|")  # a table cell boundary (an escaped \| inside a cell is text)


def short(name: str) -> str:
    return name[:4] if re.match(r"ex\d\d_", name) else name.split("_")[0]  # ex06_static... -> ex06; capstone


def expected_column() -> dict[str, set[str]]:
    """Notebook number -> what its row's exercise column must name: the exercises it teaches, and the capstone
    at the notebook whose proof the capstone is held to."""
    wanted: dict[str, set[str]] = {}
    for course, name in course_order():
        wanted.setdefault(course[:2], set()).add(short(name))
    return wanted


def table_problems(markdown: str) -> list[str]:
    """Each course-map row whose exercise column disagrees with the checks' ``course``."""
    rows = [CELL.split(line.strip())[1:-1] for line in markdown.splitlines() if line.startswith("|")]
    header = next((r for r in rows if "exercise" in [c.strip() for c in r]), None)
    if header is None:
        return ["no table with an 'exercise' column"]
    col = [c.strip() for c in header].index("exercise")
    wanted, problems, seen = expected_column(), [], set()
    for row in rows:
        number = row[0].strip()
        if not re.fullmatch(r"\d\d", number):
            continue
        seen.add(number)
        named = set(re.findall(r"\bex\d\d\b|\bcapstone\b", row[col]))
        if named != wanted.get(number, set()):
            problems.append(
                f"row {number}: names {sorted(named)}, its notebook teaches {sorted(wanted.get(number, []))}"
            )
    problems += [f"no row for notebook {n}, which teaches {sorted(wanted[n])}" for n in sorted(set(wanted) - seen)]
    return problems


def after_lists(text: str) -> list[tuple[str, list[str]]]:
    """Each "after notebook NN: ..." with the exercises named up to the next one (or the capstone, or the
    paragraph's end), in the order written."""
    found = []
    heads = list(re.finditer(r"after\s+notebook\s+(\d\d)", text))
    for head, nxt in zip(heads, heads[1:] + [None]):
        segment = text[head.end() : nxt.start() if nxt else len(text)]
        segment = re.split(r"capstone|\n\s*\n|\n\d\. ", segment)[0]
        found.append((head.group(1), [f"ex{n}" for n in re.findall(r"\bex(\d\d)", segment)]))
    return found


def expected_after() -> list[tuple[str, list[str]]]:
    order: list[tuple[str, list[str]]] = []
    for course, name in course_order():
        if name in EXERCISES:
            if order and order[-1][0] == course[:2]:
                order[-1][1].append(short(name))
            else:
                order.append((course[:2], [short(name)]))
    return order


def exercise_cell(path: Path) -> str | None:
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("## Exercise")]
    return cells[0] if cells else None


def next_after(stem: str) -> str | None:
    """The first exercise a learner meets after notebook ``stem`` (None after the last one)."""
    return next((name for course, name in course_order() if name in EXERCISES and course > stem), None)


def cell_problems(stem: str, cell: str) -> list[str]:
    """A notebook's exercise cell names its own exercises; any other exercise it names comes with the notebook
    that teaches it; a notebook without its own names the next one."""
    linked = EXERCISE_LINK.findall(cell)
    own = exercises_after(stem)
    problems = [f"does not link its own {name}" for name in own if name not in linked]
    for name in dict.fromkeys(linked):
        if name not in EXERCISES:
            problems.append(f"links {name}, which has no check in cblab_teach/checks")
            continue
        where = EXERCISES[name].course
        if where != stem and not re.search(rf"\bnotebook {where[:2]}\b|{where}\.ipynb", cell):
            problems.append(f"links {name} without saying it is taught in notebook {where[:2]}")
    following = next_after(stem)
    if not own and following is not None and following not in linked:
        problems.append(f"has no exercise of its own and does not name the next one, {following}")
    return problems


# -- the source of the order ----------------------------------------------------------------------------------------
def test_the_order_follows_the_notebooks_that_teach_each_idea() -> None:
    order = course_order()
    assert sorted(name for _, name in order) == sorted([*EXERCISES, *PROJECTS]), "every exercise once"
    numbers = [course[:2] for course, name in order if name in EXERCISES]
    assert numbers == sorted(numbers), "exercises follow the notebooks"
    assert order[-1][1] in PROJECTS, "the capstone comes last, after every exercise"
    stems = {p.stem for p in COURSE}
    assert {course for course, _ in order} <= stems, "each check's course is a notebook of the course"
    # the exercise numbers are not the course order: this is why the order has to be stated at all
    assert [name for _, name in order][0] != min(EXERCISES)


def test_the_checkers_catch_the_old_number_order() -> None:
    old_row = (
        "| # | notebook | idea | exercise |\n|---|---|---|---|\n| 00 | [start](00_start_here.ipynb) | x | ex01 |\n"
    )
    assert any("row 00" in p for p in table_problems(old_row))
    assert after_lists("Do them in order;") == []
    assert cell_problems(
        "00_start_here", "## Exercise\n\nThe first: [exercise 01](../exercises/ex01_ragged_mask.ipynb)."
    )
    ok = "## Exercise\n\n[exercise 06](../exercises/ex06_static_vs_continuous.ipynb), after notebook 02."
    assert cell_problems("00_start_here", ok) == []
    last = max(course for course, name in course_order() if name in EXERCISES)
    assert next_after(last) is None, "no exercise comes after the last one"
    assert cell_problems("99_after_the_last", "## Exercise\n\nBuild the capstone.") == []  # nothing left to name


# -- every place that names the order ----------------------------------------------------------------------------------
def test_the_course_map_names_each_notebooks_exercises() -> None:
    assert table_problems((ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")) == []


def test_notebook_00s_course_map_names_each_notebooks_exercises() -> None:
    nb = nbformat.read(ROOT / "notebooks" / "00_start_here.ipynb", as_version=4)
    tables = [c.source for c in nb.cells if c.cell_type == "markdown" and "| exercise |" in c.source]
    assert len(tables) == 1
    assert table_problems(tables[0]) == []


@pytest.mark.parametrize("path", ["README.md", "notebooks/README.md", "exercises/README.md"])
def test_each_after_notebook_list_is_the_course_order(path: str) -> None:
    assert after_lists((ROOT / path).read_text(encoding="utf-8")) == expected_after()


@pytest.mark.parametrize("path", COURSE, ids=[p.stem[:2] for p in COURSE])
def test_each_notebook_names_its_exercise_and_where_others_are_taught(path: Path) -> None:
    cell = exercise_cell(path)
    if cell is None:
        assert exercises_after(path.stem) == [], f"{path.name} teaches an exercise's idea but has no exercise cell"
        return
    assert cell_problems(path.stem, cell) == []


def test_notebook_00_sends_a_new_learner_to_the_first_exercise_in_course_order() -> None:
    cell = exercise_cell(ROOT / "notebooks" / "00_start_here.ipynb")
    first = next(name for _, name in course_order() if name in EXERCISES)
    assert EXERCISE_LINK.findall(cell)[0] == first


def test_progress_names_the_next_exercise_in_course_order(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CBLAB_TEACH_PROGRESS", str(tmp_path / "progress.json"))
    names = [name for _, name in course_order()]
    for done in (0, 3, len(names) - 1):
        data = {"version": 1, "checks": {n: {"passed": True, "first_passed": "x"} for n in names[:done]}, "quiz": None}
        nxt = next(line for line in render_text(data).splitlines() if line.startswith("Next:"))
        assert nxt.split()[1] == names[done] or (names[done] in PROJECTS and "capstone" in nxt), nxt
