"""The priority policy: what it guarantees (admission order) and what it does not (no preemption
of running work without preemption enabled, and low priority can wait as long as high keeps coming)."""

from __future__ import annotations

from cblab_teach import Engine, EngineConfig

from .helpers import run_alone


def _first_token_step(engine, rid):
    return next(r.step for r in engine.records if rid in r.sampled)


def test_high_priority_is_admitted_first_among_waiting(model64):
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, max_running=1, policy="priority")
    )
    low = engine.add_request([1, 2, 3], 3, priority=5)
    high = engine.add_request([4, 5, 6], 3, priority=0)
    engine.run()
    assert _first_token_step(engine, high) < _first_token_step(engine, low)
    assert engine.output(low) == run_alone(model64, [1, 2, 3], 3)


def test_fcfs_ignores_priority(model64):
    engine = Engine(model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, max_running=1))
    low = engine.add_request([1, 2, 3], 3, priority=5)
    high = engine.add_request([4, 5, 6], 3, priority=0)
    engine.run()
    assert _first_token_step(engine, low) < _first_token_step(engine, high)


def test_priority_does_not_preempt_running_work(model64):
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, max_running=1, policy="priority")
    )
    low = engine.add_request([1, 2, 3], 6, priority=5)
    engine.step()
    high = engine.add_request([4, 5, 6], 3, priority=0)
    engine.run()
    assert engine.records[-1].finished == [high]  # it waited for the running low-priority request
    assert len(engine.output(low)) == 6


def test_low_priority_waits_while_high_priority_keeps_arriving(model64):
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, max_running=1, policy="priority")
    )
    low = engine.add_request([1, 2], 1, priority=9)
    for i in range(5):
        engine.add_request([3 + i, 4], 1, priority=0)
        engine.step()
    assert engine.output(low) == []  # starved so far: priority is not fairness
    engine.run()
    assert len(engine.output(low)) == 1
