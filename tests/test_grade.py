"""Grading a class folder: each kind of submission gets its own row, and no bad one stops the others.

The folder holds tiny notebooks (no imports in the learner's cells, so a 5 s time
limit is generous for everyone but the one that hangs), in both layouts the grader
reads (a folder per learner, and nbgrader's folder per assignment inside it), plus
the real solution and stub notebooks of ex01, graded with a roomier limit. The
grader runs with a teacher's progress file of its own, which must stay untouched.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cblab_teach.checks import check, get_exercise
from cblab_teach.checks.grade import (
    Grade,
    Submission,
    SubmissionFolderError,
    find_submissions,
    grade_folder,
    grade_notebook,
    main,
    summary_html,
    without_own_check,
    write_csv,
)
from cblab_teach.progress import ENV as PROGRESS_ENV

REPO = Path(__file__).resolve().parents[1]
EX = "ex01_ragged_mask"

pytestmark = pytest.mark.timeout(300)

CORRECT = """
def ragged_mask(seq_ids, positions, key_seq_ids, key_positions):
    same = seq_ids[:, None] == key_seq_ids[None, :]
    return same & (key_positions[None, :] <= positions[:, None])
"""
WRONG = """
def ragged_mask(seq_ids, positions, key_seq_ids, key_positions):
    return seq_ids[:, None] == key_seq_ids[None, :]   # forgets causality
"""


def wrong_mask(seq_ids, positions, key_seq_ids, key_positions):
    return seq_ids[:, None] == key_seq_ids[None, :]


def notebook(*sources: str) -> str:
    return nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]))


OWN_CHECK = f'\nresult = check("{EX}", ragged_mask)\nassert result, result.summary\nprint("checked")'


def hand_in(folder: Path, learner: str, name: str, text: str) -> None:
    """``learner`` may be ``name/assignment``: nbgrader's layout."""
    (folder / learner).mkdir(parents=True, exist_ok=True)
    (folder / learner / f"{name}.ipynb").write_text(text, encoding="utf-8")


def teacher_progress(folder: Path) -> Path:
    """Where the grader's own progress file is pointed (CBLAB_TEACH_PROGRESS) while it grades ``folder``."""
    return folder.parent / f"{folder.name}-teacher" / "progress.json"


