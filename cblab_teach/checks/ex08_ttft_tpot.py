"""Exercise 8: TTFT and TPOT from the engine's step records, measured in steps.

::

    ttft_tpot(records, arrival_steps) -> {request_id: (ttft, tpot)}

With ``a`` the step a request arrived before, ``f`` the step that produced its
first token, ``l`` the step of its last token and ``N`` tokens in all
(``record.new_tokens[rid]`` lists the tokens a step appended)::

    TTFT = f - a + 1            (a first token in the very step it arrived: 1 step)
    E2E  = l - a + 1
    TPOT = (E2E - TTFT) / (N - 1)   (None when N == 1: there is no second token)

the definitions vLLM documents, with steps for seconds. The reference is
:func:`reference_ttft_tpot` below (``MetricsCollector`` in ``cblab_teach.monitoring``
measures TTFT in steps the same way, and TPOT in seconds); the cases are real engine runs with staggered arrivals and chunked
prefill, so a request's first scheduled step is often not its first token's.
"""

from __future__ import annotations

import random
from typing import Any

from ..core.config import EngineConfig
from ..core.engine import Engine
from ._base import Case, Exercise, Mismatch
from .ex06_static_vs_continuous import tiny_model


def reference_ttft_tpot(records, arrival_steps: dict[int, int]) -> dict[int, tuple[int, float | None]]:
    """Per request: (TTFT in steps, TPOT in steps per token after the first, or None for one token)."""
    token_steps: dict[int, list[int]] = {}
    for record in records:
        for rid, tokens in record.new_tokens.items():
            token_steps.setdefault(rid, []).extend([record.step] * len(tokens))
    out = {}
    for rid, steps in token_steps.items():
        a = arrival_steps[rid]
        ttft = steps[0] - a + 1
        e2e = steps[-1] - a + 1
        n = len(steps)
        out[rid] = (ttft, (e2e - ttft) / (n - 1) if n > 1 else None)
    return out


def run_staggered(arrivals: list[tuple[int, int, int]], budget: int, chunk: int) -> Engine:
    """``(arrival_step, prompt_len, new_tokens)`` each (an idle engine takes the next arrival at once)."""
    engine = Engine(tiny_model(), EngineConfig(max_tokens_per_step=budget, prefill_chunk_size=chunk, max_running=4))
    pending = sorted(enumerate(arrivals), key=lambda x: (x[1][0], x[0]))
    while pending or engine.has_unfinished():
        while pending and (pending[0][1][0] <= len(engine.records) or not engine.has_unfinished()):
            i, (_, prompt_len, new_tokens) = pending.pop(0)
            engine.add_request([(i + j) % 32 for j in range(prompt_len)], new_tokens, request_id=i)
        engine.step()
    return engine


class TtftTpot(Exercise):
    name = "ex08_ttft_tpot"
    title = "TTFT and TPOT from step records"
    entry = "ttft_tpot"
    course = "09_monitoring_memory"
    hint = (
        "collect, per request, the step of every token (record.new_tokens); TTFT = first - arrival + 1, "
        "E2E = last - arrival + 1, TPOT = (E2E - TTFT) / (N - 1), None when N == 1"
    )
    num_random = 6

    @property
    def reference(self):
        return reference_ttft_tpot

    def fixed_cases(self) -> list[Case]:
        def case(name, arrivals, budget=8, chunk=4):
            return Case(name, {"arrivals": arrivals, "budget": budget, "chunk": chunk})

        return [
            case("one request, short prompt", [(0, 3, 5)]),
            case("a long prompt takes several prefill steps", [(0, 14, 4)]),
            case("a late arrival", [(0, 3, 6), (3, 5, 4)]),
            case("one token only: no TPOT", [(0, 4, 1), (1, 2, 3)]),
            case("a crowded batch", [(0, 6, 5), (0, 7, 3), (1, 9, 4), (2, 2, 6), (2, 5, 2)], budget=6),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        arrivals = [(rng.randint(0, 5), rng.randint(1, 12), rng.randint(1, 7)) for _ in range(rng.randint(1, 6))]
        return {"arrivals": arrivals, "budget": rng.randint(4, 12), "chunk": rng.randint(2, 6)}

    def describe(self, case: Case) -> str:
        rows = ", ".join(f"#{i}(step {s}, prompt {p}, new {n})" for i, (s, p, n) in enumerate(case.inputs["arrivals"]))
        return f"budget={case.inputs['budget']}, chunk={case.inputs['chunk']}; arrivals: {rows}"

    def judge(self, learner, case: Case) -> Mismatch | None:
        engine = run_staggered(**case.inputs)
        arrival_steps = {rid: r.arrival_step for rid, r in engine.requests.items()}
        expected = self.reference(engine.records, dict(arrival_steps))
        got = learner(list(engine.records), dict(arrival_steps))
        if not isinstance(got, dict) or sorted(got) != sorted(expected):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            return Mismatch(f"a dict over requests {sorted(expected)}", keys, "one entry per request id")
        for rid in sorted(expected):
            e_ttft, e_tpot = expected[rid]
            try:
                g_ttft, g_tpot = got[rid]
            except (TypeError, ValueError):
                return Mismatch(expected[rid], got[rid], f"request {rid}: return a pair (ttft, tpot)")
            if abs(float(g_ttft) - e_ttft) > 1e-9:
                return Mismatch(
                    {rid: expected[rid]},
                    {rid: got[rid]},
                    f"request {rid}: TTFT counts steps from arrival (arrival_steps[rid]) to the step that produced "
                    "its FIRST TOKEN, both included -- prefill chunks before it produce no token",
                )
            if (e_tpot is None) != (g_tpot is None) or (e_tpot is not None and abs(float(g_tpot) - e_tpot) > 1e-9):
                hint = f"request {rid}: TPOT = (E2E - TTFT) / (N - 1): N - 1 gaps between N tokens"
                if e_tpot is None:
                    hint = f"request {rid} produced a single token: TPOT is undefined, return None"
                return Mismatch({rid: expected[rid]}, {rid: got[rid]}, hint)
        return None


EXERCISE = TtftTpot()
