"""The machinery every exercise check shares: cases, a verdict per case, a printable result.

An exercise module supplies fixed cases (the classic traps, named) and
randomised ones (seeded, so a failure can be reproduced), plus a ``judge`` that
runs the learner's code on one case and compares it with the library's
reference. The runner never crashes on the learner's code: a stub that raises
``NotImplementedError`` or a bug that raises anything else becomes a failed
case with the input, what was expected and what came back.
"""

from __future__ import annotations

import contextlib
import random
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CBLabError


class UnknownExerciseError(CBLabError, KeyError):
    """``check`` was given an exercise name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class Case:
    """One input to try: ``inputs`` are what the learner's code receives."""

    name: str
    inputs: dict[str, Any]
    randomised: bool = False


@dataclass
class Mismatch:
    """What a judge returns when the learner's answer is wrong."""

    expected: Any
    got: Any
    hint: str


@dataclass
class Failure:
    """A failed case, ready to print."""

    case: str
    inputs: str
    expected: str
    got: str
    hint: str

    def __str__(self) -> str:
        return (
            f"case     : {self.case}\n"
            f"input    : {self.inputs}\n"
            f"expected : {self.expected}\n"
            f"got      : {self.got}\n"
            f"hint     : {self.hint}"
        )


def cases_text(passed: int, total: int) -> str:
    """Say "3 of 17 cases passed": a bare "3/17" after FAILED reads as three failures."""
    return f"{passed} of {total} case{'' if total == 1 else 's'} passed"


@dataclass
class CheckResult:
    """Outcome of ``check``; truthy only when every case passed, so ``assert check(...)`` works."""

    exercise: str
    passed_cases: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    not_implemented: bool = False
    todo: str = ""  # the stub's hint, when ``not_implemented``
    entry: str = ""  # the name the learner writes (``ragged_mask``), for the not-implemented message

    @property
    def passed(self) -> bool:
        return not self.failures and bool(self.passed_cases)

    @property
    def total(self) -> int:
        return len(self.passed_cases) + len(self.failures)

    @property
    def summary(self) -> str:
        if self.not_implemented:
            return f"{self.exercise}: not implemented yet -- replace the `raise NotImplementedError` with your code"
        verdict = "PASSED" if self.passed else "FAILED"
        return f"{self.exercise}: {verdict}, {cases_text(len(self.passed_cases), self.total)}"

    def __bool__(self) -> bool:
        return self.passed

    def report(self) -> str:
        if self.not_implemented:  # one message: nothing ran, so there is no case, input or expected value to show
            what = f"`{self.entry}` still raises NotImplementedError" if self.entry else "the stub is still in place"
            return f"{self.summary}\n{what}\nhint: {self.todo}"
        lines = [self.summary]
        if self.passed_cases and not self.not_implemented:
            fixed = [c for c in self.passed_cases if not c.startswith("random")]
            n_random = len(self.passed_cases) - len(fixed)
            shown = ", ".join(fixed) if fixed else "-"
            lines.append(f"passed   : {shown}" + (f" (+{n_random} randomised)" if n_random else ""))
        if self.failures:
            lines.append("first failing case:")
            lines.append(_indent(str(self.failures[0])))
            if len(self.failures) > 1:
                lines.append(f"({len(self.failures) - 1} more failing case(s) in result.failures)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()

    def __repr__(self) -> str:
        return f"CheckResult({self.summary!r})"


class Exercise(ABC):
    """One exercise: its cases, its reference, and how to judge an answer."""

    name: str = ""
    title: str = ""
    entry: str = ""  # the name the solution notebook defines for the learner's code
    course: str = ""  # the course notebook the exercise practises
    hint: str = ""  # the general hint, shown when a judge has nothing more specific
    num_random: int = 12

    @property
    @abstractmethod
    def reference(self) -> Any:
        """A correct answer, shaped exactly like the learner's (function or class)."""

    @abstractmethod
    def fixed_cases(self) -> list[Case]:
        """Named cases that capture the classic mistakes."""

    @abstractmethod
    def random_case(self, rng: random.Random) -> dict[str, Any]:
        """Inputs of one randomised case."""

    @abstractmethod
    def judge(self, learner: Any, case: Case) -> Mismatch | None:
        """Run the learner's code on ``case``; ``None`` when it matches the reference."""

    def describe(self, case: Case) -> str:
        """The case's input, short enough to read."""
        return ", ".join(f"{k}={show(v)}" for k, v in case.inputs.items())

    def cases(self, seed: int = 0) -> list[Case]:
        rng = random.Random(f"{self.name}:{seed}")
        randomised = [Case(f"random #{i}", self.random_case(rng), True) for i in range(self.num_random)]
        return self.fixed_cases() + randomised


def run_exercise(exercise: Exercise, learner: Any, seed: int = 0, verbose: bool = True) -> CheckResult:
    """Judge ``learner`` on every case; print the report when ``verbose``."""
    result = CheckResult(exercise.name, entry=exercise.entry)
    for case in exercise.cases(seed):
        try:
            torch.manual_seed(0)  # learner code that draws random numbers stays reproducible
            with single_thread():
                mismatch = exercise.judge(learner, case)
        except Exception as error:  # the learner's bug or stub: a failed case, never a crashed notebook
            stub = _not_implemented(error)
            if stub is not None:  # not a wrong answer: no answer yet, and every other case would say the same
                result.not_implemented, result.todo = True, _todo(stub)
                got = "NotImplementedError: the stub is still in place"
                result.failures.append(Failure(case.name, exercise.describe(case), "-", got, result.todo))
                break  # the report prints one message for it, not this case
            where = traceback.extract_tb(error.__traceback__)[-1]
            got = f"{type(error).__name__}: {error} (line {where.lineno} in {where.name})"
            result.failures.append(Failure(case.name, exercise.describe(case), "no exception", got, exercise.hint))
            continue
        if mismatch is None:
            result.passed_cases.append(case.name)
        else:
            got = show(mismatch.got) + _gap(mismatch.expected, mismatch.got)
            result.failures.append(
                Failure(case.name, exercise.describe(case), show(mismatch.expected), got, mismatch.hint)
            )
    if verbose:
        print(result.report())
    return result


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny-model engines on one thread: many threads on tiny matrices only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gap(expected: Any, got: Any) -> str:
    """For float tensors of one shape: how far apart they are (a 1e-6 leak is invisible at 4 decimals)."""
    if not (isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor)):
        return ""
    if expected.shape != got.shape or not (expected.is_floating_point() and got.is_floating_point()):
        return ""
    gap = (got.double() - expected.double()).abs().nan_to_num(nan=float("inf")).max().item()
    return f"\n           (max |got - expected| = {gap:.3g})"


def _not_implemented(e: BaseException) -> NotImplementedError | None:
    """The stub's NotImplementedError, even when the engine wrapped it (a plugin's becomes a PluginError)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, NotImplementedError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _todo(e: NotImplementedError) -> str:
    text = str(e).strip()
    return text if text else "replace the `raise NotImplementedError` with your code"


def _indent(text: str, pad: str = "  ") -> str:
    return "\n".join(pad + line for line in text.splitlines())


def show(value: Any, limit: int = 400) -> str:
    """A short printable form: tensors as nested lists (bool as 0/1), long text cut."""
    if isinstance(value, torch.Tensor):
        data = value.int() if value.dtype == torch.bool else value
        text = f"tensor{list(value.shape)} {_round(data.tolist())}"
    elif isinstance(value, str):
        text = value
    else:
        text = repr(_round(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, list):
        return [_round(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_round(v) for v in x)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x
