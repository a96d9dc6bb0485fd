"""KV sharding: partial attention per shard, merged with log-sum-exp, equals full attention.

References are independent of the code under test: ``masked_attention`` (the
engine's attention), a per-query brute-force softmax, the engine's own
attention output for a real mixed step, and a plain engine run.
"""

from __future__ import annotations

import math

import pytest
import torch

from cblab_teach import CBLabError, Engine, EngineConfig
from cblab_teach.advanced import (
    ShardedAttentionPlugin,
    ShardingError,
    demo_sharding_figure,
    key_shards,
    merge_pair,
    merge_partials,
    merge_partials_with_lse,
    merge_weights,
    partial_attention,
    run_distributed,
    shard_sizes,
    sharded_attention,
    sharded_ragged_attention,
)
from cblab_teach.attention import gather_from_block_table, masked_attention
from cblab_teach.core.batch_builder import batch_mask
from cblab_teach.plugins.base import AttentionPlugin


def _qkv(b=2, nq=5, nk=11, heads=4, kv_heads=2, dim=8, seed=0, mask_p=0.6):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nq, heads, dim, generator=g, dtype=torch.float64)
    k = torch.randn(b, nk, kv_heads, dim, generator=g, dtype=torch.float64)
    v = torch.randn(b, nk, kv_heads, dim, generator=g, dtype=torch.float64)
    mask = torch.rand(b, nq, nk, generator=g) < mask_p
    return q, k, v, mask


