"""Parallel sampling: n sequences of one prompt share its KV blocks; a shared block is copied on its first write."""

from __future__ import annotations

import dataclasses

import pytest

from cblab_teach import CapacityError, Engine, EngineConfig, RequestError, SamplingParams

from .reference import greedy

PROMPT = list(range(3, 13))  # 10 tokens: with blocks of 4, the last prompt block is partly filled
SAMPLING = SamplingParams(temperature=0.9, top_k=30, seed=11)


def alone(model, prompt, n, max_new_tokens, sampling=SAMPLING) -> list[list[int]]:
    """Each sequence of a group is the request added alone with seed + i."""
    return [
        Engine(model, EngineConfig()).generate([prompt], max_new_tokens, [dataclasses.replace(sampling, seed=sampling.seed + i)])[0]
        for i in range(n)
    ]


def run_checked(engine: Engine) -> None:
    pool = getattr(engine.kv, "num_blocks", None)
    while engine.has_unfinished():
        before = {rid: r.num_computed for rid, r in engine.requests.items()}
        record = engine.step()
        plan = record.plan
        assert plan.used <= plan.budget and len(set(plan.request_ids)) == len(plan.chunks)
        assert all(c.start == plan.cached_tokens.get(c.request_id, before[c.request_id]) for c in plan.chunks)
        if pool is not None:  # every block is free or referenced, and counted as often as tables hold it
            refs = {}
            for table in record.block_tables.values():
                for b in table:
                    refs[b] = refs.get(b, 0) + 1
            assert all(engine.kv.ref_counts[b] == n for b, n in refs.items())
            assert len(refs) + engine.kv.num_free_blocks == pool
    if pool is not None:
        assert engine.kv.num_free_blocks == pool and not engine.kv.block_tables


CONFIGS = {
    "paged": EngineConfig(block_size=4, num_blocks=40),
    "dense": EngineConfig(kv_layout="dense", num_blocks=64),
    "prefix-cache": EngineConfig(block_size=4, num_blocks=40, enable_prefix_caching=True),
    "tight-recompute": EngineConfig(block_size=4, num_blocks=12, max_tokens_per_step=8, preemption=True),
    "tight-swap": EngineConfig(block_size=4, num_blocks=12, max_tokens_per_step=8, preemption="swap"),
    "chunk-1": EngineConfig(block_size=2, num_blocks=80, max_tokens_per_step=6, prefill_chunk_size=1),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_each_sequence_equals_the_request_alone(model64, name):
    engine = Engine(model64, CONFIGS[name])
    other = engine.add_request(list(range(20, 33)), 7)  # a neighbour joins the batch
    ids = engine.add_request_group(PROMPT, 4, max_new_tokens=9, sampling=SAMPLING)
    run_checked(engine)
    assert [engine.output(i) for i in ids] == alone(model64, PROMPT, 4, 9)
    assert engine.output(other) == greedy(model64, list(range(20, 33)), 7)
    if name.startswith("tight"):
        assert engine.stats.preemptions > 0  # the pool really was too small


def test_greedy_group_is_n_copies_of_the_greedy_output(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40, speculative="ngram"))
    ids = engine.add_request_group(PROMPT, 3, max_new_tokens=8)
    run_checked(engine)
    assert [engine.output(i) for i in ids] == [greedy(model64, PROMPT, 8)] * 3


def test_forks_share_the_prompt_blocks_and_copy_the_partly_filled_one(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40, prefill_chunk_size=32))
    ids = engine.add_request_group(PROMPT, 4, max_new_tokens=5, sampling=SAMPLING)
    fork_step = engine.step()  # the whole prompt, then the first sample: the forks join
    assert fork_step.forked == {ids[0]: ids[1:]}
    tables = [fork_step.block_tables[i] for i in ids]
    assert all(t == tables[0] for t in tables) and len(tables[0]) == 3  # 10 tokens in blocks of 4, shared
    assert [engine.kv.ref_counts[b] for b in tables[0]] == [4, 4, 4]
    write_step = engine.step()  # everyone writes position 10, in the shared third block
    copies = [pair for pairs in write_step.copied_blocks.values() for pair in pairs]
    assert len(copies) == 3 and {old for old, _ in copies} == {tables[0][2]}  # n - 1 copies; the last writes in place
    after = [write_step.block_tables[i] for i in ids]
    assert all(t[:2] == tables[0][:2] for t in after)  # the full blocks stay shared
    assert len({t[2] for t in after}) == 4  # the third block is now private to each
    assert engine.kv.ref_counts[tables[0][0]] == 4
    run_checked(engine)
    assert engine.stats.cow_copies == 3


