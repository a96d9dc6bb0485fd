"""Checks for the exercises: run the learner's code against the library's reference.

::

    from cblab_teach.checks import check
    result = check("ex01_ragged_mask", ragged_mask)   # prints what passed, the first failure and a hint
    assert result                                     # truthy only if every case passed

From a terminal: ``python -m cblab_teach.checks`` lists the exercises and
``python -m cblab_teach.checks ex01_ragged_mask`` (or ``make check EX=...``)
checks your answer in ``exercises/ex01_ragged_mask.ipynb`` (``--solution``: the worked one).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._base import Case, CheckResult, Exercise, Failure, Mismatch, UnknownExerciseError, run_exercise

NAMES = (
    "ex01_ragged_mask",
    "ex02_decode_first_scheduler",
    "ex03_chunked_prefill",
    "ex04_paged_allocator",
    "ex05_masked_attention",
    "ex06_static_vs_continuous",
    "ex07_priority_plugin",
    "ex08_ttft_tpot",
    "ex09_lse_merge",
    "ex10_kv_memory",
    "ex11_prefix_cache",
    "ex12_preemption",
    "ex13_speculative_verify",
    "ex14_adaptive_budget",
    "ex15_sampler",
)
EXERCISES: dict[str, Exercise] = {name: import_module(f".{name}", __name__).EXERCISE for name in NAMES}
# Projects graded like exercises, built from them: check("capstone_engine", MyEngine) (see capstone/).
PROJECTS: dict[str, Exercise] = {"capstone_engine": import_module(".capstone", __name__).EXERCISE}


def get_exercise(name: str) -> Exercise:
    """The exercise called ``name``; an unknown name lists the valid ones."""
    try:
        return EXERCISES[name] if name in EXERCISES else PROJECTS[name]
    except (KeyError, TypeError):
        valid = ", ".join([*EXERCISES, *PROJECTS])
        raise UnknownExerciseError(f"unknown exercise {name!r}; valid names: {valid}") from None


def check(name: str, learner: Any, seed: int = 0, verbose: bool = True) -> CheckResult:
    """Judge ``learner`` (a function, or a class for ex04/ex07) on exercise ``name``'s fixed and randomised cases.

    ``seed`` picks the randomised cases (same seed, same cases). Never raises on the
    learner's bugs: they become failed cases in the returned :class:`CheckResult`.
    Every run is noted in the learner's local progress file (see :mod:`cblab_teach.progress`).
    """
    result = run_exercise(get_exercise(name), learner, seed=seed, verbose=verbose)
    _note_progress(result)
    return result


def _note_progress(result: CheckResult) -> None:
    """Progress is a convenience: whatever goes wrong with its file, the check's verdict stands."""
    try:
        from ..progress_store import record_check

        record_check(result)
    except Exception as e:  # noqa: BLE001 - never let the progress file break a check
        import warnings

        warnings.warn(f"progress not recorded: {e}", stacklevel=3)


__all__ = [
    "EXERCISES",
    "PROJECTS",
    "Case",
    "CheckResult",
    "Exercise",
    "Failure",
    "Mismatch",
    "UnknownExerciseError",
    "check",
    "get_exercise",
]
