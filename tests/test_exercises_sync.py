"""exercises/ is generated from solutions/: the two must never drift, and no solution may leak."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

from cblab_teach.checks import EXERCISES

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISE_DIR = REPO / "solutions", REPO / "exercises"


def _script():
    spec = importlib.util.spec_from_file_location("make_exercises", REPO / "scripts" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_exercises = _script()


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_every_exercise_has_a_solution_and_an_exercise_notebook():
    names = set(EXERCISES)
    assert {p.stem for p in SOLUTIONS.glob("ex*.ipynb")} == names
    assert {p.stem for p in EXERCISE_DIR.glob("ex*.ipynb")} == names


def test_exercises_match_what_the_script_generates():
    wanted = make_exercises.expected_files()
    assert wanted, "no solution notebooks found"
    for name, text in wanted.items():
        assert (EXERCISE_DIR / name).read_text() == text, f"exercises/{name} drifted: run scripts/make_exercises.py"
    assert make_exercises.main(["--check"]) == 0


@pytest.mark.parametrize("name", list(EXERCISES))
def test_no_solution_leaks_into_the_exercise(name):
    solution = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    exercise = nbformat.read(EXERCISE_DIR / f"{name}.ipynb", as_version=4)
    assert len(solution.cells) == len(exercise.cells)
    regions = 0
    for sol, ex in zip(_code(solution), _code(exercise)):
        regions += sol.source.count(make_exercises.BEGIN)
        assert sol.source.count(make_exercises.BEGIN) == sol.source.count(make_exercises.END)
        assert make_exercises.BEGIN not in ex.source and make_exercises.END not in ex.source
        assert ex.source.count("raise NotImplementedError(") == sol.source.count(make_exercises.BEGIN)
        body = re.findall(
            rf"{re.escape(make_exercises.BEGIN)}\n(.*?){re.escape(make_exercises.END)}", sol.source, flags=re.S
        )
        for region in body:
            for line in region.splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    assert line not in ex.source.splitlines(), f"solution line leaked: {line!r}"
    assert regions >= 1
    entry = EXERCISES[name].entry
    stub_cells = [c for c in _code(exercise) if "NotImplementedError" in c.source]
    assert any(re.search(rf"^(def|class) {entry}\b", c.source, flags=re.M) for c in stub_cells)


@pytest.mark.parametrize("name", list(EXERCISES))
def test_cells_that_call_stubs_are_tagged_and_the_check_is_asserted(name):
    exercise = nbformat.read(EXERCISE_DIR / f"{name}.ipynb", as_version=4)
    solution = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    checks = [c for c in _code(exercise) if f'check("{name}"' in c.source]
    assert checks and all("raises-exception" in c.metadata.get("tags", []) for c in checks)
    assert all("assert result" in c.source for c in checks)
    assert not any("raises-exception" in c.metadata.get("tags", []) for c in _code(solution))
    first = _code(exercise)[0]
    assert "setup_notebook()" in first.source and "raises-exception" not in first.metadata.get("tags", [])


@pytest.mark.parametrize("folder", [SOLUTIONS, EXERCISE_DIR], ids=["solutions", "exercises"])
def test_notebooks_are_committed_without_outputs(folder):
    for path in folder.glob("ex*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


@pytest.mark.parametrize("name", list(EXERCISES))
def test_notebook_links_back_to_its_course_notebook_and_ends_with_an_interview_corner(name):
    nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert f"](../notebooks/{EXERCISES[name].course}.ipynb)" in text
    assert "will be able to" in nb.cells[0].source
    assert "Interview corner" in nb.cells[-1].source and "Recap" in nb.cells[-1].source


def test_stub_regions_become_raises_with_the_hint():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    # HINT: add one\n    return x + 1\n    ### END SOLUTION\n"
    stubbed, found = make_exercises.stub_source(source)
    assert found and stubbed == 'def f(x):\n    raise NotImplementedError("add one; see the hints below")'
    stubbed, _ = make_exercises.stub_source("def g():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")
    assert make_exercises.DEFAULT_HINT in stubbed
    with pytest.raises(ValueError):
        make_exercises.stub_source("### BEGIN SOLUTION\nx = 1\n")


def test_cells_using_a_stub_or_its_results_get_tagged():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import math"),
            nbformat.v4.new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"),
            nbformat.v4.new_code_cell("y = f(2)"),
            nbformat.v4.new_code_cell("print(y + 1)"),
            nbformat.v4.new_code_cell("print(math.pi)"),
        ]
    )
    out = make_exercises.render_exercise(nb)
    tags = [c.metadata.get("tags", []) for c in out.cells]
    assert tags == [[], [], ["raises-exception"], ["raises-exception"], []]
