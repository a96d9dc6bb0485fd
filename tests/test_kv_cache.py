"""Paged KV: blocks handed out once, all returned, flatten equals the dense copy."""

from __future__ import annotations

import pytest
import torch

from cblab_teach import ConfigError, DenseKVCache, Engine, EngineConfig, KVCacheError, PagedAllocator


def _fill(cache, rid: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, 2, 4, generator=g, dtype=torch.float64)
    cache.admit(rid, n)
    cache.ensure(rid, n)
    pos = torch.arange(n)
    cache.write(0, cache.slots([rid], torch.zeros_like(pos), pos), k, -k)
    return k


def test_flatten_equals_dense():
    paged = PagedAllocator(1, 2, 4, num_blocks=16, block_size=3, dtype=torch.float64)
    dense = DenseKVCache(1, 2, 4, num_slots=48, dtype=torch.float64)
    for rid, n in [(0, 7), (1, 3), (2, 1), (3, 9)]:
        k = _fill(paged, rid, n, rid)
        _fill(dense, rid, n, rid)
        fk, fv = paged.flatten(0, rid)
        torch.testing.assert_close(fk, k, rtol=0, atol=0)
        torch.testing.assert_close(fk, dense.gather(0, rid)[0], rtol=0, atol=0)
        torch.testing.assert_close(fv, -k, rtol=0, atol=0)
        assert fk.shape[0] == n  # trimmed, not a whole number of blocks