def test_a_prompt_of_whole_blocks_needs_no_copy(model64):
    engine = Engine(model64, EngineConfig(block_size=5, num_blocks=40))
    engine.add_request_group(PROMPT, 4, max_new_tokens=6, sampling=SAMPLING)
    run_checked(engine)
    assert engine.stats.cow_copies == 0  # position 10 starts a fresh block for each


def test_a_group_uses_fewer_blocks_than_separate_requests(model64):
    prompt = list(range(1, 41))  # 40 tokens: 10 blocks shared instead of 10 per sequence

    def peak_blocks(group: bool) -> int:
        engine = Engine(model64, EngineConfig(block_size=4, num_blocks=200, prefill_chunk_size=64))
        if group:
            engine.add_request_group(prompt, 4, max_new_tokens=6, sampling=SAMPLING)
        else:
            for i in range(4):
                engine.add_request(prompt, 6, sampling=dataclasses.replace(SAMPLING, seed=SAMPLING.seed + i))
        return max(len({b for t in r.block_tables.values() for b in t}) for r in engine.run())

    shared, separate = peak_blocks(True), peak_blocks(False)
    # the peak is before the last step: 40 + 4 tokens held = 11 blocks each, of which the prompt's 10 are shared
    assert separate == 4 * 11 and shared == 10 + 4 * 1
    assert shared < separate


def test_reservation_covers_every_copy(model64):
    """Without preemption a group reserves its worst case: a pool of exactly that size never runs dry."""
    need = 4 * -(-(len(PROMPT) + 9 - 1) // 4)  # 4 sequences x blocks of 18 tokens
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=need))
    ids = engine.add_request_group(PROMPT, 4, max_new_tokens=9, sampling=SAMPLING)
    run_checked(engine)
    assert [engine.output(i) for i in ids] == alone(model64, PROMPT, 4, 9)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(n=0), RequestError, r"n must be an int >= 1, got 0"),
        (dict(n=2.0), RequestError, r"n must be an int >= 1, got 2\.0"),
        (dict(n=9), RequestError, r"n=9 sequences cannot run together: at most min\(max_running, max_tokens_per_step\) = 8"),
        (dict(n=4, max_new_tokens=30), CapacityError, r"a group of 4 needs up to 40 KV blocks reserved but the whole pool has 30"),
        (dict(n=2, prompt_ids=[1.5, 2]), RequestError, r"token ids must be integers, got 1\.5"),
    ],
)
def test_bad_groups_are_refused_and_the_others_carry_on(model64, kwargs, error, message):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=30, max_tokens_per_step=8))
    keep = engine.add_request(PROMPT, 5)
    with pytest.raises(error, match=message):
        engine.add_request_group(**{"prompt_ids": PROMPT, **kwargs})
    assert len(engine.requests) == 1
    engine.run()
    assert engine.output(keep) == greedy(model64, PROMPT, 5)


def test_a_group_of_one_is_a_plain_request(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40))
    [rid] = engine.add_request_group(PROMPT, 1, max_new_tokens=6, sampling=SAMPLING)
    run_checked(engine)
    assert engine.output(rid) == alone(model64, PROMPT, 1, 6)[0] and engine.stats.cow_copies == 0


def test_a_group_as_large_as_the_budget_runs(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=60, max_tokens_per_step=4, prefill_chunk_size=4))
    ids = engine.add_request_group(PROMPT, 4, max_new_tokens=3, sampling=SAMPLING)
    run_checked(engine)
    assert [engine.output(i) for i in ids] == alone(model64, PROMPT, 4, 3)


