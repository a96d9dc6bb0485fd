"""The learner's progress record: written by every check, shown as a course map, never able to break a check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cblab_teach
from cblab_teach.checks import EXERCISES, check
from cblab_teach.progress import ProgressWarning, load, progress_path, record_quiz, render_html, render_text

REPO = Path(__file__).resolve().parents[1]


def verify_ok(drafts, target_best):
    n = 0
    while n < len(drafts) and drafts[n] == target_best[n]:
        n += 1
    return drafts[:n] + [target_best[n]], len(drafts) - n


def verify_no_bonus(drafts, target_best):
    tokens, drop = verify_ok(drafts, target_best)
    return tokens[:-1], drop


@pytest.fixture
def record(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home" / "progress.json"
    monkeypatch.setenv("CBLAB_TEACH_PROGRESS", str(path))
    return path


def test_a_passing_check_is_recorded_and_a_later_failure_does_not_erase_it(record):
    assert not record.exists()
    assert check("ex13_speculative_verify", verify_ok, verbose=False)
    data = json.loads(record.read_text())
    entry = data["checks"]["ex13_speculative_verify"]
    assert entry["passed"] is True and entry["first_passed"]
    assert not check("ex13_speculative_verify", verify_no_bonus, verbose=False)
    entry = load()["checks"]["ex13_speculative_verify"]
    assert entry["passed"] is True and entry["last_cases"].startswith("0/")


def test_a_failing_check_is_recorded_as_tried_not_passed(record):
    check("ex13_speculative_verify", verify_no_bonus, verbose=False)
    assert load()["checks"]["ex13_speculative_verify"]["passed"] is False
    text = render_text()
    assert "[ ] ex13_speculative_verify  tried" in text
    result = check("ex13_speculative_verify", verify_no_bonus, verbose=False)
    assert f"({len(result.passed_cases)} of {result.total} cases passed)" in text, "the count says what passed"


def test_the_map_lists_notebooks_exercises_and_the_capstone_and_ticks_what_is_done(record):
    check("ex13_speculative_verify", verify_ok, verbose=False)
    text = render_text()
    assert "[x] ex13_speculative_verify  passed" in text
    assert "[ ] ex01_ragged_mask" in text and "capstone: capstone_engine" in text
    assert "00_start_here" in text
    assert f"Exercises passed: 1/{len(EXERCISES)}" in text
    # course order, not number order: notebook 02's exercise comes first (ex01's mask is taught in notebook 04)
    assert "Next: ex06_static_vs_continuous (exercises/ex06_static_vs_continuous.ipynb, taught in notebooks/02_" in text
    page = render_html()
    assert "&#9989; ex13_speculative_verify" in page and "capstone" in page
    view = cblab_teach.progress()
    assert view._repr_html_() == page and str(view) == text


def test_a_missing_file_is_an_empty_record(record):
    assert load() == {"version": 1, "checks": {}, "quiz": None}
    assert f"Exercises passed: 0/{len(EXERCISES)}" in render_text()


@pytest.mark.parametrize("garbage", [b"\x00\xff not json", b'{"checks": [1, 2]}', b'{"checks": {"ex01": 3}}', b""])
def test_a_corrupt_file_never_breaks_a_check_it_is_moved_aside_with_a_warning(record, garbage):
    record.parent.mkdir(parents=True)
    record.write_bytes(garbage)
    with pytest.warns(ProgressWarning, match="unreadable"):
        result = check("ex13_speculative_verify", verify_ok, verbose=False)
    assert result  # the verdict is the check's, whatever the file held
    assert record.with_name("progress.json.corrupt").read_bytes() == garbage
    assert load()["checks"]["ex13_speculative_verify"]["passed"] is True


def test_an_unwritable_location_is_a_warning_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CBLAB_TEACH_PROGRESS", str(blocker / "progress.json"))
    with pytest.warns(ProgressWarning, match="could not write"):
        assert check("ex13_speculative_verify", verify_ok, verbose=False)


def test_recording_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CBLAB_TEACH_PROGRESS", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert progress_path() is None
    assert check("ex13_speculative_verify", verify_ok, verbose=False)
    assert not any(tmp_path.rglob("*.json"))
    assert "recording is off" in render_text()


def test_the_default_location_is_in_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("CBLAB_TEACH_PROGRESS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert progress_path() == tmp_path / ".cblab_teach" / "progress.json"


def test_the_quiz_score_is_recorded_with_the_best_session(record):
    from cblab_teach.viz.quiz import QuizWidget

    quiz = QuizWidget("en")
    quiz.mark(True)
    quiz.mark(False)
    q = load()["quiz"]
    assert (q["known"], q["answered"]) == (1, 2) and (q["best_known"], q["best_answered"]) == (1, 2)
    record_quiz(0, 1)  # a worse later session: the best stays
    q = load()["quiz"]
    assert (q["known"], q["best_known"]) == (0, 1)
    assert "Quiz: 0/1 known" in render_text() and "best 1/2" in render_text()


def test_the_terminal_command_prints_the_map_and_resets(record):
    command = [sys.executable, "-c", "import sys; from cblab_teach.progress import main; sys.exit(main(sys.argv[1:]))"]
    check("ex13_speculative_verify", verify_ok, verbose=False)
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "[x] ex13_speculative_verify" in out and str(record) in out
    subprocess.run([*command, "--reset"], capture_output=True, text=True, timeout=120, check=True)
    assert not record.exists()
    makefile = (REPO / "Makefile").read_text()
    assert "from cblab_teach.progress import main" in makefile and "progress" in makefile.split(".PHONY:")[1]
