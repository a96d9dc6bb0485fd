"""Grading a class folder: each kind of submission gets its own row, and no bad one stops the others.

The folder holds tiny notebooks (no imports in the learner's cells, so a 5 s time
limit is generous for everyone but the one that hangs), plus the real solution and
stub notebooks of ex01, graded with a roomier limit.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cblab_teach.checks import check
from cblab_teach.checks.grade import Grade, Submission, grade_folder, grade_notebook, summary_html

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


def hand_in(folder: Path, learner: str, name: str, text: str) -> None:
    (folder / learner).mkdir(parents=True, exist_ok=True)
    (folder / learner / f"{name}.ipynb").write_text(text, encoding="utf-8")


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
    result = subprocess.run(
        [sys.executable, "-m", "cblab_teach.checks", "grade", str(folder), "--time-limit", "5", "--jobs", "2"],
        cwd=REPO,
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


def test_html_summary_has_every_cell(graded: Path) -> None:
    page = (graded / "grades.html").read_text(encoding="utf-8")
    rows = rows_of(graded / "grades.csv")
    for learner, exercise in rows:
        assert f"<th>{learner}</th>" in page and f"<th>{exercise}</th>" in page
    assert page.count('<td class="timeout"') == 1 and page.count('<td class="pass"') == 1


def test_summary_escapes_learner_text() -> None:
    page = summary_html([Grade("<b>x</b>", EX, "error", detail="<script>alert(1)</script>")], "t")
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page


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
    grade = grade_notebook(Submission("ida", EX, path), time_limit=5, check_limit=8)
    assert grade.status == "timeout" and "check" in grade.detail, grade