def test_forks_that_finish_at_their_first_token_free_everything(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40))
    ids = engine.add_request_group(PROMPT, 3, max_new_tokens=1, sampling=SAMPLING)
    record = engine.step()
    assert sorted(record.finished) == ids and not engine.has_unfinished()
    assert engine.kv.num_free_blocks == 40 and not engine.kv.block_tables
    assert [engine.output(i) for i in ids] == alone(model64, PROMPT, 3, 1)
    times = [engine.request(i).token_times for i in ids]
    assert all(len(t) == 1 for t in times) and len({t[0] for t in times}) == 1  # one sample, one time, for all


def test_a_group_keeps_its_priority_and_end_token(model64):
    first_tokens = [out[0] for out in alone(model64, PROMPT, 3, 4)]
    eos = first_tokens[1]  # the second sequence's first token ends it at once
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40, policy="priority"))
    ids = engine.add_request_group(PROMPT, 3, max_new_tokens=4, sampling=SAMPLING, priority=3, eos_token_id=eos)
    assert {engine.request(i).priority for i in ids} == {3}
    engine.run()
    assert engine.output(ids[1]) == [eos]
    assert all(engine.output(i)[-1] == eos or len(engine.output(i)) == 4 for i in ids)


def test_the_group_reservation_is_the_exact_worst_case(model64):
    """10 + 8 - 1 = 17 tokens: 5 blocks of 4 per sequence, 20 for four; 19 cannot hold the group."""
    with pytest.raises(CapacityError, match=r"a group of 4 needs up to 20 KV blocks reserved but the whole pool has 19"):
        Engine(model64, EngineConfig(block_size=4, num_blocks=19)).add_request_group(PROMPT, 4, max_new_tokens=8)
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=20))
    ids = engine.add_request_group(PROMPT, 4, max_new_tokens=8, sampling=SAMPLING)
    run_checked(engine)
    assert [engine.output(i) for i in ids] == alone(model64, PROMPT, 4, 8)


def test_preemption_mode_forks_promise_nothing(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40, preemption=True))
    ids = engine.add_request_group(PROMPT, 3, max_new_tokens=5, sampling=SAMPLING)
    engine.step()
    assert [engine.kv.reserved_blocks[i] for i in ids] == [0, 0, 0]  # optimistic: blocks are taken as needed
    engine2 = Engine(model64, EngineConfig(block_size=4, num_blocks=40))
    ids2 = engine2.add_request_group(PROMPT, 3, max_new_tokens=5, sampling=SAMPLING)
    engine2.step()
    assert [engine2.kv.reserved_blocks[i] for i in ids2] == [4, 5, 5]  # 14 tokens: 4 blocks, +1 for each fork's copy


def test_only_the_forking_request_is_recorded_as_forked(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40, prefill_chunk_size=32))
    other = engine.add_request([5, 6, 7], 4)
    ids = engine.add_request_group(PROMPT, 2, max_new_tokens=3, sampling=SAMPLING)
    records = engine.run()
    assert [r.forked for r in records if r.forked] == [{ids[0]: ids[1:]}]
    assert any(other in r.sampled for r in records)  # it sampled in those steps, and never forked


def test_a_group_reserves_the_worst_case_of_every_sequence_when_admitted(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40, prefill_chunk_size=4))
    ids = engine.add_request_group(PROMPT, 2, max_new_tokens=5, sampling=SAMPLING)
    engine.step()  # admitted, first chunk of the prompt: no fork yet
    assert engine.kv.reserved_blocks[ids[0]] == 2 * engine.kv.blocks_for(len(PROMPT) + 5 - 1)


def test_every_request_is_recorded_finished_once_and_records_carry_its_tokens(model64):
    """A request that finishes in the step where a group forks is still reported finished (the fork adds to the
    step's finished list, it does not replace it), and each record's new tokens are the ones each request kept."""
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=40, prefill_chunk_size=32))
    other = engine.add_request([5, 6, 7], 1)  # finishes at its first sample, the step the group forks
    ids = engine.add_request_group(PROMPT, 2, max_new_tokens=3, sampling=SAMPLING)
    records = engine.run()
    assert records[0].forked and other in records[0].finished
    finished = [rid for r in records for rid in r.finished]
    assert sorted(finished) == sorted([other, *ids])
    for rid in [other, *ids]:
        assert [t for r in records for t in r.new_tokens.get(rid, [])] == engine.output(rid)
