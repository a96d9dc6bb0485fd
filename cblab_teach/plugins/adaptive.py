"""Adaptive batch sizing: steer the token budget so a step takes about ``target_step_s``.

Every decoding request gets one token per step, so the step time *is* the time
per output token (TPOT) its users see. A bigger budget means more throughput
but slower steps. After each step the plugin compares the step's time with the
target and rescales the budget (a proportional controller in log space):

    new_budget = budget * (target / observed) ** gain

With step time ``a + b * tokens`` this converges to the budget whose step
takes the target time (the error shrinks by ``a / target`` per step at
``gain=1``). It only grows the budget when the step was loaded (the budget was
all used, or requests were waiting): an idle step says nothing about a bigger one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import SchedulerPlugin

if TYPE_CHECKING:
    from ..core.engine import Engine, StepRecord


class AdaptiveBatchSizePlugin(SchedulerPlugin):
    """Adjust ``engine.budget`` toward a step-time (TPOT) target.

    ``step_time``: how a step's time is observed; by default wall time between
    ``before_step`` and ``after_step``. Pass a function of the StepRecord (a time
    model) to make runs deterministic.
    """

    def __init__(
        self,
        target_step_s: float,
        min_budget: int = 1,
        max_budget: int = 4096,
        gain: float = 1.0,
        step_time: Callable[[StepRecord], float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not target_step_s > 0:
            raise ConfigError(f"target_step_s must be > 0, got {target_step_s!r}")
        if not 1 <= min_budget <= max_budget:
            raise ConfigError(f"need 1 <= min_budget <= max_budget, got {min_budget!r} and {max_budget!r}")
        if not 0 < gain <= 1:
            raise ConfigError(f"gain must be in (0, 1], got {gain!r}")
        self.target_step_s = target_step_s
        self.min_budget = min_budget
        self.max_budget = max_budget
        self.gain = gain
        self.step_time = step_time
        self.clock = clock
        self._started = 0.0
        self.history: list[tuple[int, float]] = []  # (budget used for the step, observed seconds)

    def before_step(self, engine: Engine) -> None:
        self._started = self.clock()

    def after_step(self, engine: Engine, record: StepRecord) -> None:
        observed = self.step_time(record) if self.step_time else self.clock() - self._started
        self.history.append((record.plan.budget, observed))
        engine.budget = self.next_budget(record, observed)

    def next_budget(self, record: StepRecord, observed: float) -> int:
        plan = record.plan
        budget = plan.budget
        if observed <= 0:
            return budget
        loaded = plan.unused == 0 or bool(record.waiting)
        ratio = (self.target_step_s / observed) ** self.gain
        if ratio >= 1 and not loaded:
            return budget  # fast because there was little to do: no evidence a bigger step is fast too
        base = budget if loaded else plan.used  # the observed time belongs to the tokens actually computed
        ratio = min(max(ratio, 0.5), 2.0)  # at most halve or double per step: one noisy sample cannot swing it
        return max(self.min_budget, min(self.max_budget, round(base * ratio)))