def test_blocks_never_shared_and_all_returned(model64, workload):
    engine = Engine(model64, EngineConfig(max_tokens_per_step=7, prefill_chunk_size=3, block_size=2, num_blocks=40))
    for p, n in zip(workload.prompts, workload.max_new_tokens):
        engine.add_request(p, n)
    saw_sharing_free_blocks = 0
    while engine.has_unfinished():
        record = engine.step()
        owned = [b for t in record.block_tables.values() for b in t]
        assert len(owned) == len(set(owned)), "a block has two owners"
        assert not set(owned) & set(engine.kv.free_blocks)
        assert len(owned) + engine.kv.num_free_blocks == 40
        saw_sharing_free_blocks += len(owned) > 0
        for rid, table in record.block_tables.items():  # at most one partly-filled block each
            assert len(table) == -(-engine.kv.lengths[rid] // 2)
    assert saw_sharing_free_blocks
    assert engine.kv.num_free_blocks == 40 and not engine.kv.block_tables


def test_paged_waste_is_at_most_one_partial_block_per_request(model64, workload):
    for layout in ("paged", "dense"):
        engine = Engine(model64, EngineConfig(kv_layout=layout, block_size=4, max_tokens_per_step=16))
        for p, n in zip(workload.prompts, workload.max_new_tokens):
            engine.add_request(p, n)
        records = engine.run()
        worst = max(r.kv.waste_slots - 3 * len(r.block_tables) for r in records)
        if layout == "paged":
            assert worst <= 0
        else:
            assert max(r.kv.waste_slots for r in records) > 0  # dense reserves the whole future


def test_dense_fragments_but_paged_does_not():
    dense = DenseKVCache(1, 1, 2, num_slots=10)
    for rid in range(5):
        dense.admit(rid, 2)
    dense.free(1)
    dense.free(3)
    assert dense.usage().reserved_slots == 6
    assert not dense.fits([4])  # 4 slots are free, but not in one piece
    paged = PagedAllocator(1, 1, 2, num_blocks=5, block_size=2)
    for rid in range(5):
        paged.admit(rid, 2)
        paged.ensure(rid, 2)
    paged.free(1)
    paged.free(3)
    assert paged.fits([4])


def test_double_free_and_overflow_are_errors():
    paged = PagedAllocator(1, 1, 2, num_blocks=2, block_size=2)
    paged.admit(0, 4)
    with pytest.raises(KVCacheError, match="request 0"):
        paged.admit(0, 2)
    paged.free(0)
    with pytest.raises(KVCacheError, match="double free"):
        paged.free(0)
    dense = DenseKVCache(1, 1, 2, num_slots=4)
    dense.admit(0, 2)
    with pytest.raises(KVCacheError, match="reserved 2"):
        dense.ensure(0, 3)


def test_fork_shares_every_block_and_splits_the_reservation():
    kv = PagedAllocator(1, 1, 2, num_blocks=16, block_size=4)
    kv.admit(0, 14, copies=3)  # a group of 3 sequences, each up to 14 tokens: 4 blocks each
    assert kv.reserved_blocks[0] == 12
    kv.ensure(0, 10)  # the prompt: 10 tokens in 3 blocks, the last one part-filled
    kv.fork(0, 1, 14)
    kv.fork(0, 2, 14)
    assert kv.block_tables[1] == kv.block_tables[2] == kv.block_tables[0]
    assert [kv.ref_counts[b] for b in kv.block_tables[0]] == [3, 3, 3]
    assert kv.lengths[1] == kv.lengths[2] == 10
    # each keeps its own worst case; a fork also one block to copy the shared, part-filled last block into
    assert (kv.reserved_blocks[0], kv.reserved_blocks[1], kv.reserved_blocks[2]) == (4, 5, 5)
    with pytest.raises(KVCacheError, match="request 1 already has KV"):
        kv.fork(0, 1, 14)


def test_blocks_needed_counts_the_copy_of_a_shared_block():
    kv = PagedAllocator(1, 1, 2, num_blocks=16, block_size=4)
    assert kv.blocks_needed(9, 5) == 2  # a request with no table yet
    kv.admit(0, 16, reserve=False)
    kv.ensure(0, 10)
    assert kv.blocks_needed(0, 11) == 0  # position 10 fits its own third block
    kv.fork(0, 1, 16, reserve=False)
    assert kv.blocks_needed(0, 11) == 1 and kv.blocks_needed(1, 11) == 1  # shared: the writer copies it first
    assert kv.blocks_needed(1, 13) == 2  # the copy, and a fourth block
    kv.k.normal_()  # whatever the parent wrote: the copy must carry it
    copied = kv.copy_on_write(1, 10, 11)
    assert copied == [(kv.block_tables[0][2], kv.block_tables[1][2])] and kv.block_tables[1][2] != kv.block_tables[0][2]
    assert kv.blocks_needed(0, 11) == 0  # the parent holds its block alone now
    assert kv.blocks_needed(1, 11) == 0
    assert torch.equal(kv.k[:, kv.block_tables[1][2] * 4 : kv.block_tables[1][2] * 4 + 4],
                       kv.k[:, kv.block_tables[0][2] * 4 : kv.block_tables[0][2] * 4 + 4])  # fmt: skip


def test_used_slots_count_a_shared_block_once():
    """A fork points at the parent's blocks: the pool holds those tokens once, however many tables share them."""
    kv = PagedAllocator(1, 1, 2, num_blocks=16, block_size=4)
    kv.admit(0, 16, reserve=False)
    kv.ensure(0, 6)
    assert kv.usage().used_slots == 6
    kv.fork(0, 1, 16, reserve=False)
    assert kv.usage().used_slots == 6  # two tables, one copy of the tokens
    kv.copy_on_write(1, 6, 7)
    kv.ensure(1, 7)
    # block 0 shared (4 tokens); the parent's part-filled block (2) and the child's copy of it plus one (3)
    assert kv.usage().used_slots == 4 + 2 + 3


@pytest.mark.parametrize("length, partial", [(8, 0), (9, 1), (10, 1)])
def test_a_fork_reserves_a_copy_only_of_a_part_filled_last_block(length, partial):
    kv = PagedAllocator(1, 1, 2, num_blocks=32, block_size=4)
    kv.admit(0, 16, copies=2)
    kv.ensure(0, length)
    kv.fork(0, 1, 16)
    assert (kv.reserved_blocks[0], kv.reserved_blocks[1]) == (4, 4 + partial)


def test_admission_holds_no_token_yet_and_a_refusal_says_what_it_needed():
    paged = PagedAllocator(1, 1, 2, num_blocks=5, block_size=4)
    paged.admit(0, 8)
    assert paged.lengths[0] == 0 and paged.usage().used_slots == 0 and paged.blocks_needed(0, 4) == 1
    with pytest.raises(KVCacheError, match=r"^6 blocks are not free for request 1$"):
        paged.admit(1, 8, copies=3)  # 2 blocks a sequence, 3 sequences; 3 are free
    dense = DenseKVCache(1, 1, 2, num_slots=8)
    dense.admit(0, 5)
    assert dense.lengths[0] == 0 and dense.usage().used_slots == 0
    with pytest.raises(KVCacheError, match=r"^request 0 already has KV in this cache$"):
        dense.admit(0, 2)
    with pytest.raises(KVCacheError, match=r"^no contiguous range of 4 slots is free for request 1$"):
        dense.admit(1, 4)


def test_small_answers_for_requests_and_pools_at_their_edges():
    """What a caller may ask of a pool about a request it does not hold, or with nothing shared."""
    kv = PagedAllocator(1, 1, 2, num_blocks=3, block_size=4)
    assert kv.blocks_released_by(7) == 0  # no KV, nothing to release
    kv.admit(0, 12, reserve=False)
    assert kv.claim_prefix(0, [1, 2, 3, 4, 5, 6]) == 0  # prefix caching off: nothing is ever reused
    kv.ensure(0, 6)
    kv.fork(0, 1, 12, reserve=False)
    kv.admit(2, 4, reserve=False)
    kv.ensure(2, 4)  # another request takes the last free block
    with pytest.raises(KVCacheError, match="exhausted while growing request 1"):
        kv.copy_on_write(1, 6, 7)  # the shared second block needs a private copy, and no block is free
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    for flag, reused in (({}, 0), ({"enable_prefix_caching": True}, 8)):  # prefix caching is off unless asked for
        pool = PagedAllocator(1, 1, 2, num_blocks=4, block_size=4, **flag)
        pool.admit(0, 9, reserve=False)
        pool.claim_prefix(0, tokens)
        pool.ensure(0, 8)
        pool.register_full_blocks(0, tokens)
        assert pool.cached_prefix(tokens) == reused
    with pytest.raises(ConfigError, match=r"^a KV cache needs at least one slot, got 0$"):
        DenseKVCache(1, 2, 4, num_slots=0)
    dense = DenseKVCache(1, 2, 4, num_slots=8, dtype=torch.float64)
    dense.admit(0, 5)
    dense.ensure(0, 3)
    usage = dense.usage()
    assert usage.bytes_per_slot == 2 * 2 * 4 * 8  # K and V, 2 heads of 4 float64 values, 1 layer
    assert (usage.used_bytes, usage.reserved_bytes) == (3 * 128, 5 * 128)
