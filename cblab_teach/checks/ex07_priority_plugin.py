"""Exercise 7: priority admission as a :class:`SchedulerPlugin`, checked on a real engine.

The engine's FCFS scheduler admits from ``engine.waiting`` in arrival order, as
many as there are free slots (``min(max_running, budget) - len(running)``).
A plugin cannot change that rule, but it controls the rule's input: in
``before_step`` it orders ``engine.waiting`` by priority and keeps only as many
requests as can be admitted now, holding the rest back; in ``after_step`` it
returns them to the queue. The check runs the same arrivals twice -- the
learner's plugin on an FCFS engine, and the engine's own ``policy="priority"``
-- and compares who is admitted at every step.
"""

from __future__ import annotations

import random
from typing import Any

from ..core.config import EngineConfig
from ..core.engine import Engine
from ..plugins.base import SchedulerPlugin
from ._base import Case, Exercise, Mismatch
from .ex06_static_vs_continuous import tiny_model

MAX_STEPS = 400


class ReferencePriorityAdmission(SchedulerPlugin):
    """Priority admission on an FCFS engine: expose only the requests that should be admitted now."""

    def __init__(self) -> None:
        self.held: list = []

    def before_step(self, engine) -> None:
        free = max(0, min(engine.config.max_running, engine.budget) - len(engine.running))
        queue = sorted(engine.waiting, key=lambda r: (r.priority, r.arrival))
        engine.waiting[:] = queue[:free]
        self.held = queue[free:]

    def after_step(self, engine, record) -> None:
        engine.waiting.extend(self.held)
        self.held = []


def run_arrivals(arrivals: list[tuple[int, int, int, int]], max_running: int, policy: str, plugins=()) -> Engine:
    """Add each ``(arrival_step, prompt_len, new_tokens, priority)`` before its step; run to the end."""
    engine = Engine(
        tiny_model(),
        EngineConfig(max_tokens_per_step=64, prefill_chunk_size=16, max_running=max_running, policy=policy),
    )
    for p in plugins:
        engine.add_plugin(p)
    pending = sorted(enumerate(arrivals), key=lambda x: (x[1][0], x[0]))
    step = 0
    while (pending or engine.has_unfinished()) and step < MAX_STEPS:
        while pending and pending[0][1][0] <= step:
            i, (_, prompt_len, new_tokens, priority) = pending.pop(0)
            engine.add_request([(i + j) % 32 for j in range(prompt_len)], new_tokens, request_id=i, priority=priority)
        if engine.has_unfinished():  # an idle step (nobody has arrived yet) only moves the clock
            engine.step()
        step += 1
    return engine


def admissions(engine: Engine) -> list[tuple[int, list[int]]]:
    """Who joined the running batch at each step (order within a step does not matter)."""
    return [(r.step, sorted(r.plan.admitted)) for r in engine.records if r.plan.admitted]


class PriorityPluginExercise(Exercise):
    name = "ex07_priority_plugin"
    title = "A priority SchedulerPlugin"
    entry = "PriorityAdmission"
    course = "08_plugins"
    hint = (
        "before_step: free = min(engine.config.max_running, engine.budget) - len(engine.running); sort "
        "engine.waiting by (priority, arrival) -- smaller priority first -- keep the first `free`, hold the rest; "
        "after_step: put the held requests back into engine.waiting"
    )
    num_random = 6

    @property
    def reference(self):
        return ReferencePriorityAdmission

    def fixed_cases(self) -> list[Case]:
        def case(name, arrivals, max_running):
            return Case(name, {"arrivals": arrivals, "max_running": max_running})

        return [
            case("all equal priority: plain FCFS", [(0, 3, 2, 0), (0, 2, 3, 0), (0, 4, 2, 0)], 1),
            case("urgent request arrives last", [(0, 3, 3, 5), (0, 3, 3, 5), (0, 3, 3, 5), (0, 2, 2, 0)], 2),
            case(
                "urgent request arrives while the batch is full",
                [(0, 3, 4, 3), (0, 3, 4, 3), (0, 2, 2, 3), (2, 2, 2, 0), (2, 2, 2, 1)],
                2,
            ),
            case("priorities 0..3 in reverse arrival", [(0, 2, 2, 3), (0, 2, 2, 2), (0, 2, 2, 1), (0, 2, 2, 0)], 1),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        arrivals = [
            (rng.randint(0, 6), rng.randint(1, 6), rng.randint(1, 5), rng.randint(0, 3))
            for _ in range(rng.randint(3, 9))
        ]
        return {"arrivals": arrivals, "max_running": rng.randint(1, 3)}

    def describe(self, case: Case) -> str:
        rows = ", ".join(
            f"#{i}(step {s}, prompt {p}, new {n}, priority {q})"
            for i, (s, p, n, q) in enumerate(case.inputs["arrivals"])
        )
        return f"max_running={case.inputs['max_running']}; arrivals: {rows}"

    def judge(self, learner, case: Case) -> Mismatch | None:
        arrivals, max_running = case.inputs["arrivals"], case.inputs["max_running"]
        expected_engine = run_arrivals(arrivals, max_running, "priority")
        plugin = learner()
        if not isinstance(plugin, SchedulerPlugin):
            return Mismatch(
                "a SchedulerPlugin", type(plugin).__name__, "subclass cblab_teach.plugins.base.SchedulerPlugin"
            )
        engine = run_arrivals(arrivals, max_running, "fcfs", [plugin])
        expected, got = admissions(expected_engine), admissions(engine)
        unfinished = sorted(rid for rid, r in engine.requests.items() if not r.is_finished)
        missing = sorted(set(range(len(arrivals))) - set(engine.requests))
        if unfinished or missing:
            return Mismatch(
                "every request finishes",
                f"requests {unfinished + missing} never finished",
                "requests held back in before_step must go back into engine.waiting (after_step), or they are lost",
            )
        if got == expected:
            return None
        step, exp_ids = next(((s, ids) for (s, ids), g in zip(expected, got + [None] * len(expected)) if (s, ids) != g))
        got_ids = dict(got).get(step, [])
        return Mismatch(
            f"admitted per step {expected}",
            f"admitted per step {got}",
            f"step {step}: expected to admit {exp_ids}, got {got_ids}. Smaller priority first (ties: earlier arrival),"
            " and only as many as there are free slots -- the FCFS scheduler admits what it sees in arrival order",
        )


EXERCISE = PriorityPluginExercise()
