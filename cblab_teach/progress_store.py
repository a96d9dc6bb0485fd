"""The learner's progress record: one small JSON file of passed checks and quiz marks.

Kept apart from the course map (:mod:`cblab_teach.progress`) so that the exercise checks can record a
run without importing the map, which lists the checks: no import circle between the two.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ENV = "CBLAB_TEACH_PROGRESS"
DEFAULT = Path("~/.cblab_teach/progress.json")
VERSION = 1


class ProgressWarning(UserWarning):
    """The progress file could not be read or written; the check itself is unaffected."""


def progress_path() -> Path | None:
    """The file the record lives in; None when recording is switched off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value).expanduser() if value else DEFAULT.expanduser()


def _empty() -> dict[str, Any]:
    return {"version": VERSION, "checks": {}, "quiz": None}


def _valid(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("checks"), dict)
        and all(isinstance(v, dict) and isinstance(v.get("passed"), bool) for v in data["checks"].values())
        and (data.get("quiz") is None or isinstance(data.get("quiz"), dict))
    )


def load(path: Path | None = None) -> dict[str, Any]:
    """The record; empty when there is none yet. A corrupt file is moved aside with a warning."""
    path = progress_path() if path is None else path
    if path is None or not path.exists():
        return _empty()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if _valid(data):
        return data
    aside = path.with_name(path.name + ".corrupt")
    try:
        path.replace(aside)
        where = f"moved to {aside}"
    except OSError:
        where = "left in place"
    warnings.warn(
        f"progress file {path} was unreadable ({where}); starting a fresh record", ProgressWarning, stacklevel=2
    )
    return _empty()


def save(data: dict[str, Any], path: Path | None = None) -> bool:
    """Write the record atomically; a failure is a warning, never an error."""
    path = progress_path() if path is None else path
    if path is None:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".progress-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        return True
    except OSError as e:
        warnings.warn(f"could not write progress file {path}: {e}", ProgressWarning, stacklevel=2)
        return False


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime())


def record_check(result) -> None:
    """Note one check run (a :class:`~cblab_teach.checks.CheckResult`); a pass, once recorded, stays."""
    path = progress_path()
    if path is None:
        return
    data = load(path)
    entry = data["checks"].get(result.exercise, {"passed": False})
    entry["last_run"] = _now()
    entry["last_cases"] = f"{len(result.passed_cases)}/{result.total}"
    if result.passed:
        entry["passed"] = True
        entry.setdefault("first_passed", entry["last_run"])
    data["checks"][result.exercise] = entry
    save(data, path)


def record_quiz(known: int, answered: int) -> None:
    """Note the quiz score of this session, and keep the best one."""
    path = progress_path()
    if path is None or answered <= 0:
        return
    data = load(path)
    quiz = data.get("quiz") or {}
    quiz.update(known=int(known), answered=int(answered), updated=_now())
    if int(known) >= int(quiz.get("best_known", -1)):
        quiz["best_known"], quiz["best_answered"] = int(known), int(answered)
    data["quiz"] = quiz
    save(data, path)


def reset() -> None:
    """Forget everything (delete the file)."""
    path = progress_path()
    if path is not None and path.exists():
        path.unlink()
