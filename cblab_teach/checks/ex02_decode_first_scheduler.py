"""Exercise 2: plan one step, decode first (least recently served first), then prefill.

The learner's planner works on plain data, not engine objects::

    plan_step(decoding, prefilling, budget, chunk_size) -> [(request_id, kind, num_tokens), ...]

``decoding``: ``(request_id, last_served_step)`` of requests that want one token;
``prefilling``: ``(request_id, prompt_tokens_left)``; smaller ids arrived earlier.
The reference builds real :class:`Request` objects and asks the engine's
:class:`Scheduler` for its plan.
"""

from __future__ import annotations

import random
from typing import Any

from ..core.request import Request, RequestState
from ..core.scheduler import Scheduler
from ._base import Case, Exercise, Mismatch


def decoding_request(request_id: int, last_served_step: int) -> Request:
    """A request whose prompt is done and whose last sampled token waits to be fed back."""
    r = Request(request_id, prompt_ids=[1, 2, 3], max_new_tokens=64, arrival=request_id, output_ids=[4])
    r.num_computed, r.last_scheduled_step, r.state = 3, last_served_step, RequestState.DECODE
    return r


def prefilling_request(request_id: int, done: int, left: int) -> Request:
    """A running request with ``done`` prompt tokens computed and ``left`` to go."""
    r = Request(request_id, prompt_ids=[1] * (done + left), max_new_tokens=4, arrival=request_id)
    r.num_computed, r.state = done, RequestState.PREFILL
    return r


def reference_plan_step(
    decoding: list[tuple[int, int]], prefilling: list[tuple[int, int]], budget: int, chunk_size: int
) -> list[tuple[int, str, int]]:
    """The engine's own scheduler on the same requests."""
    running = [decoding_request(rid, last) for rid, last in decoding]
    running += [prefilling_request(rid, 0, left) for rid, left in prefilling]
    plan = Scheduler(max(budget, 1), chunk_size).plan(running, [], budget=budget)
    return [(c.request_id, c.kind, c.length) for c in plan.chunks]


class DecodeFirstScheduler(Exercise):
    name = "ex02_decode_first_scheduler"
    title = "Decode-first scheduling with fairness"
    entry = "plan_step"
    course = "03_token_budget_scheduler"
    hint = (
        "serve decoders first, least recently served first (ties: smaller id), one token each while budget lasts; "
        "then prefill in id order, each min(chunk_size, tokens left, budget left)"
    )

    @property
    def reference(self):
        return reference_plan_step

    def fixed_cases(self) -> list[Case]:
        def case(name, decoding, prefilling, budget, chunk_size):
            return Case(
                name, {"decoding": decoding, "prefilling": prefilling, "budget": budget, "chunk_size": chunk_size}
            )

        return [
            case("decode only, budget for all", [(0, 4), (1, 4)], [], 8, 4),
            case("decode goes before prefill", [(3, 7)], [(0, 10)], 4, 8),
            case("budget 2, three decoders: the starved one first", [(0, 5), (1, 4), (2, 5)], [], 2, 4),
            case("budget 2, three decoders, next step", [(0, 5), (1, 6), (2, 6)], [], 2, 4),
            case("decoders eat the whole budget", [(0, 1), (1, 1), (2, 1)], [(3, 5)], 3, 4),
            case("prefill chunks capped by chunk_size", [], [(0, 20), (1, 5)], 16, 8),
            case("prefill shares what is left, in arrival order", [(5, 2)], [(0, 3), (1, 10), (2, 4)], 10, 8),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        ids = list(range(rng.randint(1, 7)))
        rng.shuffle(ids)
        split = rng.randint(0, len(ids))
        decoding = sorted((rid, rng.randint(0, 3)) for rid in ids[:split])
        prefilling = sorted((rid, rng.randint(1, 20)) for rid in ids[split:])
        return {"decoding": decoding, "prefilling": prefilling, "budget": rng.randint(1, 24), "chunk_size": 8}

    def judge(self, learner, case: Case) -> Mismatch | None:
        expected = self.reference(**case.inputs)
        got_raw = learner(**{k: list(v) if isinstance(v, list) else v for k, v in case.inputs.items()})
        try:
            got = [(int(r), str(k), int(n)) for r, k, n in got_raw if int(n) != 0]
        except (TypeError, ValueError):
            return Mismatch(expected, got_raw, "return a list of (request_id, kind, num_tokens) tuples")
        if sorted(got) == sorted(expected) and _decode_first(got):
            return None
        return Mismatch(expected, got, _diagnose(got, expected, case.inputs))


def _decode_first(plan: list[tuple[int, str, int]]) -> bool:
    kinds = [k for _, k, _ in plan]
    return kinds == sorted(kinds, key=lambda k: k != "decode")


def _diagnose(got, expected, inputs) -> str:
    used = sum(n for _, _, n in got)
    if any(k not in ("decode", "prefill") for _, k, _ in got):
        return 'kind is "decode" or "prefill"'
    if used > inputs["budget"]:
        return f"the plan uses {used} tokens but the budget is {inputs['budget']}"
    if not _decode_first(got):
        return "every decode entry comes before any prefill: a decoding user is waiting for their next token"
    got_dec = sorted(r for r, k, _ in got if k == "decode")
    exp_dec = sorted(r for r, k, _ in expected if k == "decode")
    if len(got_dec) < len(exp_dec) and any(k == "prefill" for _, k, _ in got):
        return (
            f"decoders served: expected {exp_dec}, got {got_dec}. Decode goes before any prefill: "
            "prefill only gets the budget that decode leaves"
        )
    if got_dec != exp_dec:
        return (
            f"decoders served: expected {exp_dec}, got {got_dec}. When the budget cannot serve every decoder, "
            "the least recently served go first (sort by last_served_step, then id), or one of them starves"
        )
    if any(n > inputs["chunk_size"] for _, k, n in got if k == "prefill"):
        return f"a prefill chunk is at most chunk_size={inputs['chunk_size']} tokens"
    return "prefill: in id order, each request gets min(chunk_size, its tokens left, budget left)"


EXERCISE = DecodeFirstScheduler()
