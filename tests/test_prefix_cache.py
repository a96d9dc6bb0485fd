"""Prefix caching: shared prompt blocks are reused by reference, outputs stay identical."""

from __future__ import annotations

import pytest

from cblab_teach import ConfigError, Engine, EngineConfig, PagedAllocator
from cblab_teach.core.prefix_cache import PrefixIndex, block_digests
from cblab_teach.workloads import make_workload

from .helpers import run_alone
from .reference import greedy

SYSTEM = [(5 * i + 2) % 97 for i in range(21)]


@pytest.fixture(scope="module")
def chat():
    w = make_workload(8, (1, 9), (1, 8), vocab_size=97, seed=9)
    return [SYSTEM + p for p in w.prompts], w.max_new_tokens


def test_digests_are_chained():
    a = block_digests([1, 2, 3, 4, 5, 6], 2)
    b = block_digests([9, 9, 3, 4, 5, 6], 2)
    assert len(a) == 3 and a[0] != b[0] and a[1] != b[1]  # same tokens, different prefix: different name
    assert block_digests([1, 2, 3, 4, 5], 2) == a[:2]  # only full blocks are named


@pytest.mark.parametrize("block_size", [1, 4, 7])
def test_shared_system_prompt_saves_prefill_and_keeps_outputs(model64, chat, block_size):
    prompts, n = chat
    alone = [run_alone(model64, p, m) for p, m in zip(prompts, n)]
    base = EngineConfig(max_tokens_per_step=24, prefill_chunk_size=8, block_size=block_size, num_blocks=200)
    plain = Engine(model64, base)
    cached = Engine(model64, EngineConfig(**{**vars(base), "enable_prefix_caching": True}))
    for engine in (plain, cached):  # the first conversation warms the cache, the rest arrive after
        ids = [engine.add_request(prompts[0], n[0])]
        while not engine.output(ids[0]):
            engine.step()
        ids += [engine.add_request(p, m) for p, m in zip(prompts[1:], n[1:])]
        engine.run()
        assert [engine.output(i) for i in ids] == alone
    saved = cached.stats.prefix_hit_tokens
    full_blocks = len(SYSTEM) // block_size * block_size
    assert saved >= (len(prompts) - 1) * full_blocks  # every later request found the system prompt
    prefill = lambda e: sum(r.plan.prefill_tokens for r in e.records)  # noqa: E731
    assert prefill(plain) - prefill(cached) == saved


def test_blocks_are_shared_by_reference_and_returned(model64, chat):
    prompts, n = chat
    engine = Engine(
        model64,
        EngineConfig(
            max_tokens_per_step=64, prefill_chunk_size=64, block_size=4, num_blocks=80, enable_prefix_caching=True
        ),
    )
    first = engine.add_request(prompts[0], 8)
    engine.step()
    second = engine.add_request(prompts[1], 8)
    engine.step()
    t1, t2 = engine.kv.block_tables[first], engine.kv.block_tables[second]
    shared = len(SYSTEM) // 4
    assert t1[:shared] == t2[:shared]
    assert all(engine.kv.ref_counts[b] == 2 for b in t1[:shared])
    engine.run()
    assert engine.kv.num_free_blocks == 80 and all(c == 0 for c in engine.kv.ref_counts)
    assert len(engine.kv.prefix.evictable) > 0  # still findable after both finished


def test_cached_blocks_survive_until_evicted(model64):
    engine = Engine(
        model64, EngineConfig(block_size=4, num_blocks=8, enable_prefix_caching=True, max_tokens_per_step=32)
    )
    prompt = list(range(10, 23))
    engine.generate([prompt], 2)
    engine.generate([prompt], 2)
    assert engine.stats.prefix_hit_tokens == 12  # three full blocks found again
    engine.generate([list(range(50, 79))], 2)  # needs the whole pool: evicts the cached blocks
    assert engine.kv.prefix.evictions > 0
    before = engine.stats.prefix_hit_tokens
    assert engine.generate([prompt], 2) == [run_alone(model64, prompt, 2)]
    assert engine.stats.prefix_hit_tokens == before  # gone, recomputed


@pytest.mark.parametrize("block_size", [1, 3, 4, 12])
def test_a_repeated_prompt_of_whole_blocks_still_computes_its_last_token(model64, block_size):
    """12 tokens fill whole blocks; the second run reuses all but the block holding the last prompt token,
    whose logits give the first new token."""
    prompt = [(11 * i + 4) % 97 for i in range(12)]
    ref = greedy(model64, prompt, 5)
    engine = Engine(model64, EngineConfig(block_size=block_size, num_blocks=40, enable_prefix_caching=True))
    assert engine.generate([prompt], 5) == [ref]
    assert engine.stats.prefix_hit_tokens == 0
    assert engine.generate([prompt], 5) == [ref]
    assert engine.stats.prefix_hit_tokens == (len(prompt) - 1) // block_size * block_size
    second = [c for r in engine.records for c in r.plan.chunks if c.request_id == 1]
    assert second[0].start == engine.stats.prefix_hit_tokens and second[0].kind == "prefill"
    assert sum(c.length for c in second) == len(prompt) + 5 - 1 - engine.stats.prefix_hit_tokens


def test_prefix_caching_needs_paged_kv():
    with pytest.raises(ConfigError, match="enable_prefix_caching"):
        EngineConfig(kv_layout="dense", enable_prefix_caching=True)


def test_the_prefix_index_evicts_the_least_recently_parked_block_and_counts():
    index = PrefixIndex()
    assert (index.hits, index.evictions) == (0, 0)
    for block, digest in [(3, b"a"), (1, b"b"), (2, b"c")]:
        assert index.register(digest, block)
        index.park(block)
    assert not index.register(b"a", 9) and not index.register(b"z", 3)  # a known prefix, a named block
    index.unpark(7)  # never parked: nothing to do
    index.unpark(1)  # in use again: not evictable, still findable
    assert index.evict() == 3 and index.evictions == 1
    assert index.evict() == 2 and index.evictions == 2
    assert index.lookup([b"b"]) == [1] and index.lookup([b"a"]) == [] and not index.evictable


def test_prefix_hits_count_every_reused_block():
    kv = PagedAllocator(1, 1, 2, num_blocks=16, block_size=2, enable_prefix_caching=True)
    ids = list(range(1, 8))
    kv.admit(0, 7)
    kv.ensure(0, 7)
    kv.register_full_blocks(0, ids)
    for rid in (1, 2):
        kv.admit(rid, 7)
        assert kv.claim_prefix(rid, ids) == 6  # three whole blocks; the last token is always computed
    assert kv.prefix.hits == 6
