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
    drafts: tuple[int, ...] = ()  # speculative tokens verified in this chunk (decode only)

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def num_logits(self) -> int:
        """Rows of this chunk whose logits are needed: the last one, or every verified position."""
        return (1 + len(self.drafts)) if self.samples else 0


@dataclass
class StepPlan:
    budget: int
    chunks: list[ScheduledChunk] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)  # lose their KV now, recomputed later
    cached_tokens: dict[int, int] = field(
        default_factory=dict
    )  # admitted id -> prompt tokens found in the prefix cache

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


class BlockLedger:
    """Free blocks as the plan spends them, for preemption mode (nothing is allocated here).

    When a request needs blocks that are not free, the lowest-priority running
    request (the newest, under FCFS) is preempted and its chunk, if already
    planned, is taken back. If that request is the one asking, it preempts
    itself and waits. What a preemption frees, and what a request needs once
    others have let go of blocks they shared with it, the KV cache answers
    (``blocks_released_by``, ``blocks_needed(..., leaving=...)``): the ledger
    never re-derives the allocator's rules.
    """

    def __init__(self, kv, running: Sequence[Request], order_key) -> None:
        self.kv = kv
        self.victims = sorted(running, key=order_key, reverse=True)
        self.spent: dict[int, int] = {}  # running request id -> blocks planned for it this step
        self.planned = 0  # blocks planned this step: the sum of ``spent`` plus admissions
        self.released = 0  # blocks this step's victims free together (asked again at each new victim)
        self.preempted: list[Request] = []

    @property
    def leaving(self) -> list[int]:
        return [v.request_id for v in self.preempted]

    @property
    def free(self) -> int:
        """Blocks free once this step's victims have let go, less what the plan has spent."""
        return self.kv.num_free_blocks + self.released - self.planned

    def admit(self, blocks: int) -> bool:
        """Charge an admission; admission never preempts, so it only succeeds if the blocks are free."""
        if blocks > self.free:
            return False
        self.planned += blocks
        return True

    def take(self, r: Request, end: int, plan: StepPlan) -> tuple[bool, int]:
        """Reserve blocks so ``r`` can hold ``end`` tokens; returns (ok, budget refunded by preemptions)."""
        refund = 0
        while (need := self.kv.blocks_needed(r.request_id, end, self.leaving)) > self.free:
            victim = next((v for v in self.victims if v not in self.preempted), None)
            if victim is None:
                return False, refund
            self.preempted.append(victim)
            self.planned -= self.spent.pop(victim.request_id, 0)
            self.released = self.kv.blocks_released_by(self.leaving)
            for c in [c for c in plan.chunks if c.request_id == victim.request_id]:
                plan.chunks.remove(c)
                refund += c.length
            if victim is r:
                return False, refund
        self.planned += need - self.spent.get(r.request_id, 0)
        self.spent[r.request_id] = need
        return True, refund


def is_decoding(request: Request) -> bool:
    return bool(request.output_ids) and request.num_pending == 1


class Scheduler:
    """Token-budget scheduler: decode first, fair, then chunked prefill."""

    # A slice of every budget kept for urgent requests (priority <= reserved_priority); the others share
    # the rest. 0 reserves nothing. Set by PriorityPlugin.
    reserved_tokens: int = 0
    reserved_priority: int = 0

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
        kv=None,
        budget: int | None = None,
        preemption: bool = False,
        drafts: dict[int, Sequence[int]] | None = None,
    ) -> StepPlan:
        """Decide this step's work; ``running``, ``waiting`` and ``kv`` are left untouched.

        ``preemption``: admit on the blocks of the first chunk only, and preempt
        when running requests outgrow the pool (needs a paged ``kv``). Without
        it, admission reserves a request's worst case, so the pool never runs out.
        ``drafts``: speculative tokens per decoding request, verified in its decode chunk.
        """
        budget = self.max_tokens_per_step if budget is None else budget
        plan = StepPlan(budget=budget)
        drafts = drafts or {}
        ledger = BlockLedger(kv, running, self.order_key) if preemption else None
        left = budget
        others_left = budget - min(self.reserved_tokens, budget)  # what requests outside the reservation may use

        def room(r: Request) -> int:
            return left if r.priority <= self.reserved_priority else min(left, others_left)

        def spend(r: Request, n: int) -> None:
            nonlocal left, others_left
            left -= n
            if r.priority > self.reserved_priority:
                others_left -= n

        def reserve(r: Request, end: int) -> bool:
            nonlocal left
            if ledger is None:
                return True
            ok, refund = ledger.take(r, end, plan)
            left += refund
            return ok

        decoders = sorted(
            (r for r in running if is_decoding(r)), key=lambda r: (r.last_scheduled_step, *self.order_key(r))
        )
        for r in decoders:
            if left == 0:
                break
            if r in (ledger.preempted if ledger else ()) or room(r) == 0:
                continue
            guess = tuple(drafts.get(r.request_id, ()))[: room(r) - 1]
            if reserve(r, r.num_computed + 1 + len(guess)):
                plan.chunks.append(ScheduledChunk(r.request_id, r.num_computed, 1 + len(guess), "decode", True, guess))
                spend(r, 1 + len(guess))

        for r in sorted((r for r in running if not is_decoding(r)), key=self.order_key):
            if left == 0:
                break
            if r in (ledger.preempted if ledger else ()) or room(r) == 0:
                continue
            length = min(self.prefill_chunk_size, r.num_pending, room(r))
            if reserve(r, r.num_computed + length):
                spend(r, self._add_prefill(plan, r, r.num_computed, length))

        reserved: list[int] = []
        held = [r for r in running if not (ledger and r in ledger.preempted)]
        n_running = sum(1 + len(r.forks) for r in held)  # a parent's forks hold seats before they join
        limit = min(self.max_running, budget)
        for r in sorted(waiting, key=self.order_key):
            if left == 0 or (n_running + r.group_size > limit and n_running > 0):
                break  # a group counts as all its sequences (alone, it may still start)
            if room(r) == 0:
                continue  # its share of the budget is spent; an urgent request behind it may still join
            swapped = r.num_computed > 0  # a request preempted by swap resumes where it stopped
            start = r.num_computed if swapped else kv.cached_prefix(r.all_ids) if hasattr(kv, "cached_prefix") else 0
            length = min(self.prefill_chunk_size, r.num_tokens - start, room(r))
            if ledger is not None:
                if not ledger.admit(kv.blocks_for(start + length)):
                    break  # admission never preempts: nobody overtakes a request that does not fit yet
            elif kv is not None:
                need = [r.max_total_tokens] * r.group_size  # a group reserves for every sequence it forks into
                if not kv.fits([*reserved, *need]):
                    break
                reserved.extend(need)
            plan.admitted.append(r.request_id)
            if start and not swapped:
                plan.cached_tokens[r.request_id] = start
            n_running += r.group_size
            spend(r, self._add_prefill(plan, r, start, length))
        if ledger is not None:
            plan.preempted = [v.request_id for v in ledger.preempted]
        return plan

    def _add_prefill(self, plan: StepPlan, r: Request, start: int, length: int) -> int:
        end = start + length
        plan.chunks.append(ScheduledChunk(r.request_id, start, length, "prefill", end == r.num_tokens))
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
        assert c.start == plan.cached_tokens.get(c.request_id, r.num_computed), f"request {c.request_id} starts wrong"
        assert c.end <= r.num_tokens + len(c.drafts), f"request {c.request_id} computes tokens it does not have"
    kinds = [c.kind for c in plan.chunks]
    assert kinds == sorted(kinds, key=lambda k: k != "decode"), "decode must come before prefill"
