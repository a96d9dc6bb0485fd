"""Exercise 3: cut prompts into prefill chunks that fit the budget left after decode.

::

    pick_prefill_chunks(prefilling, budget_left, chunk_size) -> [(request_id, start, length), ...]

``prefilling``: ``(request_id, prefill_pos, prompt_len)`` in arrival order. A
chunk starts at ``prefill_pos`` and is at most ``chunk_size`` long, never past
the prompt, never past the budget. The reference is the engine's
:class:`Scheduler` on requests in that state.
"""

from __future__ import annotations

import random
from typing import Any

from ..core.scheduler import Scheduler
from ._base import Case, Exercise, Mismatch
from .ex02_decode_first_scheduler import prefilling_request


def reference_pick_prefill_chunks(
    prefilling: list[tuple[int, int, int]], budget_left: int, chunk_size: int
) -> list[tuple[int, int, int]]:
    """The engine's scheduler, given only prefilling requests and the budget that decode left."""
    running = [prefilling_request(rid, pos, length - pos) for rid, pos, length in prefilling]
    plan = Scheduler(max(budget_left, 1), chunk_size).plan(running, [], budget=budget_left)
    return [(c.request_id, c.start, c.length) for c in plan.chunks]


class ChunkedPrefill(Exercise):
    name = "ex03_chunked_prefill"
    title = "Chunked prefill in the remaining budget"
    entry = "pick_prefill_chunks"
    course = "03_token_budget_scheduler"
    hint = "in arrival order: start = prefill_pos, length = min(chunk_size, prompt_len - prefill_pos, budget left)"

    @property
    def reference(self):
        return reference_pick_prefill_chunks

    def fixed_cases(self) -> list[Case]:
        def case(name, prefilling, budget_left, chunk_size):
            return Case(name, {"prefilling": prefilling, "budget_left": budget_left, "chunk_size": chunk_size})

        return [
            case("a fresh prompt, first chunk", [(0, 0, 20)], 16, 8),
            case("a chunk starts where the last one stopped", [(0, 8, 20)], 16, 8),
            case("the last chunk is shorter", [(0, 16, 20)], 16, 8),
            case("budget smaller than a chunk", [(0, 0, 20)], 5, 8),
            case("leftover goes to the next request", [(0, 4, 10), (1, 0, 12), (2, 0, 3)], 12, 8),
            case("no budget left", [(0, 0, 5)], 0, 8),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        prefilling = []
        for rid in range(rng.randint(1, 5)):
            length = rng.randint(1, 30)
            prefilling.append((rid, rng.randint(0, length - 1), length))
        return {"prefilling": prefilling, "budget_left": rng.randint(0, 32), "chunk_size": rng.choice([4, 8, 16])}

    def judge(self, learner, case: Case) -> Mismatch | None:
        expected = self.reference(**case.inputs)
        got_raw = learner(**{k: list(v) if isinstance(v, list) else v for k, v in case.inputs.items()})
        try:
            got = [(int(r), int(s), int(n)) for r, s, n in got_raw if int(n) != 0]
        except (TypeError, ValueError):
            return Mismatch(expected, got_raw, "return a list of (request_id, start, length) tuples")
        if got == expected:
            return None
        return Mismatch(expected, got, _diagnose(got, case.inputs))


def _diagnose(got, inputs) -> str:
    state = {rid: (pos, length) for rid, pos, length in inputs["prefilling"]}
    used = sum(n for _, _, n in got)
    if used > inputs["budget_left"]:
        return f"the chunks use {used} tokens but only {inputs['budget_left']} are left in the budget"
    for rid, start, n in got:
        if rid not in state:
            return f"request {rid} is not prefilling"
        pos, length = state[rid]
        if start != pos:
            return f"request {rid}'s chunk must start at its prefill_pos {pos}, not {start}: those tokens are cached"
        if start + n > length:
            return f"request {rid}'s chunk ends at {start + n}, past its prompt of {length} tokens"
        if n > inputs["chunk_size"]:
            return f"a chunk is at most chunk_size={inputs['chunk_size']} tokens, got {n}"
    return "use every token of budget you can, in arrival order; a request may get a partial chunk"


EXERCISE = ChunkedPrefill()
