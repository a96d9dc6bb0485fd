"""Exercise 14: steer the token budget toward a TPOT target.

::

    next_budget(budget, observed_tpot, target_tpot, min_budget, max_budget) -> int

Called after every step. A decoding request gains one token per step, so the
step time *is* its time per output token. The check runs the controller on a
simulated engine whose step takes ``a + b * budget`` seconds (times seeded
noise: the machine is never quiet), always with enough work queued to fill the
budget, and asks four things of the run: every budget is an int within
``[min_budget, max_budget]``; a step that was clearly too slow never raises the
budget and one clearly too fast never lowers it; the budget settles near the
one whose step takes the target (clipped to the limits); and once settled it
does not swing by more than a bound. The reference is the rule of
:class:`cblab_teach.plugins.adaptive.AdaptiveBatchSizePlugin`.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from ..core.scheduler import StepPlan
from ..plugins.adaptive import AdaptiveBatchSizePlugin
from ._base import Case, Exercise, Mismatch

STEPS = 60
SETTLE = 20  # the last SETTLE steps must sit near the ideal budget and not swing


def reference_next_budget(
    budget: int, observed_tpot: float, target_tpot: float, min_budget: int, max_budget: int
) -> int:
    """The adaptive plugin's rule on a fully loaded step."""
    plugin = AdaptiveBatchSizePlugin(target_tpot, min_budget, max_budget)
    record = SimpleNamespace(plan=StepPlan(budget=budget), waiting=[0])  # loaded: requests were waiting
    return plugin.next_budget(record, observed_tpot)


def ideal_budget(a: float, b: float, target: float, lo: int, hi: int) -> float:
    """The budget whose step takes exactly the target, within the limits."""
    return min(max((target - a) / b, lo), hi)


def simulate(
    controller, a: float, b: float, target: float, lo: int, hi: int, start: int, noise: float, seed: int
) -> list[tuple[int, float]]:
    """(budget, observed step time) per step; stops early at the first budget that is not an int."""
    rng = random.Random(seed)
    budget, trace = start, []
    for _ in range(STEPS):
        observed = (a + b * budget) * (1 + rng.uniform(-noise, noise))
        trace.append((budget, observed))
        budget = controller(budget, observed, target, lo, hi)
        if isinstance(budget, bool) or not isinstance(budget, int):
            trace.append((budget, float("nan")))
            break
    else:
        trace.append((budget, float("nan")))
    return trace


def _case(
    a: float, b: float, target: float, lo: int, hi: int, start: int, noise: float = 0.03, seed: int = 0
) -> dict[str, Any]:
    return {
        "a": a,
        "b": b,
        "target_tpot": target,
        "min_budget": lo,
        "max_budget": hi,
        "start": start,
        "noise": noise,
        "seed": seed,
    }


