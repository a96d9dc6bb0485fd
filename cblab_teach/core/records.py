"""What the engine reports: a :class:`StepRecord` per step (the raw material of every plot) and the
:class:`EngineStats` counters of its advanced features. Plain data: the visual layer draws these, it never
recomputes them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .kv_cache import KVUsage
from .scheduler import StepPlan


@dataclass
class StepRecord:
    """What happened in one step, as plain data."""

    step: int
    plan: StepPlan
    sampled: dict[int, int]  # request id -> token produced this step
    finished: list[int]
    running: list[int]  # holding KV after the step
    waiting: list[int]
    kv: KVUsage
    block_tables: dict[int, list[int]]  # paged layout only; {} for dense
    start_time: float
    duration_s: float
    forward_s: float
    extra: dict = field(default_factory=dict)  # plugins may annotate
    new_tokens: dict[int, list[int]] = field(default_factory=dict)  # every token appended this step
    swapped: list[int] = field(default_factory=list)  # of the preempted, those whose K/V went to the host pool
    copied_blocks: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # copy-on-write: rid -> (old, new)
    forked: dict[int, list[int]] = field(default_factory=dict)  # parent id -> sequences that forked from it

    @property
    def preempted(self) -> list[int]:
        return self.plan.preempted

    @property
    def budget(self) -> int:
        return self.plan.budget

    @property
    def used(self) -> int:
        return self.plan.used

    @property
    def tokens(self) -> dict[int, tuple[str, int]]:
        """request id -> (kind, tokens computed this step)."""
        return {c.request_id: (c.kind, c.length) for c in self.plan.chunks}

    @property
    def overhead_s(self) -> float:
        return self.duration_s - self.forward_s


@dataclass
class EngineStats:
    """Counters of the advanced features, for reports and tests."""

    preemptions: int = 0
    recomputed_tokens: int = 0  # KV thrown away by preemption and computed again
    swap_outs: int = 0  # preemptions whose K/V went to the host pool (preemption="swap") instead
    swapped_out_bytes: int = 0  # K/V bytes copied to the host pool
    swapped_in_bytes: int = 0  # and back
    prefix_hit_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    cow_copies: int = 0  # shared blocks copied before a write (parallel sampling)
    draft_tokens: int = 0  # speculative tokens proposed and verified
    accepted_tokens: int = 0  # of those, kept
    aborted: int = 0  # requests stopped by Engine.abort

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    def __repr__(self) -> str:  # one readable line; the fields stay plain ints
        swapped = f", {self.swap_outs} swapped out ({self.swapped_out_bytes:,} bytes)" if self.swap_outs else ""
        return (
            f"EngineStats: {self.preemptions} preemptions ({self.recomputed_tokens} tokens recomputed{swapped}), "
            f"{self.prefix_hit_tokens} prompt tokens from the prefix cache, "
            f"{self.accepted_tokens}/{self.draft_tokens} draft tokens accepted ({self.acceptance_rate:.0%})"
        )
