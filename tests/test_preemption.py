"""Preemption: a pool far too small still serves everyone, with the same outputs and no leaked block."""

from __future__ import annotations

import pytest

from cblab_teach import ConfigError, Engine, EngineConfig, PagedAllocator, Request, Scheduler
from cblab_teach.core.scheduler import BlockLedger, ScheduledChunk, StepPlan
from cblab_teach.workloads import make_workload

from .helpers import run_alone
from .reference import greedy


@pytest.fixture(scope="module")
def tight():
    w = make_workload(10, (1, 28), (1, 18), vocab_size=97, seed=5)
    return w


@pytest.mark.parametrize("num_blocks", [12, 15, 24])
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_tiny_pool_same_outputs_no_leak(model64, tight, num_blocks, policy):
    alone = [run_alone(model64, p, n) for p, n in zip(tight.prompts, tight.max_new_tokens)]
    cfg = EngineConfig(
        max_tokens_per_step=16,
        prefill_chunk_size=8,
        block_size=4,
        num_blocks=num_blocks,
        preemption=True,
        policy=policy,
    )
    engine = Engine(model64, cfg)
    ids = [
        engine.add_request(p, n, priority=i % 3) for i, (p, n) in enumerate(zip(tight.prompts, tight.max_new_tokens))
    ]
    while engine.has_unfinished():
        record = engine.step()
        owned = [b for t in record.block_tables.values() for b in t]
        assert len(owned) == len(set(owned)) and len(owned) + engine.kv.num_free_blocks == num_blocks
        for rid in record.preempted:  # a preempted request holds no KV and waits
            assert rid not in engine.kv.block_tables and rid in record.waiting
    assert [engine.output(i) for i in ids] == alone
    assert engine.stats.preemptions > 0 and engine.stats.recomputed_tokens > 0  # the pool really was too small
    assert engine.kv.num_free_blocks == num_blocks and not engine.kv.block_tables


def test_fewer_preemptions_with_a_bigger_pool(model64, tight):
    counts = []
    for num_blocks in (12, 20, 80):
        engine = Engine(
            model64,
            EngineConfig(
                max_tokens_per_step=16, prefill_chunk_size=8, block_size=4, num_blocks=num_blocks, preemption=True
            ),
        )
        engine.generate(tight.prompts, tight.max_new_tokens)
        counts.append(engine.stats.preemptions)
    assert counts[0] > counts[1] >= counts[2] == 0


def test_newest_is_preempted_first(model64):
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, block_size=2, num_blocks=6, preemption=True)
    )
    old = engine.add_request([1, 2, 3, 4], 8)
    new = engine.add_request([5, 6, 7, 8], 8)
    preempted = []
    while engine.has_unfinished():
        preempted += engine.step().preempted
    assert preempted and set(preempted) == {new}
    assert engine.request(old).num_preemptions == 0


def test_a_preempted_victim_refunds_the_blocks_planned_for_it():
    """Pool of 3 blocks (2 tokens each). B (newest, decoding) is planned first and takes the last free block;
    then A's prefill chunk needs 2 more. Preempting B frees its held block *and* the one planned for it: 2,
    enough. So exactly one preemption is needed; a ledger that forgot the planned block would preempt A too."""
    kv = PagedAllocator(1, 1, 2, num_blocks=3, block_size=2)
    a = Request(0, list(range(1, 11)), 4, arrival=0)  # prefilling: 2 of 10 prompt tokens computed
    b = Request(1, [1, 2], 4, arrival=1)  # decoding: its 3rd token needs a second block
    b.output_ids, b.num_computed = [3], 2
    a.last_scheduled_step, b.last_scheduled_step = 0, 0
    for r in (a, b):
        r.num_computed = 2
        kv.admit(r.request_id, r.max_total_tokens, reserve=False)
        kv.ensure(r.request_id, 2)
    assert kv.num_free_blocks == 1
    plan = Scheduler(16, 4).plan([a, b], [], kv, preemption=True)
    assert plan.preempted == [1]
    assert [(c.request_id, c.start, c.length) for c in plan.chunks] == [(0, 2, 4)]
    assert kv.blocks_needed(0, 6) == 2 == kv.num_free_blocks + kv.blocks_released_by(1) - 0


