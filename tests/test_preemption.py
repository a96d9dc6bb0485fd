"""Preemption: a pool far too small still serves everyone, with the same outputs and no leaked block."""

from __future__ import annotations

import pytest

from cblab_teach import ConfigError, Engine, EngineConfig
from cblab_teach.workloads import make_workload

from .helpers import run_alone


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


def test_preemption_needs_paged_kv():
    with pytest.raises(ConfigError, match="preemption"):
        EngineConfig(kv_layout="dense", preemption=True)