class AdaptiveBudget(Exercise):
    name = "ex14_adaptive_budget"
    title = "A budget controller that meets a TPOT target"
    entry = "next_budget"
    course = "10_performance_tradeoffs"
    num_random = 8
    hint = (
        "scale the budget by target / observed (the step time grows with the budget), limit the change per step "
        "(for instance to x0.5 .. x2), round to an int and clip to [min_budget, max_budget]"
    )

    @property
    def reference(self):
        return reference_next_budget

    def fixed_cases(self) -> list[Case]:
        return [
            Case("start small, grow to the target", _case(0.010, 1e-4, 0.030, 1, 4096, 8)),
            Case("start too large, shrink to the target", _case(0.010, 1e-4, 0.030, 1, 4096, 3000)),
            Case("start at the right budget: stay", _case(0.010, 1e-4, 0.030, 1, 4096, 200)),
            Case("target needs more than max_budget: settle at the max", _case(0.010, 1e-4, 0.050, 1, 128, 16)),
            Case("even min_budget is too slow: settle at the min", _case(0.040, 1e-4, 0.030, 16, 512, 256)),
            Case("noisy machine (10% jitter)", _case(0.005, 5e-5, 0.020, 1, 4096, 64, noise=0.10)),
            Case("big fixed cost per step", _case(0.025, 2e-5, 0.030, 1, 8192, 32)),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        a, b = rng.uniform(0.001, 0.02), rng.uniform(1e-5, 1e-3)
        ideal = rng.uniform(4, 1000)
        lo = rng.choice([1, 1, 4, 16])
        hi = rng.choice([256, 1024, 4096])
        return _case(
            a,
            b,
            a + b * ideal,
            lo,
            max(hi, lo),
            rng.randint(lo, max(hi, lo)),
            rng.choice([0.0, 0.03, 0.05]),
            rng.randrange(1000),
        )

    def describe(self, case: Case) -> str:
        x = case.inputs
        return (
            f"step time = {x['a']:.4g} + {x['b']:.3g} * budget (±{x['noise']:.0%}), target "
            f"{x['target_tpot']:.4g} s, limits [{x['min_budget']}, {x['max_budget']}], start {x['start']}"
        )

    def judge(self, learner, case: Case) -> Mismatch | None:
        x = case.inputs
        args = (x["a"], x["b"], x["target_tpot"], x["min_budget"], x["max_budget"], x["start"], x["noise"], x["seed"])
        trace = simulate(learner, *args)
        ideal = ideal_budget(x["a"], x["b"], x["target_tpot"], x["min_budget"], x["max_budget"])
        return _grade(trace, ideal, x)


def tolerance(ideal: float, noise: float) -> float:
    """How far from the ideal a settled budget may sit: the noise moves the right answer too."""
    return max(2.0, (0.05 + 2 * noise) * ideal)


def swing_bound(ideal: float, noise: float) -> float:
    return max(3.0, (0.1 + 4 * noise) * ideal)


def _grade(trace: list[tuple[Any, float]], ideal: float, x: dict[str, Any]) -> Mismatch | None:
    lo, hi, target, noise = x["min_budget"], x["max_budget"], x["target_tpot"], x["noise"]
    budgets = [b for b, _ in trace]
    shown = f"budgets {budgets[:12]}{' ...' if len(budgets) > 12 else ''} last {budgets[-6:]}"
    for step, b in enumerate(budgets):
        if isinstance(b, bool) or not isinstance(b, int):
            return Mismatch("an int budget every step", f"step {step}: {b!r}", "return an int (round the budget)")
        if not lo <= b <= hi:
            return Mismatch(
                f"budgets within [{lo}, {hi}]",
                f"step {step}: budget {b}; {shown}",
                "clip the new budget to [min_budget, max_budget]: the engine's limits are hard",
            )
    for step, ((b, observed), (nxt, _)) in enumerate(zip(trace, trace[1:])):
        slow, fast = observed > target * (1 + 2 * noise + 0.02), observed < target * (1 - 2 * noise - 0.02)
        if (slow and nxt > b) or (fast and nxt < b):
            how = "slower" if slow else "faster"
            return Mismatch(
                "a smaller budget after a slow step, a larger one after a fast step",
                f"step {step}: took {observed:.4g} s ({how} than {target:.4g} s), budget {b} -> {nxt}; {shown}",
                "the controller moves the wrong way: a step slower than the target needs FEWER tokens "
                "(scale by target / observed, not observed / target)",
            )
    tail = budgets[-SETTLE:]
    swing = max(tail) - min(tail)
    if swing > swing_bound(ideal, noise):
        return Mismatch(
            f"settled budgets within a band of {swing_bound(ideal, noise):.0f} around {ideal:.0f}",
            f"the last {SETTLE} budgets swing over {swing} (from {min(tail)} to {max(tail)}); {shown}",
            "the controller oscillates: a fixed large step (bang-bang) overshoots both ways; move in proportion "
            "to the error (budget * target / observed) so the steps shrink as the error does",
        )
    far = max(abs(b - ideal) for b in tail)
    if far > tolerance(ideal, noise):
        return Mismatch(
            f"the last {SETTLE} budgets within {tolerance(ideal, noise):.0f} of {ideal:.0f}",
            f"up to {far:.0f} away; {shown}",
            "the budget does not settle at the target: the ideal budget solves a + b * budget = target "
            "(within the limits); a controller that moves too little per step never gets there",
        )
    return None


EXERCISE = AdaptiveBudget()