def _brute_force(q, k, v, mask):
    """One query, one head at a time, with Python math: the definition of masked attention."""
    b, nq, heads, dim = q.shape
    group = heads // k.shape[2]
    out = torch.zeros_like(q)
    for bi in range(b):
        for i in range(nq):
            for h in range(heads):
                keys = [j for j in range(k.shape[1]) if mask[bi, i, j]]
                if not keys:
                    continue
                s = [float(q[bi, i, h] @ k[bi, j, h // group]) / math.sqrt(dim) for j in keys]
                top = max(s)
                w = [math.exp(x - top) for x in s]
                z = sum(w)
                for wj, j in zip(w, keys):
                    out[bi, i, h] += wj / z * v[bi, j, h // group]
    return out


# -- one shard ---------------------------------------------------------------------------------------
def test_partial_lse_is_the_log_of_the_softmax_denominator():
    q, k, v, mask = _qkv(b=1, nq=3, nk=6, heads=2, kv_heads=2, mask_p=1.1)
    out, lse = partial_attention(q, k, v, mask)
    scores = torch.einsum("bqhd,bkhd->bqhk", q, k) / math.sqrt(q.shape[-1])
    torch.testing.assert_close(lse, torch.log(torch.exp(scores).sum(-1)), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, _brute_force(q, k, v, mask), rtol=0, atol=1e-12)


def test_fully_masked_shard_gives_minus_inf_and_zeros_never_nan():
    q, k, v, mask = _qkv(b=1, nq=4, nk=5)
    mask[0, 1] = False  # one query sees nothing in this shard
    out, lse = partial_attention(q, k, v, mask)
    assert torch.all(lse[0, 1] == float("-inf"))
    assert torch.all(out[0, 1] == 0)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_empty_shard_contributes_nothing():
    q, k, v, mask = _qkv(b=1, nq=3, nk=4, mask_p=1.1)
    out_a, lse_a = partial_attention(q, k, v, mask)
    out_e, lse_e = partial_attention(q, k[:, :0], v[:, :0], mask[:, :, :0])
    assert torch.all(lse_e == float("-inf")) and torch.all(out_e == 0)
    merged = merge_partials([out_e, out_a, out_e], [lse_e, lse_a, lse_e])
    torch.testing.assert_close(merged, out_a, rtol=0, atol=0)


def test_merge_of_all_masked_shards_is_zero_like_masked_attention():
    q, k, v, mask = _qkv(b=1, nq=2, nk=4)
    mask[0, 0] = False
    out = sharded_attention(q, k, v, mask, num_shards=2)
    assert torch.all(out[0, 0] == 0) and not torch.isnan(out).any()
    torch.testing.assert_close(out, masked_attention(q, k, v, mask), rtol=0, atol=1e-12)


# -- sharded == full ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 7, 11, 12, 20])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_sharded_equals_full_attention_for_any_number_of_shards(num_shards, kv_heads):
    q, k, v, mask = _qkv(nk=11, kv_heads=kv_heads, seed=num_shards)
    mask[0, 2] = False  # a fully masked row as well
    out = sharded_attention(q, k, v, mask, num_shards)
    torch.testing.assert_close(out, masked_attention(q, k, v, mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sizes", [[11], [1, 10], [10, 1], [0, 5, 0, 6], [3, 0, 0, 0, 8], [2, 2, 2, 2, 2, 1]])
def test_unequal_and_empty_shards_equal_full_attention(sizes):
    q, k, v, mask = _qkv(nk=11, seed=len(sizes))
    out = sharded_attention(q, k, v, mask, len(sizes), sizes=sizes)
    torch.testing.assert_close(out, _brute_force(q, k, v, mask), rtol=0, atol=1e-12)


def test_more_shards_than_keys():
    q, k, v, mask = _qkv(nk=3, seed=5)
    assert shard_sizes(3, 8) == [1, 1, 1, 0, 0, 0, 0, 0]
    torch.testing.assert_close(sharded_attention(q, k, v, mask, 8), masked_attention(q, k, v, mask), rtol=0, atol=1e-12)


def test_large_scores_do_not_overflow():
    q, k, v, mask = _qkv(nk=9, seed=2, mask_p=1.1)
    q = q * 200.0  # scores in the thousands: exp() would overflow without log space
    out = sharded_attention(q, k, v, mask, 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, masked_attention(q, k, v, mask), rtol=0, atol=1e-10)


def test_float32_scores_in_the_thousands_merge_exactly():
    """float32 exp() overflows past ~88 (float64 past ~709): only log-space merging survives scores like these."""
    q, k, v, mask = _qkv(nk=9, seed=2, mask_p=1.1)
    q = q * 900.0
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(2, dim=2)) / math.sqrt(q.shape[-1])
    assert scores.abs().max() > 2000  # really in the thousands
    q32, k32, v32 = q.float(), k.float(), v.float()
    out = sharded_attention(q32, k32, v32, mask, 3)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _brute_force(q, k, v, mask), rtol=0, atol=2e-3)
    parts = [partial_attention(q32, k32[:, s : s + 3], v32[:, s : s + 3], mask[:, :, s : s + 3]) for s in (0, 3, 6)]
    assert all(torch.isfinite(lse).all() for _, lse in parts)
    _, total = merge_partials_with_lse([p[0] for p in parts], [p[1] for p in parts])
    exact = torch.logsumexp(scores, dim=-1).transpose(1, 2)  # float64, the definition
    torch.testing.assert_close(total.double(), exact, rtol=1e-5, atol=0)


def test_ring_style_pairwise_merge_equals_one_shot_merge():
    q, k, v, mask = _qkv(nk=12, seed=3)
    parts = [partial_attention(q, k[:, s : s + 3], v[:, s : s + 3], mask[:, :, s : s + 3]) for s in range(0, 12, 3)]
    out, lse = parts[0]
    for o, s in parts[1:]:  # fold one visiting block at a time, as ring attention does
        out, lse = merge_pair(out, lse, o, s)
    one_shot, total = merge_partials_with_lse([p[0] for p in parts], [p[1] for p in parts])
    torch.testing.assert_close(out, one_shot, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, masked_attention(q, k, v, mask), rtol=0, atol=1e-12)
    _, full_lse = partial_attention(q, k, v, mask)
    torch.testing.assert_close(total, full_lse, rtol=0, atol=1e-12)


def test_a_naive_average_of_partials_is_wrong():
    """Why the lse weights are needed: averaging the shards' outputs is not attention."""
    q, k, v, mask = _qkv(nk=10, seed=4, mask_p=1.1)
    parts = [partial_attention(q, k[:, s : s + 5], v[:, s : s + 5], mask[:, :, s : s + 5]) for s in (0, 5)]
    naive = (parts[0][0] + parts[1][0]) / 2
    assert (naive - masked_attention(q, k, v, mask)).abs().max() > 1e-3


def test_demo_figure_data_is_consistent():
    d = demo_sharding_figure(num_keys=10, num_shards=3, seed=1)
    assert sorted(d) == sorted(["num_keys", "num_shards", "shard_sizes", "shard_of_key", "scores", "probs_full",
                                "probs_in_shard", "shard_lse", "shard_weights", "probs_merged", "out_full",
                                "out_merged", "max_abs_error"])  # fmt: skip
    assert (d["num_keys"], d["num_shards"]) == (10, 3)
    assert d["shard_sizes"] == [4, 3, 3] and d["shard_of_key"] == [0] * 4 + [1] * 3 + [2] * 3
    assert abs(sum(d["shard_weights"]) - 1) < 1e-12
    assert max(abs(a - b) for a, b in zip(d["probs_merged"], d["probs_full"])) < 1e-12
    assert d["max_abs_error"] < 1e-12
    assert all(isinstance(x, float) for x in d["scores"])  # plain data, no tensors
    # recomputed from the scores alone: each shard's softmax and log-sum-exp, and the merged output
    scores = torch.tensor(d["scores"], dtype=torch.float64)
    for shard, (start, end) in enumerate([(0, 4), (4, 7), (7, 10)]):
        torch.testing.assert_close(torch.tensor(d["probs_in_shard"][start:end], dtype=torch.float64), scores[start:end].softmax(0))
        assert abs(d["shard_lse"][shard] - scores[start:end].logsumexp(0).item()) < 1e-12
    torch.testing.assert_close(torch.tensor(d["out_merged"]), torch.tensor(d["out_full"]), rtol=0, atol=1e-12)
    assert demo_sharding_figure(num_keys=10, num_shards=3, seed=1) == d  # seeded
    assert demo_sharding_figure(num_keys=10, num_shards=3, seed=2)["scores"] != d["scores"]
    assert demo_sharding_figure(num_keys=1, num_shards=1)["shard_sizes"] == [1]  # one key is a figure
    for bad in (0, 2.5):
        with pytest.raises(ShardingError, match=rf"num_keys must be an int >= 1, got {bad!r}"):
            demo_sharding_figure(num_keys=bad)


def test_the_causal_example_is_a_seeded_causal_chunk():
    """The chunk's queries are the last positions: query i sees every key up to its own position, no further."""
    from cblab_teach.advanced.distributed import causal_example

    q, k, v, mask = causal_example(num_queries=3, num_keys=5, num_heads=4, num_kv_heads=2, head_dim=8, seed=1)
    assert (q.shape, k.shape, v.shape) == ((1, 3, 4, 8), (1, 5, 2, 8), (1, 5, 2, 8))
    assert mask.tolist() == [[[True, True, True, False, False], [True] * 4 + [False], [True] * 5]]
    again = causal_example(num_queries=3, num_keys=5, num_heads=4, num_kv_heads=2, head_dim=8, seed=1)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), again))
    assert not torch.equal(q, causal_example(num_queries=3, num_keys=5, num_heads=4, head_dim=8, seed=2)[0])
    whole = causal_example(num_queries=5, num_keys=5)[3]  # a whole prompt in one chunk: the full causal triangle
    assert torch.equal(whole[0], torch.ones(5, 5, dtype=torch.bool).tril())
    with pytest.raises(ShardingError, match=r"num_queries \(6\) cannot exceed num_keys \(5\) in a causal chunk"):
        causal_example(num_queries=6, num_keys=5)


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_bad_num_shards_raises_a_typed_error(bad):
    q, k, v, mask = _qkv()
    with pytest.raises(ShardingError, match=repr(bad).replace("(", r"\(")):
        sharded_attention(q, k, v, mask, bad)


def test_bad_sizes_and_shapes_raise_typed_errors():
    q, k, v, mask = _qkv(nk=11)
    with pytest.raises(ShardingError, match=r"\[5, 5\]"):
        sharded_attention(q, k, v, mask, 2, sizes=[5, 5])
    for sizes, shards in (([5, 6], 3), ([12, -1], 2)):  # both add up to 11: too few shards; a negative one
        with pytest.raises(ShardingError, match=rf"shard sizes \[{sizes[0]}, {sizes[1]}\] must be {shards} non-neg"):
            sharded_attention(q, k, v, mask, shards, sizes=sizes)
    with pytest.raises(ShardingError, match=r"k must be \[batch, keys, kv_heads, head_dim\], got shape \(11, 2, 8\)"):
        sharded_attention(q, k[0], v[0], mask, 2)
    with pytest.raises(ShardingError, match="mask"):
        partial_attention(q, k, v, mask[:, :, :3])
    with pytest.raises(ShardingError, match="3 KV heads"):
        partial_attention(q, torch.zeros(2, 11, 3, 8), torch.zeros(2, 11, 3, 8), mask)
    with pytest.raises(ShardingError, match="2 partial outputs but 1"):
        merge_partials([q, q], [q[..., 0]])
    for nothing in ([], torch.zeros(0, 3)):  # no shard at all: a list, or a stacked tensor of none
        with pytest.raises(ShardingError, match=r"^merge needs at least one shard, got 0$"):
            merge_weights(nothing)
    with pytest.raises(ShardingError, match=r"^merge needs at least one shard, got 0$"):
        merge_partials([], [])
    with pytest.raises(ShardingError, match=r"^shard 1: out \(5, 4, 8\) and lse \(3, 4\) disagree$"):
        merge_partials([q[0], q[0]], [q[0, ..., 0], q[0, :3, :, 0]])
    with pytest.raises(ShardingError, match="'diagonal'"):
        ShardedAttentionPlugin(2, mode="diagonal")
    with pytest.raises(ShardingError, match=r"^give all of q, k, v and mask, or none of them$"):
        run_distributed(2, q=q)
    for bad in (0, True, 2.0):  # refused before any process starts
        with pytest.raises(ShardingError, match=rf"^world_size must be an int >= 1, got {bad!r}$"):
            run_distributed(bad)
    assert issubclass(ShardingError, CBLabError)


# -- a real engine step -------------------------------------------------------------------------------
class _StepCapture(AttentionPlugin):
    """Keep every layer's queries, gathered K/V, batch and the engine's own attention output."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def attend(self, layer, q, ctx, default):
        out = default(layer, q, ctx)
        k, v = gather_from_block_table(ctx.cache, layer, ctx.batch)
        self.calls.append(dict(layer=layer, q=q.clone(), k=k.clone(), v=v.clone(), batch=ctx.batch, out=out.clone()))
        return out


def _mixed_step(model64):
    """Step an engine until a step mixes decode rows with a prefill chunk that reads a cached prefix."""
    capture = _StepCapture()
    engine = Engine(model64, EngineConfig(max_tokens_per_step=12, prefill_chunk_size=5, block_size=4), [capture])
    engine.add_request(list(range(1, 9)), 6)
    engine.add_request(list(range(10, 31)), 4)
    engine.add_request(list(range(40, 43)), 5)
    while engine.has_unfinished():
        capture.calls.clear()
        record = engine.step()
        kinds = {c.kind for c in record.plan.chunks}
        chunked = any(c.kind == "prefill" and c.start > 0 for c in record.plan.chunks)
        if kinds == {"decode", "prefill"} and chunked:
            return record, capture.calls
    raise AssertionError("the workload never produced a mixed step with a cached prefix")


@pytest.fixture(scope="module")
def mixed_step(model64):
    return _mixed_step(model64)


@pytest.mark.parametrize("num_shards", [2, 3, 5, 40])
@pytest.mark.parametrize("mode", ["contiguous", "round_robin"])
def test_sharded_kv_pool_equals_the_engines_attention_on_a_real_mixed_step(model64, mixed_step, num_shards, mode):
    _, calls = mixed_step
    assert len(calls) == model64.config.num_layers
    for c in calls:
        batch = c["batch"]
        shard = key_shards(batch, num_shards, mode, block_size=4)
        assert len(set(shard.tolist())) > 1  # the keys really are spread over shards
        out = sharded_ragged_attention(c["q"], c["k"], c["v"], batch, num_shards, mode, block_size=4)
        torch.testing.assert_close(out, c["out"], rtol=0, atol=1e-12)
        # each request's keys are split: some request has keys on more than one shard
        per_request = [set(shard[batch.key_seq_ids == b].tolist()) for b in range(len(batch.request_ids))]
        assert max(len(s) for s in per_request) > 1


def test_each_shard_attends_over_its_own_keys_only(mixed_step, monkeypatch):
    """The work is split, not repeated: shard p's partial attention gets exactly the keys assigned to p. (Giving
    every shard all keys but its own would still merge to the right output, since each key then counts
    equally often, so only the keys each partial receives can tell.)"""
    import cblab_teach.advanced.sharding as sharding

    _, calls = mixed_step
    c = calls[-1]
    seen: list[torch.Tensor] = []
    real = sharding.partial_attention

    def spy(q, k, v, mask):
        seen.append(k[0].clone())
        return real(q, k, v, mask)

    monkeypatch.setattr(sharding, "partial_attention", spy)
    shard = key_shards(c["batch"], 3, "round_robin", block_size=2)
    out = sharded_ragged_attention(c["q"], c["k"], c["v"], c["batch"], 3, "round_robin", block_size=2)
    torch.testing.assert_close(out, c["out"], rtol=0, atol=1e-12)
    assert len(seen) == 3
    for p, keys in enumerate(seen):
        assert torch.equal(keys, c["k"][shard == p])


@pytest.mark.parametrize("block_size,expected_block", [(None, 2), (3, 3)])
def test_the_plugin_counts_the_keys_each_shard_attended_over(model64, block_size, expected_block):
    """Round robin over blocks: the pool's own block size unless one is given. One prefill of 8 tokens, every
    layer: each key lands on shard (position // block) % shards, counted once per layer."""
    plugin = ShardedAttentionPlugin(2, mode="round_robin", block_size=block_size)
    engine = Engine(model64, EngineConfig(block_size=2, num_blocks=16, prefill_chunk_size=8), [plugin])
    engine.add_request([3, 1, 4, 1, 5, 9, 2, 6], 1)
    engine.step()
    layers = model64.config.num_layers
    per_layer = [sum(1 for pos in range(8) if (pos // expected_block) % 2 == p) for p in range(2)]
    assert plugin.calls == layers
    assert plugin.keys_per_shard == [n * layers for n in per_layer]
    assert plugin.max_abs_error is None and not plugin.verify  # verification is opt-in: no check ran


BAD_SHAPES = [  # q (2, 5, 4, 8); k, v (2, 11, 2, 8); mask (2, 5, 11): one thing wrong in each row
    ("v is 3-D", lambda q, k, v, m: (q, k, v[0], m),
     r"^q, k, v must be \[B, Q, H, D\] / \[B, K, Hkv, D\]; got \(2, 5, 4, 8\), \(2, 11, 2, 8\), \(11, 2, 8\)$"),
    ("q is 3-D", lambda q, k, v, m: (q[0], k, v, m), r"; got \(5, 4, 8\), \(2, 11, 2, 8\), \(2, 11, 2, 8\)$"),
    ("k and v differ", lambda q, k, v, m: (q, k, v[:, :10], m),
     r"^k and v shapes differ: \(2, 11, 2, 8\) vs \(2, 10, 2, 8\)$"),
    ("batch differs", lambda q, k, v, m: (q, k[:1], v[:1], m),
     r"^k \(1, 11, 2, 8\) does not match q \(2, 5, 4, 8\) in batch or head_dim$"),
    ("head_dim differs", lambda q, k, v, m: (q, k[..., :4], v[..., :4], m), r"^k \(2, 11, 2, 4\) does not match q"),
    ("no KV heads", lambda q, k, v, m: (q, k[:, :, :0], v[:, :, :0], m),
     r"^4 query heads cannot share 0 KV heads \(grouped-query needs a divisor\)$"),
    ("mask not bool", lambda q, k, v, m: (q, k, v, m.int()),
     r"^mask must be bool \[B, Q, K\] = \(2, 5, 11\); got torch.int32 \(2, 5, 11\)$"),
]  # fmt: skip


@pytest.mark.parametrize("damage,message", [b[1:] for b in BAD_SHAPES], ids=[b[0] for b in BAD_SHAPES])
def test_partial_attention_names_the_shape_that_is_wrong(damage, message):
    with pytest.raises(ShardingError, match=message):
        partial_attention(*damage(*_qkv()))


def test_key_shards_check_their_mode_and_block_size(mixed_step):
    batch = mixed_step[1][0]["batch"]
    pos = batch.key_positions
    assert torch.equal(key_shards(batch, 2, "round_robin", block_size=1), pos % 2)  # blocks of one token
    for bad in (0, 2.5):
        with pytest.raises(ShardingError, match=rf"^block_size must be an int >= 1, got {bad!r}$"):
            key_shards(batch, 2, "round_robin", block_size=bad)
    with pytest.raises(ShardingError, match=r"^mode must be 'contiguous' or 'round_robin', got 'diagonal'$"):
        key_shards(batch, 2, "diagonal")


def test_key_shards_are_balanced_within_each_request(mixed_step):
    _, calls = mixed_step
    batch = calls[0]["batch"]
    shard = key_shards(batch, 3)
    for b in range(len(batch.request_ids)):
        counts = torch.bincount(shard[batch.key_seq_ids == b], minlength=3)
        assert counts.max() - counts.min() <= 1
        assert int(counts.sum()) == int(batch.context_lens[b])


@pytest.mark.parametrize("num_shards,mode", [(2, "contiguous"), (3, "round_robin"), (7, "contiguous")])
def test_engine_run_with_sharded_attention_matches_the_plain_run(model64, workload, num_shards, mode):
    cfg = EngineConfig(max_tokens_per_step=16, prefill_chunk_size=6, block_size=4, num_blocks=256)
    plain = Engine(model64, cfg).generate(workload.prompts, workload.max_new_tokens)
    plugin = ShardedAttentionPlugin(num_shards, mode=mode, verify=True)
    sharded = Engine(model64, cfg, [plugin]).generate(workload.prompts, workload.max_new_tokens)
    assert sharded == plain
    assert plugin.calls > 0 and sum(1 for n in plugin.keys_per_shard if n > 0) >= 2
    assert plugin.max_abs_error < 1e-12


# -- for real: 2 processes, torch.distributed (gloo) ----------------------------------------------------
@pytest.mark.timeout(120)
def test_run_distributed_two_ranks_on_a_real_engine_step(mixed_step):
    _, calls = mixed_step
    c = calls[-1]
    q, k, v = c["q"][None], c["k"][None], c["v"][None]
    mask = batch_mask(c["batch"])[None]
    res = run_distributed(2, q=q, k=k, v=v, mask=mask, timeout_s=100)
    # the merged output is the engine's own attention output for that step and layer
    torch.testing.assert_close(res.out[0], c["out"], rtol=0, atol=1e-12)
    torch.testing.assert_close(res.reference, masked_attention(q, k, v, mask), rtol=0, atol=0)
    assert res.max_abs_error < 1e-12 and res.ranks_agree
    assert res.shard_sizes == shard_sizes(k.shape[1], 2)
    # only (out, lse) crossed between the ranks, never K/V
    n_q, heads, dim = q.shape[1:]
    partial = (n_q * heads * dim + n_q * heads) * q.element_size()
    assert res.partial_bytes_per_rank == partial
    assert res.bytes_communicated == 2 * 1 * partial
    assert res.kv_gather_bytes == 2 * k.numel() * k.element_size()
    assert len(res.per_rank_seconds) == 2


@pytest.mark.timeout(120)
def test_run_distributed_decode_moves_far_less_than_the_kv():
    res = run_distributed(2, num_queries=1, num_keys=96, num_heads=4, num_kv_heads=2, head_dim=16, seed=7)
    assert res.max_abs_error < 1e-12 and res.ranks_agree
    assert res.communication_ratio > 10  # one decode query vs 96 cached keys


def test_distributed_result_prints_a_few_lines_not_its_tensors():
    """At the prompt, ``run_distributed(2)`` shows its key numbers; the thousands of values stay in ``.out``."""
    from cblab_teach.advanced.distributed import DistributedResult

    out = torch.randn(1, 64, 4, 16, dtype=torch.float64)
    res = DistributedResult(
        out=out, reference=out.clone(), max_abs_error=3.5e-17, ranks_agree=True, world_size=2,
        shard_sizes=[48, 48], partial_bytes_per_rank=33_280, bytes_communicated=66_560,
        kv_bytes_per_rank=[12_288, 12_288], kv_gather_bytes=798_720, seconds=1.234,
    )  # fmt: skip
    text = repr(res)
    assert len(text.splitlines()) <= 5 and len(text) < 600, text
    for key in ("2 ranks", "[48, 48]", "[1, 64, 4, 16]", "matches", "3.5e-17", "ranks agree: True",
                "66,560 bytes", "798,720 bytes", "12.0x", "1.23 s"):  # fmt: skip
        assert key in text, (key, text)
    assert "merged output matches full attention: max |error| 3.5e-17" in text
    worse = DistributedResult(**{**res.__dict__, "max_abs_error": 0.25, "ranks_agree": False})
    assert "merged output differs from full attention" in repr(worse) and "ranks agree: False" in repr(worse)
    edge = DistributedResult(**{**res.__dict__, "max_abs_error": 1e-9})
    assert "differs from" in repr(edge)  # "matches" means an error below 1e-9