def test_preemptions_are_only_the_needed_ones(model64):
    """Two requests that each need the whole pool at the end: they can only take turns, so every preemption
    happens when the pool is really full (the victim's blocks were needed), never more than one per step."""
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, block_size=2, num_blocks=6, preemption=True)
    )
    ids = [engine.add_request([1, 2, 3, 4], 8), engine.add_request([5, 6, 7, 8], 8)]
    recomputed, times = 0, dict.fromkeys(ids, 0)
    while engine.has_unfinished():
        free_before = engine.kv.num_free_blocks
        running_before = {r.request_id: r.num_computed for r in engine.running}
        record = engine.step()
        assert len(record.preempted) <= 1
        if record.preempted:
            victim = record.preempted[0]
            recomputed, times[victim] = recomputed + running_before[victim], times[victim] + 1
            assert engine.requests[victim].state.value == "waiting" and engine.requests[victim].num_computed == 0
            survivor = [r for r in running_before if r != victim]
            assert survivor, "the only running request preempted itself"
            need = sum(engine.kv.blocks_for(running_before[r] + 1) for r in survivor) - sum(
                engine.kv.blocks_for(running_before[r]) for r in survivor
            )
            assert need > free_before, f"step {record.step}: preempted {victim} though {free_before} blocks were free"
    assert [engine.output(i) for i in ids] == [greedy(model64, [1, 2, 3, 4], 8), greedy(model64, [5, 6, 7, 8], 8)]
    assert engine.stats.preemptions == sum(times.values()) >= 1
    assert engine.stats.recomputed_tokens == recomputed  # every token the victims had computed, counted once
    assert {i: engine.requests[i].num_preemptions for i in ids} == times


def test_preemption_counters_add_up_when_a_request_is_preempted_twice(model64):
    """Three requests that each need most of the pool: the newest is preempted twice (once by an older request,
    once by itself when its next chunk cannot fit). Each counter is a sum over every preemption."""
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, block_size=2, num_blocks=6, preemption=True)
    )
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 8, 7, 6]]
    ids = [engine.add_request(p, 8) for p in prompts]
    recomputed, times = 0, dict.fromkeys(ids, 0)
    while engine.has_unfinished():
        computed = {r.request_id: r.num_computed for r in engine.running}
        for victim in engine.step().preempted:
            recomputed, times[victim] = recomputed + computed[victim], times[victim] + 1
    assert max(times.values()) >= 2, times
    assert engine.stats.preemptions == sum(times.values())
    assert engine.stats.recomputed_tokens == recomputed
    assert {i: engine.requests[i].num_preemptions for i in ids} == times
    assert [engine.output(i) for i in ids] == [greedy(model64, p, 8) for p in prompts]


def test_preemption_needs_paged_kv():
    with pytest.raises(ConfigError, match="preemption"):
        EngineConfig(kv_layout="dense", preemption=True)


def test_the_ledger_preempts_newest_first_and_takes_back_what_it_planned_for_them():
    """Pool of 4 blocks (2 tokens each), three running requests holding one each, one free."""
    kv = PagedAllocator(1, 1, 2, num_blocks=4, block_size=2)
    reqs = [Request(i, [1, 2], 8, arrival=i) for i in range(3)]
    for r in reqs:
        r.num_computed = 2
        kv.admit(r.request_id, 8, reserve=False)
        kv.ensure(r.request_id, 2)
    ledger = BlockLedger(kv, reqs, order_key=lambda r: r.arrival)
    plan = StepPlan(16, [ScheduledChunk(2, 2, 1, "decode", True), ScheduledChunk(2, 3, 2, "prefill", False)])
    assert ledger.take(reqs[1], 4, plan) == (True, 0) and ledger.free == 0  # the free block, planned for request 1
    # request 0 needs 3 blocks: request 2 goes (its block back, both its chunks' tokens refunded), then request 1
    # (its held block and the one just planned for it)
    assert ledger.take(reqs[0], 8, plan) == (True, 3)
    assert ledger.preempted == [reqs[2], reqs[1]] and plan.chunks == [] and ledger.free == 0

    alone = BlockLedger(kv, [reqs[0]], order_key=lambda r: r.arrival)
    assert alone.take(reqs[0], 10, StepPlan(16)) == (False, 0)  # it would have to preempt itself: it waits
    assert alone.take(reqs[0], 10, StepPlan(16)) == (False, 0)  # no victim left at all
