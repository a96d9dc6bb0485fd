"""Swap preemption: a victim's K/V goes to the host pool and comes back; outputs never change, nothing leaks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cblab_teach import ConfigError, Engine, EngineConfig, SamplingParams
from cblab_teach.core.swap import HostKVPool
from cblab_teach.errors import KVCacheError
from cblab_teach.workloads import make_workload

from .helpers import run_alone
from .reference import greedy


@pytest.fixture(scope="module")
def tight():
    return make_workload(10, (1, 28), (1, 18), vocab_size=97, seed=5)


@pytest.fixture(scope="module")
def expected(model64, tight):
    return [greedy(model64, p, n) for p, n in zip(tight.prompts, tight.max_new_tokens)]


def swap_config(num_blocks: int, num_host_blocks: int = 64, **kw) -> EngineConfig:
    return EngineConfig(
        max_tokens_per_step=16, prefill_chunk_size=8, block_size=4, num_blocks=num_blocks,
        preemption="swap", num_host_blocks=num_host_blocks, **kw,
    )


def serve(engine: Engine, workload) -> tuple[list[int], list[dict[int, int]]]:
    """Run to the end, checking the pools every step; returns the ids and, per step, the tokens each running
    request held before it."""
    ids = [engine.add_request(p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]
    pool = engine.kv.num_blocks
    held = []
    while engine.has_unfinished():
        held.append({r.request_id: r.num_computed for r in engine.running})
        record = engine.step()
        owned = [b for t in record.block_tables.values() for b in t]
        assert len(owned) == len(set(owned)) and len(owned) + engine.kv.num_free_blocks == pool
        for rid in record.swapped:  # parked on the host, holding no device KV, waiting
            assert engine.swap.holds(rid) and rid not in engine.kv.block_tables and rid in record.waiting
            assert engine.request(rid).num_computed == held[-1][rid]  # it keeps its place
    return ids, held


@pytest.mark.parametrize("num_blocks", [12, 15])
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_swap_keeps_outputs_and_recomputes_nothing(model64, tight, expected, num_blocks, policy):
    engine = Engine(model64, swap_config(num_blocks, policy=policy))
    ids, _ = serve(engine, tight)
    assert [engine.output(i) for i in ids] == expected
    s = engine.stats
    assert s.preemptions > 0 and s.swap_outs == s.preemptions  # every victim fitted the host pool
    assert s.recomputed_tokens == 0
    assert s.swapped_out_bytes == s.swapped_in_bytes > 0  # everything that went out came back
    assert engine.swap.used_blocks == 0 and not engine.swap.tables  # the host pool is empty again
    assert engine.kv.num_free_blocks == num_blocks and not engine.kv.block_tables


def test_swapped_bytes_are_the_victims_tokens(model64, tight):
    """Bytes out = tokens parked x bytes per token (every layer's K and V), counted from the records."""
    engine = Engine(model64, swap_config(12))
    _, held = serve(engine, tight)
    parked_tokens = sum(before[rid] for before, record in zip(held, engine.records) for rid in record.swapped)
    assert parked_tokens > 0
    assert engine.stats.swapped_out_bytes == parked_tokens * engine.kv.bytes_per_slot


def test_resumed_request_starts_where_it_stopped(model64, tight):
    """After a swap-in, the request's first chunk starts at the tokens it had, not at 0."""
    engine = Engine(model64, swap_config(12))
    _, held = serve(engine, tight)
    parked = {}
    resumed = 0
    for before, record in zip(held, engine.records):
        for c in record.plan.chunks:
            if c.request_id in parked and c.request_id in record.plan.admitted:
                assert c.start == parked.pop(c.request_id) > 0
                resumed += 1
        for rid in record.swapped:
            parked[rid] = before[rid]
    assert resumed > 0 and not parked


def test_a_host_pool_too_small_falls_back_to_recompute(model64, tight, expected):
    engine = Engine(model64, swap_config(12, num_host_blocks=3))
    ids, _ = serve(engine, tight)
    assert [engine.output(i) for i in ids] == expected  # nobody lost
    s = engine.stats
    assert s.swap_outs > 0 and s.recomputed_tokens > 0 and s.swap_outs < s.preemptions
    assert engine.swap.used_blocks == 0
    line = repr(s)  # the one line the README prints: both kinds of preemption, each with its cost
    assert line.startswith(f"EngineStats: {s.preemptions} preemptions ({s.recomputed_tokens} tokens recomputed, ")
    assert f"{s.swap_outs} swapped out ({s.swapped_out_bytes:,} bytes))" in line and s.swapped_out_bytes >= 1000
    assert "swapped" not in repr(Engine(model64).stats)  # no swap, no word of it


def test_swap_with_prefix_caching_speculation_and_sampling(model64, tight):
    shared = list(range(1, 9))
    prompts = [shared + p[:10] for p in tight.prompts]
    sampling = [SamplingParams(temperature=0.8, top_k=20, seed=i) if i % 2 else None for i in range(len(prompts))]
    lengths = tight.max_new_tokens
    alone = [
        Engine(model64, EngineConfig()).generate([p], n, sampling=[s])[0] for p, n, s in zip(prompts, lengths, sampling)
    ]
    engine = Engine(
        model64, swap_config(14, enable_prefix_caching=True, speculative="ngram", num_speculative_tokens=3)
    )
    assert engine.generate(prompts, lengths, sampling=sampling) == alone
    assert engine.stats.swap_outs > 0 and engine.stats.prefix_hit_tokens > 0
    assert engine.swap.used_blocks == 0 and not engine.kv.block_tables


def test_swap_and_recompute_give_the_same_tokens(model64, tight):
    outs = {}
    for mode in ("recompute", "swap"):
        engine = Engine(model64, dataclasses.replace(swap_config(12), preemption=mode))
        outs[mode] = engine.generate(tight.prompts, tight.max_new_tokens)
        assert engine.stats.preemptions > 0
    alone = [run_alone(model64, p, n) for p, n in zip(tight.prompts, tight.max_new_tokens)]
    assert outs["swap"] == outs["recompute"] == alone


def test_host_pool_round_trip_is_exact(model64):
    engine = Engine(model64, EngineConfig(block_size=4, num_blocks=8))
    rid = engine.add_request(list(range(1, 12)), 2)
    engine.step()
    k_before, v_before = engine.kv.gather(0, rid)
    pool = HostKVPool(*engine.kv.k.shape[:1], *engine.kv.k.shape[2:], 4, 3, dtype=engine.kv.k.dtype)
    n = engine.request(rid).num_computed
    nbytes = pool.swap_out(engine.kv, rid, n)
    assert nbytes == n * engine.kv.bytes_per_slot
    engine.kv.free(rid)
    engine.kv.k.normal_()  # whatever the device pool held is gone
    engine.kv.admit(rid, 13)
    assert pool.swap_in(engine.kv, rid) == (n, nbytes)
    k_after, v_after = engine.kv.gather(0, rid)
    assert torch.equal(k_after, k_before) and torch.equal(v_after, v_before)
    with pytest.raises(KVCacheError, match="not swapped out"):
        pool.swap_in(engine.kv, rid)
    with pytest.raises(KVCacheError, match="host pool has 4 free blocks, request 7 needs 5"):
        pool.swap_out(engine.kv, 7, 13)
    pool.swap_out(engine.kv, rid, n)
    table = pool.tables[rid]  # position i sits at offset i % 3 of host block table[i // 3]
    for i in range(n):
        assert torch.equal(pool.k[:, table[i // 3] * 3 + i % 3], engine.kv.k[:, engine.kv.slots([rid], torch.zeros(1, dtype=torch.long), torch.tensor([i]))[0]])
    with pytest.raises(KVCacheError, match=f"request {rid} is already swapped out"):
        pool.swap_out(engine.kv, rid, n)


@pytest.mark.parametrize(("blocks", "block_size"), [(0, 4), (4, 0), (0, 0)])
def test_a_host_pool_needs_blocks(blocks, block_size):
    with pytest.raises(ConfigError, match=f"a host pool needs num_blocks and block_size >= 1, got {blocks} and {block_size}"):
        HostKVPool(2, 2, 8, blocks, block_size)
    assert HostKVPool(2, 2, 8, 1, 1).k.shape == (2, 1, 2, 8)  # one block of one token is a pool


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(preemption="swap", num_host_blocks=0), r"num_host_blocks must be an int >= 1, got 0"),
        (dict(preemption="swap", num_host_blocks=2.5), r"num_host_blocks must be an int >= 1, got 2\.5"),
        (dict(preemption="swap", kv_layout="dense"), r"preemption='swap' needs kv_layout='paged', got 'dense'"),
        (dict(preemption="evict"), r"preemption must be one of \(False, True, 'recompute', 'swap'\), got 'evict'"),
    ],
)
def test_bad_swap_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig(**kwargs)


@pytest.mark.parametrize(("device", "pinned"), [("cpu", False), ("cuda", True), ("cuda:1", True)])
def test_a_gpu_engine_parks_kv_in_pinned_host_memory(model64, monkeypatch, device, pinned):
    """Pinned pages let a GPU copy K/V to the host asynchronously; a CPU engine has nothing to pin (and CPU-only
    torch refuses to pin), so the request is recorded on ``torch.zeros`` rather than run."""
    import cblab_teach.core.engine as engine_module

    asked: list[bool] = []
    real_zeros = torch.zeros

    def zeros(*shape, pin_memory=False, **kw):
        asked.append(pin_memory)
        return real_zeros(*shape, **kw)

    monkeypatch.setattr(torch, "zeros", zeros)
    config, cfg = EngineConfig(preemption="swap", num_host_blocks=3, device=device), model64.config
    pool = engine_module.make_host_pool(model64, config)
    assert asked == [pinned, pinned]  # K and V
    assert pool.k.shape == pool.v.shape == (cfg.num_layers, 3 * config.block_size, cfg.kv_heads, cfg.head_dim)
    assert engine_module.make_host_pool(model64, EngineConfig(device=device)) is None  # recompute: no host pool


def test_a_victim_with_one_computed_token_is_swapped_too(model64):
    """Blocks of one token, three of them: B's one-token prompt is computed, then A's decode needs B's block.
    B holds K/V for one token, and that one is parked and brought back, not recomputed."""
    engine = Engine(model64, dataclasses.replace(swap_config(num_blocks=3), block_size=1))
    a, b = engine.add_request([1, 2], 2), engine.add_request([3], 2)
    computed_before = {}
    while engine.has_unfinished():
        computed_before = {r.request_id: r.num_computed for r in engine.running}
        if engine.step().preempted:
            break
    assert engine.waiting and engine.waiting[0].request_id == b and computed_before[b] == 1
    engine.run()
    assert (engine.stats.swap_outs, engine.stats.preemptions, engine.stats.recomputed_tokens) == (1, 1, 0)
    assert [engine.output(a), engine.output(b)] == [greedy(model64, [1, 2], 2), greedy(model64, [3], 2)]
