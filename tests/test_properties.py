"""Property-based tests: random workloads and engine settings, the same promises every time.

For every drawn configuration (budget, chunk size, block size, pool size, KV layout,
policy, arrival steps, priorities, EOS, preemption, prefix caching, speculation by
n-gram lookup or by a draft model) and at every step:

* the step uses at most its budget (draft tokens included), and a request is scheduled
  at most once per step;
* no request is lost or finished twice: running + waiting + finished is exactly
  what was added, and each request's chunks cover its tokens contiguously (a prefix-cache
  hit starts where the cached blocks end; rejected drafts are computed again);
* KV is accounted for exactly: paged -- every block is free, cached-but-unused, or in
  tables exactly as often as its reference count says, and each table is as long as its
  tokens need; dense -- reserved ranges lie inside the pool and never overlap; at the end
  everything is free again;
* greedy outputs equal an independent reference (``tests/reference.py``: full recompute
  over the same weights, no cache, float64, so no ties).

Two profiles, chosen by ``CBLAB_HYPOTHESIS_PROFILE``: ``ci`` (default) runs the same
derandomized examples every time (``CBLAB_PROPERTY_EXAMPLES`` of them, default 150);
``fuzz`` (``make fuzz``) draws fresh ones, many more, and prints the shrunk failing example
with the blob that replays it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cblab_teach import Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.core.kv_cache import DenseKVCache, PagedAllocator
from cblab_teach.plugins.base import SchedulerPlugin

from .reference import greedy

VOCAB = 19
EXAMPLES = int(os.environ.get("CBLAB_PROPERTY_EXAMPLES", "150"))
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
PROFILES = {
    "ci": settings(max_examples=EXAMPLES, derandomize=True, **_COMMON),
    "fuzz": settings(
        max_examples=int(os.environ.get("CBLAB_PROPERTY_EXAMPLES", "2000")),
        derandomize=False,
        print_blob=True,
        **_COMMON,
    ),
}
PROFILE = os.environ.get("CBLAB_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise ValueError(f"CBLAB_HYPOTHESIS_PROFILE must be one of {sorted(PROFILES)}, got {PROFILE!r}")
PROPERTY_SETTINGS = PROFILES[PROFILE]


@cache
def tiny_model() -> TinyLM:
    """float64 and tiny: greedy argmax never hinges on a near-tie, and a forward costs about a millisecond."""
    cfg = ModelConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=24,
        max_position=64,
        dtype=torch.float64,
    )
    model = TinyLM(cfg, seed=7)
    with torch.no_grad():  # 10x the default init: outputs then depend on the whole context, so leaks show
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10.0)
    return model


@cache
def draft_model() -> TinyLM:
    """A smaller, different model with the same vocabulary: its guesses are often wrong, so drafts get rejected."""
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8, max_position=64,
                      dtype=torch.float64)  # fmt: skip
    return TinyLM(cfg, seed=3)


@cache
def alone(prompt: tuple[int, ...], max_new_tokens: int, eos: int | None) -> tuple[int, ...]:
    """The reference: full recompute without any cache, independent of the engine."""
    return tuple(greedy(tiny_model(), prompt, max_new_tokens, eos))


# -- what hypothesis draws ------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    prompt: tuple[int, ...]
    max_new_tokens: int
    step: int  # clock tick at which it is added
    priority: int


@dataclass(frozen=True)
class Scenario:
    arrivals: tuple[Arrival, ...]
    config: EngineConfig
    budgets: tuple[int, ...]  # per-step budgets a plugin sets; () keeps max_tokens_per_step


arrival_st = st.builds(
    Arrival,
    prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12).map(tuple),
    max_new_tokens=st.integers(1, 6),
    step=st.integers(0, 6),
    priority=st.integers(0, 3),
)


@st.composite
def arrivals_st(draw) -> tuple[Arrival, ...]:
    """Random requests; some start with a shared prefix, some repeat an earlier prompt exactly (prefix-cache hits)."""
    shared = tuple(draw(st.lists(st.integers(0, VOCAB - 1), max_size=9)))
    out: list[Arrival] = []
    for a in draw(st.lists(arrival_st, min_size=1, max_size=6)):
        how = draw(st.sampled_from(["own", "shared", "repeat"]))
        if how == "shared":
            a = Arrival(shared + a.prompt, a.max_new_tokens, a.step, a.priority)
        elif how == "repeat" and out:
            a = Arrival(out[-1].prompt, a.max_new_tokens, a.step, a.priority)
        out.append(a)
    return tuple(out)


@st.composite
def scenarios(draw, vary_budget: bool = False) -> Scenario:
    arrivals = draw(arrivals_st())
    layout = draw(st.sampled_from(["paged", "dense"]))
    block_size = draw(st.integers(1, 8))
    longest = max(len(a.prompt) + a.max_new_tokens - 1 for a in arrivals)  # worst-case KV of one request
    min_blocks = math.ceil(longest / block_size)  # the pool must hold the largest request alone
    num_blocks = min_blocks + draw(st.integers(0, 3 * min_blocks + 2))
    preemption = layout == "paged" and draw(st.booleans())
    config = EngineConfig(
        max_tokens_per_step=draw(st.integers(1, 24)),
        prefill_chunk_size=draw(st.integers(1, 16)),
        max_running=draw(st.integers(1, 8)),
        kv_layout=layout,
        block_size=block_size,
        num_blocks=num_blocks,
        policy=draw(st.sampled_from(["fcfs", "priority"])),
        attention=draw(st.sampled_from(["segmented", "ragged"])),
        kv_read=draw(st.sampled_from(["block_table", "flatten"])) if layout == "paged" else "block_table",
        eos_token_id=draw(st.one_of(st.none(), st.integers(0, VOCAB - 1))),
        preemption=preemption,
        enable_prefix_caching=layout == "paged" and draw(st.booleans()),
        speculative=draw(st.sampled_from([None, None, "ngram", "draft"])),
        num_speculative_tokens=draw(st.integers(1, 4)),
        ngram_size=draw(st.integers(1, 2)),
    )
    budgets = tuple(draw(st.lists(st.integers(1, 24), min_size=1, max_size=8))) if vary_budget else ()
    return Scenario(arrivals, config, budgets)


class BudgetSchedule(SchedulerPlugin):
    """Sets ``engine.budget`` before every step from a cyclic list, as an adaptive policy would."""

    def __init__(self, budgets: tuple[int, ...]) -> None:
        self.budgets = budgets

    def before_step(self, engine: Engine) -> None:
        engine.budget = self.budgets[len(engine.records) % len(self.budgets)]


# -- the invariants ------------------------------------------------------------------------


def check_paged(kv: PagedAllocator, engine: Engine) -> None:
    tables = kv.block_tables
    used = [b for t in tables.values() for b in t]
    distinct = set(used)
    parked = set(kv.prefix.evictable) if kv.prefix else set()
    assert all(len(set(t)) == len(t) for t in tables.values()), f"a block sits twice in one table: {tables}"
    assert len(set(kv.free_blocks)) == len(kv.free_blocks), f"a block is free twice: {kv.free_blocks}"
    assert not distinct & set(kv.free_blocks) and not distinct & parked, "a block is both free and used"
    assert not parked & set(kv.free_blocks), "a cached block is also on the free list"
    assert len(kv.free_blocks) + len(parked) + len(distinct) == kv.num_blocks, "blocks went missing from the pool"
    assert all(0 <= b < kv.num_blocks for b in used)
    for b in range(kv.num_blocks):  # reference counts say how many tables hold a block
        assert kv.ref_counts[b] == used.count(b), f"block {b}: ref count {kv.ref_counts[b]}, in {used.count(b)} tables"
    if kv.prefix is None:
        assert len(distinct) == len(used), f"a block sits in two tables: {tables}"
    for rid, table in tables.items():
        need = math.ceil(kv.lengths[rid] / kv.block_size)
        assert len(table) == need, f"request {rid} holds {len(table)} blocks for {kv.lengths[rid]} tokens"
    if not engine.config.preemption:  # every admitted request's worst case is promised, and the promise holds
        assert sum(kv.reserved_blocks.values()) <= kv.num_blocks
        assert all(len(tables[r]) <= kv.reserved_blocks[r] for r in tables)
    usage = kv.usage()
    assert usage.reserved_slots == len(distinct) * kv.block_size
    if kv.prefix is None:
        assert usage.used_slots == sum(kv.lengths.values())
    else:  # a shared block counts once
        assert max(kv.lengths.values(), default=0) <= usage.used_slots <= sum(kv.lengths.values())


def check_dense(kv: DenseKVCache, engine: Engine) -> None:
    ranges = sorted(kv.ranges.values())
    for (start, size), (next_start, _) in zip(ranges, ranges[1:]):
        assert start + size <= next_start, f"reserved ranges overlap: {ranges}"
    assert all(0 <= start and start + size <= kv.num_slots for start, size in ranges)
    for rid, (_, size) in kv.ranges.items():
        assert size == engine.requests[rid].max_total_tokens, f"request {rid} reserved {size} slots"
        assert kv.lengths[rid] <= size
    assert kv.usage().reserved_slots == sum(size for _, size in ranges)


def check_step(
    engine: Engine, record, added: set, finished: list, computed: dict, budget: int, prev_running: set
) -> None:
    plan = record.plan
    assert plan.budget == budget, f"plan budget {plan.budget} != engine budget {budget}"
    assert plan.used <= plan.budget, f"step {record.step} uses {plan.used} > budget {plan.budget}"
    assert plan.used >= 1, f"step {record.step} made no progress"
    ids = [c.request_id for c in plan.chunks]
    assert len(ids) == len(set(ids)), f"a request was scheduled twice in step {record.step}"
    for rid in plan.preempted:
        computed[rid] = 0  # its KV is gone: it starts again from token 0
    for c in plan.chunks:
        assert c.length >= 1
        expected = plan.cached_tokens.get(c.request_id, 0) if c.request_id in plan.admitted else computed[c.request_id]
        assert c.start == expected, f"request {c.request_id} skipped or redid tokens"
        if c.kind == "prefill":
            assert c.length <= engine.config.prefill_chunk_size and not c.drafts
        else:
            assert c.length == 1 + len(c.drafts) and len(c.drafts) <= engine.config.num_speculative_tokens
        accepted = len(record.new_tokens.get(c.request_id, [])) - 1 if c.drafts else 0
        assert 0 <= accepted <= len(c.drafts)
        computed[c.request_id] = c.end - len(c.drafts) + accepted  # rejected guesses are not kept
        if c.request_id in plan.cached_tokens:  # at least one token is computed: its logits give the next token
            assert c.start < engine.requests[c.request_id].num_tokens, "a cached prefix covered the whole prompt"

    assert not set(record.finished) & set(finished), f"finished twice: {set(record.finished) & set(finished)}"
    finished.extend(record.finished)
    running, waiting = set(record.running), set(record.waiting)
    assert len(running) == len(record.running) and len(waiting) == len(record.waiting)
    assert not running & waiting and not (running | waiting) & set(finished)
    assert running | waiting | set(finished) == added, "a request was lost"
    assert len(running) <= engine.config.max_running
    if plan.admitted:  # admission stops at min(max_running, budget) requests holding KV
        held_before = len(prev_running - set(plan.preempted))
        assert held_before + len(plan.admitted) <= min(engine.config.max_running, budget)
    assert set(plan.admitted) <= running | set(record.finished)

    kv = engine.kv
    assert set(kv.lengths) == running, "KV holders differ from the running requests"
    for rid in running:
        assert kv.lengths[rid] == engine.requests[rid].num_computed == computed[rid]
    if isinstance(kv, PagedAllocator):
        check_paged(kv, engine)
        assert record.block_tables == kv.block_tables
    else:
        check_dense(kv, engine)


def serve(scenario: Scenario) -> None:
    """Run a scenario tick by tick, checking every step, then compare outputs with the alone runs."""
    plugins = [BudgetSchedule(scenario.budgets)] if scenario.budgets else []
    draft = draft_model() if scenario.config.speculative == "draft" else None
    engine = Engine(tiny_model(), scenario.config, plugins=plugins, draft_model=draft)
    pending = sorted(enumerate(scenario.arrivals), key=lambda ia: ia[1].step)
    ids: dict[int, Arrival] = {}
    added: set = set()
    finished: list = []
    computed: dict = {}
    total_tokens = sum(len(a.prompt) + a.max_new_tokens for a in scenario.arrivals)
    max_ticks = 7 + 4 * total_tokens  # preemption recomputes; anything longer is a livelock
    tick = 0
    while pending or engine.has_unfinished():
        assert tick <= max_ticks, f"no end after {tick} ticks"
        while pending and pending[0][1].step <= tick:
            _, a = pending.pop(0)
            rid = engine.add_request(list(a.prompt), a.max_new_tokens, priority=a.priority)
            ids[rid] = a
            added.add(rid)
        if engine.has_unfinished():
            prev_running = {r.request_id for r in engine.running}
            record = engine.step()
            check_step(engine, record, added, finished, computed, engine.budget, prev_running)
            if not scenario.budgets:
                assert record.plan.budget == scenario.config.max_tokens_per_step
        tick += 1

    assert sorted(finished) == sorted(ids), "not every request finished exactly once"
    assert not engine.kv.lengths, "KV still held after every request finished"
    if isinstance(engine.kv, PagedAllocator):
        parked = list(engine.kv.prefix.evictable) if engine.kv.prefix else []
        assert sorted(engine.kv.free_blocks + parked) == list(range(engine.kv.num_blocks)), "blocks leaked"
        assert not engine.kv.block_tables and not any(engine.kv.ref_counts)
    else:
        assert not engine.kv.ranges, "dense ranges leaked"
    for rid, a in ids.items():
        out = engine.output(rid)
        assert tuple(out) == alone(a.prompt, a.max_new_tokens, scenario.config.eos_token_id), f"request {rid}"
        eos = scenario.config.eos_token_id
        assert len(out) == a.max_new_tokens or (out[-1] == eos and eos not in out[:-1])


@PROPERTY_SETTINGS
@given(scenarios())
def test_every_step_keeps_the_promises(scenario: Scenario) -> None:
    serve(scenario)


@PROPERTY_SETTINGS
@given(scenarios(vary_budget=True))
def test_promises_hold_when_a_plugin_changes_the_budget(scenario: Scenario) -> None:
    serve(scenario)


def test_the_reference_is_not_trivial() -> None:
    """Different prompts give different outputs, so output equality can catch a mix-up between requests."""
    outs = {alone(tuple(p), 6, None) for p in ([1, 2, 3], [4, 5], [7], [0, 9, 9, 9], [18, 17])}
    assert len(outs) >= 4
