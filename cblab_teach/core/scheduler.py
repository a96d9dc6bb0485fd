"""Pure planning: which request computes which tokens this step.

The rule of continuous batching, per step:

1. **Decode first.** Every decoding request wants one token. If the budget
   cannot serve them all, the least recently served go first, so nobody
   starves (with budget 2 and 3 decoders, all three advance within 2 steps).
2. **Then prefill**, in the budget that is left: running prefills first, then
   newly admitted requests, each a chunk of at most ``prefill_chunk_size``.

Admission: a waiting request joins only while fewer than
``min(max_running, budget)`` requests hold KV. With at most ``budget``
running requests, decode can never eat the whole budget while a running
request still waits for its prompt, so prefill always progresses too.

``plan`` reads requests and the KV cache but changes nothing: a plan is plain
data that a notebook can draw and a test can check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..errors import ConfigError
from .request import Request, RequestState

ChunkKind = Literal["decode", "prefill"]
POLICIES = ("fcfs", "priority")


@dataclass(frozen=True)
class ScheduledChunk:
    """Request ``request_id`` computes tokens ``[start, start + length)`` of its sequence."""

    request_id: int
    start: int
    length: int
    kind: ChunkKind
    samples: bool  # the chunk reaches the end of the known tokens: sample a new one

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class StepPlan:
    budget: int
    chunks: list[ScheduledChunk] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)

    @property
    def decode_tokens(self) -> int:
        return sum(c.length for c in self.chunks if c.kind == "decode")

    @property
    def prefill_tokens(self) -> int:
        return sum(c.length for c in self.chunks if c.kind == "prefill")

    @property
    def used(self) -> int:
        return self.decode_tokens + self.prefill_tokens

    @property
    def unused(self) -> int:
        return self.budget - self.used

    @property
    def request_ids(self) -> list[int]:
        return [c.request_id for c in self.chunks]


class AdmissionCheck(Protocol):
    """What the scheduler asks the KV cache: would these extra reservations fit?"""

    def fits(self, token_counts: Sequence[int]) -> bool: ...


def is_decoding(request: Request) -> bool:
    return bool(request.output_ids) and request.num_pending == 1


class Scheduler:
    """Token-budget scheduler: decode first, fair, then chunked prefill."""

    def __init__(
        self,
        max_tokens_per_step: int,
        prefill_chunk_size: int,
        max_running: int = 256,
        policy: str = "fcfs",
    ) -> None:
        for name, value in (
            ("max_tokens_per_step", max_tokens_per_step),
            ("prefill_chunk_size", prefill_chunk_size),
            ("max_running", max_running),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.max_tokens_per_step = max_tokens_per_step
        self.prefill_chunk_size = prefill_chunk_size
        self.max_running = max_running
        self.policy = policy

    def order_key(self, request: Request) -> tuple[int, ...]:
        """Arrival order, or priority then arrival under the priority policy."""
        if self.policy == "priority":
            return (request.priority, request.arrival)
        return (request.arrival,)

    def plan(
        self,
        running: Sequence[Request],
        waiting: Sequence[Request],
        kv: AdmissionCheck | None = None,
        budget: int | None = None,
    ) -> StepPlan:
        """Decide this step's work; ``running`` and ``waiting`` are left untouched."""
        budget = self.max_tokens_per_step if budget is None else budget
        plan = StepPlan(budget=budget)
        left = budget

        decoders = [r for r in running if is_decoding(r)]
        decoders.sort(key=lambda r: (r.last_scheduled_step, *self.order_key(r)))
        for r in decoders[:left]:
            plan.chunks.append(ScheduledChunk(r.request_id, r.num_computed, 1, "decode", True))
        left -= min(left, len(decoders))

        prefilling = sorted((r for r in running if not is_decoding(r)), key=self.order_key)
        for r in prefilling:
            if left == 0:
                break
            left -= self._add_prefill(plan, r, left)

        reserved: list[int] = []
        n_running = len(running)
        limit = min(self.max_running, budget)
        for r in sorted(waiting, key=self.order_key):
            if left == 0 or n_running >= limit:
                break
            if kv is not None and not kv.fits([*reserved, r.max_total_tokens]):
                break  # keep arrival order: nobody overtakes a request that does not fit yet
            reserved.append(r.max_total_tokens)
            plan.admitted.append(r.request_id)
            n_running += 1
            left -= self._add_prefill(plan, r, left)
        return plan

    def _add_prefill(self, plan: StepPlan, r: Request, left: int) -> int:
        length = min(self.prefill_chunk_size, r.num_pending, left)
        end = r.num_computed + length
        plan.chunks.append(ScheduledChunk(r.request_id, r.num_computed, length, "prefill", end == r.num_tokens))
        return length


def check_plan(plan: StepPlan, requests: dict[int, Request]) -> None:
    """Assert the invariants of a plan (used by tests and notebooks)."""
    assert plan.used <= plan.budget, f"plan uses {plan.used} > budget {plan.budget}"
    seen = set()
    for c in plan.chunks:
        assert c.request_id not in seen, f"request {c.request_id} scheduled twice"
        seen.add(c.request_id)
        r = requests[c.request_id]
        assert r.state is not RequestState.FINISHED, f"finished request {c.request_id} scheduled"
        assert c.start == r.num_computed and c.end <= r.num_tokens
    kinds = [c.kind for c in plan.chunks]
    assert kinds == sorted(kinds, key=lambda k: k != "decode"), "decode must come before prefill"