def rows_of(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return {(r["learner"], r["exercise"]): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("class")
    hand_in(folder, "ada", EX, notebook("x = 1", CORRECT))
    hand_in(folder, "bob", EX, notebook(WRONG, f'check("{EX}", ragged_mask)  # the grader runs its own check'))
    hand_in(folder, "carol", EX, notebook("raise RuntimeError('learner bug in setup')", CORRECT))
    hand_in(folder, "dan", EX, notebook("import time\nwhile True:\n    time.sleep(0.05)", CORRECT))
    hand_in(folder, "eve", EX, '{"cells": [ {"cell_type": "code", ')  # cut off mid-file
    hand_in(folder, "fay", EX, notebook("import os\nos._exit(3)", CORRECT))  # the kernel dies
    hand_in(folder, "gus", EX, json.dumps({"hello": "not a notebook"}))
    hand_in(folder, "gus", "my_notes", notebook("x = 1"))
    hand_in(folder, "hal", EX, notebook("x = 1"))  # never defines ragged_mask
    hand_in(folder, "ada", "ex02_decode_first_scheduler", "not json at all")
    hand_in(folder, "ivy", EX, notebook(CORRECT + OWN_CHECK))  # one cell
    hand_in(folder, "kim", EX, notebook(WRONG + OWN_CHECK))
    hand_in(folder, "jon/week1", EX, notebook(CORRECT))  # nbgrader: submitted/<learner>/<assignment>/
    env = {**os.environ, PROGRESS_ENV: str(teacher_progress(folder))}  # as if the teacher's default file
    result = subprocess.run(
        [sys.executable, "-m", "cblab_teach.checks", "grade", str(folder), "--time-limit", "5", "--jobs", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_each_submission_gets_its_own_status(graded: Path) -> None:
    rows = rows_of(graded / "grades.csv")
    status = {key: r["status"] for key, r in rows.items()}
    assert status[("ada", EX)] == "pass"
    assert status[("bob", EX)] == "fail"
    assert status[("carol", EX)] == "error"
    assert status[("dan", EX)] == "timeout"
    assert status[("eve", EX)] == "invalid"
    assert status[("fay", EX)] == "error"
    assert status[("gus", EX)] == "invalid"
    assert status[("gus", "my_notes")] == "invalid"
    assert status[("hal", EX)] == "error"
    assert status[("ada", "ex02_decode_first_scheduler")] == "invalid"
    assert status[("ivy", EX)] == "pass"  # defined in the cell that also calls check: still defined
    assert status[("kim", EX)] == "fail"  # its check and the failing assert on it were left out, not run
    assert status[("jon", EX)] == "pass"  # nbgrader's layout, graded under the learner's name
    # everyone without an ex02 notebook is listed as missing it, not silently dropped
    assert status[("bob", "ex02_decode_first_scheduler")] == "missing"


def test_rows_say_why(graded: Path) -> None:
    rows = rows_of(graded / "grades.csv")
    ada = rows[("ada", EX)]
    assert int(ada["cases_passed"]) == int(ada["cases_total"]) > 0 and ada["detail"] == ""
    expected = check(EX, wrong_mask, verbose=False)  # the same wrong answer, judged in this process
    bob = rows[("bob", EX)]
    assert int(bob["cases_passed"]) == len(expected.passed_cases) < int(bob["cases_total"]) == expected.total
    assert bob["detail"].startswith(f"case {expected.failures[0].case}:")
    assert "RuntimeError: learner bug in setup" in rows[("carol", EX)]["detail"]
    assert "5 s" in rows[("dan", EX)]["detail"]
    assert "not valid JSON" in rows[("eve", EX)]["detail"]
    assert "kernel died" in rows[("fay", EX)]["detail"]
    assert "not a Jupyter notebook" in rows[("gus", EX)]["detail"]
    assert "not named after an exercise" in rows[("gus", "my_notes")]["detail"]
    assert "never defines ragged_mask" in rows[("hal", EX)]["detail"]
    assert rows[("kim", EX)]["detail"].startswith("case ")  # the first failing case, not an AssertionError


def test_grading_leaves_the_teachers_progress_file_alone(graded: Path) -> None:
    """Every learner's check ran in a kernel started by the grader; none of them may write the teacher's record."""
    assert (graded / "grades.csv").exists()
    assert not teacher_progress(graded).exists(), teacher_progress(graded).read_text(encoding="utf-8")
    assert not teacher_progress(graded).parent.exists()


def test_html_summary_has_every_cell(graded: Path) -> None:
    page = (graded / "grades.html").read_text(encoding="utf-8")
    rows = rows_of(graded / "grades.csv")
    for learner, exercise in rows:
        assert f"<th>{learner}</th>" in page and f"<th>{exercise}</th>" in page
    statuses = [r["status"] for r in rows.values()]
    assert page.count('<td class="timeout"') == statuses.count("timeout") == 1
    assert page.count('<td class="pass"') == statuses.count("pass") == 3


def test_summary_escapes_learner_text() -> None:
    page = summary_html([Grade("<b>x</b>", EX, "error", detail="<script>alert(1)</script>")], "t")
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page


LONG_DETAIL = (
    "case causal_two_requests: input {'lengths': [3, 2], 'positions': [[0, 1, 2], [0, 1]]}; expected "
    "[[True, False, False], [True, True, False]]; got [[True, True, True], [True, True, True]]; hint a query "
    "must not read a key_position after its own: check causality_at_the_end"
)


def test_the_summary_shows_the_whole_first_failure() -> None:
    """grades.html used to cut the detail at 160 characters, mid-word, before "expected", "got" or the hint."""
    page = summary_html([Grade("bob", EX, "fail", 3, 17, detail=LONG_DETAIL)], "t")
    assert html.escape(LONG_DETAIL) in page
    assert re.search(r"\.detail \{[^}]*white-space: pre-wrap", page), "the detail wraps instead of running off"


def test_counts_say_how_many_passed(tmp_path: Path) -> None:
    """A bare "3/17" after "fail" reads as three failures: the summary and the CSV say "3 of 17 cases passed"."""
    grades = [Grade("bob", EX, "fail", 3, 17, detail="case x"), Grade("ada", EX, "pass", 17, 17)]
    page = summary_html(grades, "t")
    assert "3 of 17 cases passed" in page and "17 of 17 cases passed" in page and "3/17" not in page
    write_csv(grades, tmp_path / "grades.csv")
    rows = rows_of(tmp_path / "grades.csv")
    assert rows[("bob", EX)]["cases"] == "3 of 17 cases passed"
    assert rows[("bob", EX)]["cases_passed"] == "3" and rows[("bob", EX)]["cases_total"] == "17"
    assert rows[("ada", EX)]["cases"] == "17 of 17 cases passed"
    write_csv([Grade("cy", EX, "error", detail="boom")], tmp_path / "errors.csv")
    assert rows_of(tmp_path / "errors.csv")[("cy", EX)]["cases"] == ""  # nothing ran: no count to state


def test_the_course_notebooks_grade_as_expected(tmp_path: Path) -> None:
    """The real solution passes (its own check cell left out); the untouched stub fails as not implemented."""
    for folder in ("solutions", "exercises"):
        (tmp_path / folder).mkdir()
        shutil.copy(REPO / folder / f"{EX}.ipynb", tmp_path / folder / f"{EX}.ipynb")
    grades = grade_folder(tmp_path, time_limit=240, check_limit=240, jobs=2)
    by_learner = {g.learner: g for g in grades}
    assert by_learner["solutions"].status == "pass", by_learner["solutions"]
    stub = by_learner["exercises"]
    assert stub.status == "fail" and "NotImplementedError" in stub.detail, stub


def test_a_check_that_hangs_is_a_timeout(tmp_path: Path) -> None:
    path = tmp_path / f"{EX}.ipynb"
    path.write_text(notebook("def ragged_mask(*args, **kwargs):\n    while True:\n        pass"), encoding="utf-8")
    grade = grade_notebook(Submission("ida", EX, path), time_limit=5, check_limit=3)
    assert grade.status == "timeout" and "check" in grade.detail, grade


def test_find_submissions_reads_both_layouts(tmp_path: Path) -> None:
    hand_in(tmp_path, "ada", EX, "{}")
    hand_in(tmp_path, "bob/assignment1", EX, "{}")  # nbgrader: <learner>/<assignment>/<exercise>.ipynb
    hand_in(tmp_path, "bob/assignment2", "ex02_decode_first_scheduler", "{}")
    hand_in(tmp_path, "bob/.ipynb_checkpoints", "ex03_chunked_prefill", "{}")  # hidden: not a submission
    hand_in(tmp_path, ".git", EX, "{}")
    found = [(s.learner, s.exercise, s.path.relative_to(tmp_path).as_posix()) for s in find_submissions(tmp_path)]
    assert found == [
        ("ada", EX, f"ada/{EX}.ipynb"),
        ("bob", EX, f"bob/assignment1/{EX}.ipynb"),
        ("bob", "ex02_decode_first_scheduler", "bob/assignment2/ex02_decode_first_scheduler.ipynb"),
    ]


def test_an_exercise_handed_in_twice_is_refused_by_name(tmp_path: Path) -> None:
    hand_in(tmp_path, "bob/week1", EX, "{}")
    hand_in(tmp_path, "bob/week2", EX, "{}")
    with pytest.raises(SubmissionFolderError, match=f"bob hands in {EX} twice"):
        find_submissions(tmp_path)


@pytest.mark.parametrize("layout", ["empty", "loose notebooks", "too deep"])
def test_a_folder_without_notebooks_says_so_instead_of_an_empty_sheet(tmp_path: Path, layout: str, capsys) -> None:
    folder = tmp_path / "submitted"
    folder.mkdir()
    if layout == "loose notebooks":
        (folder / f"{EX}.ipynb").write_text(notebook(CORRECT), encoding="utf-8")
    elif layout == "too deep":
        hand_in(folder, "ada/course/week1", EX, notebook(CORRECT))
    with pytest.raises(SubmissionFolderError, match="no notebook to grade in"):
        grade_folder(folder)
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "DIR/<learner>/<exercise>.ipynb" in err
    assert "DIR/<learner>/<assignment>/<exercise>.ipynb" in err
    assert (f"({EX}.ipynb) need a folder per learner" in err) == (layout == "loose notebooks"), err
    assert not (folder / "grades.csv").exists() and not (folder / "grades.html").exists()


def test_own_check_statements_are_left_out_and_definitions_kept() -> None:
    cell = (
        "import math\n"
        "def ragged_mask(a, b):\n    return a & b\n"
        f'result = check("{EX}", ragged_mask)\n'
        "assert result, result.summary\n"
        "print(result.passed)\n"
        f'checks.check(name="{EX}", learner=ragged_mask)\n'
        'check("ex02_decode_first_scheduler", plan_step)\n'  # another exercise's check: not this grader's
        "result = 3\nprint(result)\n"  # rebound: used again from here on
    )
    kept = without_own_check(cell, EX)
    namespace: dict = {"check": lambda *a, **k: namespace.setdefault("other", a[0]), "plan_step": None}
    exec(kept, namespace)
    assert namespace["ragged_mask"](6, 3) == 2 and "math" in namespace and namespace["result"] == 3
    assert namespace["other"] == "ex02_decode_first_scheduler"
    assert EX not in kept and "assert" not in kept and "result.passed" not in kept, kept
    assert without_own_check(f'result = check("{EX}", ragged_mask)\nassert result, result.summary', EX) == ""
    untouched = "x = 1  # no check here\n"
    assert without_own_check(untouched, EX) == untouched
    broken = f'def ragged_mask(:\ncheck("{EX}", ragged_mask)'  # left as it is: the row reports the SyntaxError
    assert without_own_check(broken, EX) == broken


def test_make_check_reads_a_definition_from_the_cell_that_also_checks_it(tmp_path: Path, monkeypatch) -> None:
    """``make check`` (load_solution) runs cells up to the definition: that cell's failing check is not run there."""
    from cblab_teach.checks.__main__ import load_solution
    from cblab_teach.checks.__main__ import main as check_main

    monkeypatch.setenv(PROGRESS_ENV, "off")
    path = tmp_path / f"{EX}.ipynb"
    path.write_text(notebook("from cblab_teach.checks import check", WRONG + OWN_CHECK), encoding="utf-8")
    learner = load_solution(get_exercise(EX), path)  # the cell's `assert result` would raise here if it ran
    assert learner.__name__ == "ragged_mask" and not check(EX, learner, verbose=False)
    assert check_main([EX, "--notebook", str(path)]) == 1  # judged once, by main: a fail, not a crash
