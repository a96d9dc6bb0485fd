"""The fast default path against the readable references it replaced.

* K/V read with ``index_select`` equals ``pool[layer, slots]``;
* attention read straight from the pool (``attention.fast``) equals ``segmented_attention`` and
  ``ragged_attention`` over the same keys, for every grouped-query shape, with masked keys ignored;
* the engine's default path gives the same logits and tokens as ``attention="ragged"`` and ``kv_read="flatten"``;
* the incremental bookkeeping (write slots, usage counters, token slices, the n-gram index, the draft model's
  own KV cache) equals what it replaced.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from cblab_teach import Engine, EngineConfig, ModelConfig, Request, TinyLM, build_batch
from cblab_teach.attention import ragged_attention, segmented_attention
from cblab_teach.attention.fast import pool_attention, pool_layout
from cblab_teach.attention.ragged import segment_layout
from cblab_teach.core.kv_cache import DenseKVCache, PagedAllocator
from cblab_teach.core.scheduler import ScheduledChunk, StepPlan
from cblab_teach.core.speculative import (
    DraftModelProposer,
    PromptLookupProposer,
    lookup_by_scan,
)
from cblab_teach.model.tiny_lm import StepContext
from cblab_teach.monitoring.step_profile import (
    CATEGORIES,
    _dense_layers,
    fused_matmul_s,
    fused_weights,
    matmul_limit_s,
    profile_breakdown,
    step_shapes,
)
from cblab_teach.plugins.kv_quant import KVQuantizationPlugin

from .reference import greedy


def _paged(kv_heads: int = 2, dim: int = 8, blocks: int = 24, block_size: int = 4) -> PagedAllocator:
    cache = PagedAllocator(2, kv_heads, dim, blocks, block_size, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    cache.k.copy_(torch.randn(cache.k.shape, generator=g, dtype=torch.float64))
    cache.v.copy_(torch.randn(cache.v.shape, generator=g, dtype=torch.float64))
    return cache


def _mixed(cache, shuffle_blocks: bool = True):
    """A decode row, a later prefill chunk over a cached prefix, a fresh prefill, and a second decode row."""
    reqs = {
        0: Request(0, list(range(9)), 4),
        1: Request(1, [5, 6, 7], 4),
        2: Request(2, list(range(6)), 4),
        3: Request(3, list(range(13)), 4),
    }
    reqs[1].output_ids, reqs[1].num_computed = [9], 3
    reqs[3].output_ids, reqs[3].num_computed = [1], 13
    reqs[0].num_computed = 4
    chunks = [
        ScheduledChunk(1, 3, 1, "decode", True),
        ScheduledChunk(3, 13, 1, "decode", True),
        ScheduledChunk(0, 4, 3, "prefill", False),
        ScheduledChunk(2, 0, 6, "prefill", True),
    ]
    if shuffle_blocks:
        random.Random(1).shuffle(cache.free_blocks)  # tables that are not in pool order
    for c in chunks:
        cache.admit(c.request_id, 16)
        cache.ensure(c.request_id, c.end)
    return build_batch(StepPlan(budget=16, chunks=chunks), reqs)


@pytest.mark.parametrize("layout", ["paged", "dense"])
def test_index_select_read_equals_advanced_indexing(layout):
    cache = _paged() if layout == "paged" else DenseKVCache(2, 2, 8, 40, dtype=torch.float64)
    cache.k.normal_()
    cache.v.normal_()
    slots = torch.tensor([[3, 0, 7], [7, 7, 1]])
    for s in (slots, slots.flatten()):
        k, v = cache.read(1, s)
        assert torch.equal(k, cache.k[1, s]) and torch.equal(v, cache.v[1, s])


def test_a_compressed_pool_is_still_read_by_indexing():
    cache = _paged()
    KVQuantizationPlugin().install(cache)
    slots = torch.tensor([[2, 5], [9, 0]])
    k, _ = cache.read(0, slots)
    assert k.shape == (2, 2, 2, 8) and torch.equal(k, cache.k[0, slots])


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_pool_attention_equals_segmented_and_ragged(kv_heads):
    cache = _paged(kv_heads=kv_heads)
    batch = _mixed(cache)
    q = torch.randn(batch.num_tokens, 4, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ctx = StepContext(batch, cache, "segmented", via_flatten=False)
    for layer in range(2):
        k, v = ctx.keys_values(layer)
        fast = pool_attention(q, cache, layer, ctx.pool_groups)
        torch.testing.assert_close(fast, segmented_attention(q, k, v, batch), rtol=0, atol=1e-12)
        torch.testing.assert_close(fast, ragged_attention(q, k, v, batch), rtol=0, atol=1e-12)


def test_a_decode_only_step_takes_the_gather_free_branch_and_agrees():
    cache = _paged()
    reqs = {i: Request(i, list(range(3 + 2 * i)), 4) for i in range(3)}
    chunks = []
    for i, r in reqs.items():
        r.output_ids, r.num_computed = [7], r.prompt_len
        chunks.append(ScheduledChunk(i, r.prompt_len, 1, "decode", True))
        cache.admit(i, 16)
        cache.ensure(i, r.prompt_len + 1)
    batch = build_batch(StepPlan(budget=8, chunks=chunks), reqs)
    ctx = StepContext(batch, cache, "segmented", via_flatten=False)
    (group,) = ctx.pool_groups
    assert group.decode and group.first_rows == batch.num_tokens  # no gather of queries, no scatter of outputs
    q = torch.randn(batch.num_tokens, 4, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k, v = ctx.keys_values(0)
    torch.testing.assert_close(pool_attention(q, cache, 0, ctx.pool_groups), ragged_attention(q, k, v, batch))


def test_keys_behind_the_mask_cannot_change_the_fast_output():
    """Every slot no query may read (other requests' blocks, free blocks, padding) is overwritten: same output."""
    cache = _paged()
    batch = _mixed(cache)
    q = torch.randn(batch.num_tokens, 4, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ctx = StepContext(batch, cache, "segmented", via_flatten=False)
    before = pool_attention(q, cache, 0, ctx.pool_groups)
    readable = torch.zeros(cache.num_slots, dtype=torch.bool)
    readable[ctx.read_slots] = True
    cache.k[0, ~readable] = 1e6
    cache.v[0, ~readable] = -1e6
    assert torch.equal(pool_attention(q, cache, 0, ctx.pool_groups), before)


def test_padded_query_rows_are_never_fully_masked():
    cache = _paged()
    batch = _mixed(cache)
    layout = segment_layout(batch)
    groups = pool_layout(layout, StepContext(batch, cache, "segmented", False).read_slots, torch.float64)
    for g in groups:
        assert torch.all((g.mask == 0).any(-1))  # SDPA would give NaN for a row with no key at all
        assert torch.all(torch.isin(g.mask, torch.tensor([0.0, float("-inf")], dtype=torch.float64)))


def test_write_slots_equal_the_cache_lookup():
    cache = _paged()
    batch = _mixed(cache)
    ctx = StepContext(batch, cache, "segmented", via_flatten=False)
    assert torch.equal(ctx.write_slots, cache.slots(batch.request_ids, batch.seq_ids, batch.positions))
    assert torch.equal(ctx.read_slots, cache.slots(batch.request_ids, batch.key_seq_ids, batch.key_positions))


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_engine_default_path_matches_the_references(kv_heads, workload):
    model = TinyLM(
        ModelConfig(vocab_size=97, hidden_size=32, num_heads=4, num_kv_heads=kv_heads, dtype=torch.float64), seed=2
    )
    base = dict(max_tokens_per_step=9, prefill_chunk_size=4, block_size=4)
    outputs = {}
    for attention, kv_read in [("segmented", "block_table"), ("ragged", "block_table"), ("segmented", "flatten")]:
        engine = Engine(model, EngineConfig(attention=attention, kv_read=kv_read, **base))
        outputs[(attention, kv_read)] = engine.generate(workload.prompts, workload.max_new_tokens)
    fast = outputs[("segmented", "block_table")]
    assert all(out == fast for out in outputs.values())


def test_one_forward_gives_the_reference_logits(model64):
    """Logits, not only tokens: the fast forward equals the ragged one to float64 rounding."""
    logits = {}
    for impl, flatten in [("segmented", False), ("ragged", False), ("segmented", True)]:
        engine = Engine(model64, EngineConfig(max_tokens_per_step=32, prefill_chunk_size=8, block_size=4))
        for p in ([4, 5], [8] * 6):
            engine.add_request(p, 3)
        engine.step()  # both prefill
        engine.add_request([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 3)
        engine.step()  # two decode rows and the first chunk of the newcomer
        plan = engine.scheduler.plan(engine.running, engine.waiting, engine.kv)
        for c in plan.chunks:
            engine.kv.ensure(c.request_id, c.end)
        batch = build_batch(plan, engine.requests)
        assert {c.kind for c in plan.chunks} == {"decode", "prefill"}  # a mixed step
        logits[(impl, flatten)] = model64(batch, engine.kv, impl=impl, via_flatten=flatten, all_logits=True)
    ref = logits[("ragged", False)]
    for out in logits.values():
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def _scanned_used_blocks(cache: PagedAllocator) -> int:
    return sum(1 for c in cache.ref_counts if c > 0)


@pytest.mark.parametrize("prefix", [False, True])
def test_usage_counter_equals_a_walk_over_every_block(model64, prefix):
    config = EngineConfig(
        max_tokens_per_step=12, prefill_chunk_size=4, block_size=2, num_blocks=24, enable_prefix_caching=prefix,
        preemption=True,
    )
    engine = Engine(model64, config)
    shared = [3, 1, 4, 1, 5, 9, 2, 6]
    for i in range(6):
        engine.add_request(shared + [i, i + 1], 5 + i)
    while engine.has_unfinished():
        record = engine.step()
        assert record.kv.reserved_slots == _scanned_used_blocks(engine.kv) * engine.kv.block_size


def test_token_slice_equals_slicing_all_ids():
    r = Request(0, [10, 11, 12, 13], 5)
    r.output_ids = [20, 21, 22]
    ids = r.all_ids
    for start, end in itertools.combinations_with_replacement(range(len(ids) + 1), 2):
        assert r.token_slice(start, end) == ids[start:end]


def test_step_profile_breakdown_and_limit(model64, workload):
    make = lambda: Engine(model64, EngineConfig(max_tokens_per_step=9, prefill_chunk_size=4))  # noqa: E731
    report = profile_breakdown(make, workload.prompts, workload.max_new_tokens)
    assert tuple(report["seconds"]) == CATEGORIES
    assert all(s >= 0 for s in report["seconds"].values()) and report["seconds"]["matmuls"] > 0
    assert report["step_s"] > 0 and report["top_ops"]
    shapes = step_shapes(report["records"])
    assert sum(n for n, _ in shapes) == sum(r.plan.used for r in report["records"])
    assert sum(rows for _, rows in shapes) == sum(len(r.sampled) for r in report["records"])  # no drafts here
    assert matmul_limit_s(model64, shapes, repeats=1) > 0
    assert matmul_limit_s(model64, [], repeats=1) == 0.0


def test_fused_weights_compute_the_same_projections(model64):
    """The fused matmuls timed against the limit are the same math: q|k|v and gate|up split back out."""
    x = torch.randn(5, model64.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = fused_weights(model64)
    assert len(weights) == 4 * model64.config.num_layers
    for layer, block in enumerate(model64.layers):
        a, m = block.self_attn, block.mlp
        qkv = torch.nn.functional.linear(x, weights[4 * layer])
        want = torch.cat([a.q_proj(x), a.k_proj(x), a.v_proj(x)], dim=-1)
        torch.testing.assert_close(qkv, want)
        gate_up = torch.nn.functional.linear(x, weights[4 * layer + 2])
        torch.testing.assert_close(gate_up, torch.cat([m.gate_proj(x), m.up_proj(x)], dim=-1))
        assert weights[4 * layer + 1] is a.o_proj.weight and weights[4 * layer + 3] is m.down_proj.weight
    assert fused_matmul_s(model64, [(7, 2)], repeats=1) > 0


def test_the_math_timed_for_compiling_is_the_models_own(model64):
    """``compiled_layers_s`` times :func:`_dense_layers`; its first layer's k and v are what a prefill of the
    same tokens writes to the cache (later layers see a stand-in for attention, so only layer 0 can match)."""
    prompt = [5, 17, 3, 44, 9, 60]
    engine = Engine(model64, EngineConfig(max_tokens_per_step=16, prefill_chunk_size=16))
    rid = engine.add_request(prompt, 3)
    engine.step()  # the prefill; the request is still running, its K/V still cached
    pos = torch.arange(len(prompt))
    got = _dense_layers(model64, model64.embed_tokens(torch.tensor(prompt)), *model64.rotary.cos_sin(pos, torch.float64))
    k, v = engine.kv.read(0, engine.kv.request_slots(rid, 0, len(prompt)))
    assert len(got) == 1 + 2 * model64.config.num_layers
    torch.testing.assert_close(got[1], k, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[2], v.reshape(len(prompt), -1), rtol=0, atol=1e-12)


def test_ngram_index_equals_the_scan_as_histories_grow():
    rng = random.Random(5)
    proposer = PromptLookupProposer(2)
    reqs = [Request(i, [rng.randrange(4) for _ in range(rng.randint(1, 6))], 50) for i in range(4)]
    for _ in range(40):
        k = [rng.randint(0, 4) for _ in reqs]
        got = proposer.propose(reqs, k)
        want = {r.request_id: g for r, n in zip(reqs, k) if (g := lookup_by_scan(r.all_ids, 2, n))}
        assert got == want
        for r in reqs:
            r.output_ids.extend(rng.randrange(4) for _ in range(rng.randint(1, 3)))
    proposer.propose(reqs[:1], [1])
    assert set(proposer.index) == {0}  # requests no longer asked about are forgotten


def test_a_history_too_short_to_look_up_does_not_stop_the_others():
    proposer = PromptLookupProposer(2)
    short, long = Request(0, [7, 8], 9), Request(1, [1, 2, 3, 1, 2], 9)
    assert proposer.propose([short, long], [3, 3]) == {1: [3, 1, 2]}
    assert proposer.propose([long, short], [0, 3]) == {}  # no guesses asked of it


def test_draft_proposer_with_its_own_cache_equals_recomputing_every_history(model64, work_draft):
    draft = TinyLM(
        ModelConfig(vocab_size=97, hidden_size=16, num_heads=2, intermediate_size=32, num_layers=1,
                    dtype=torch.float64),
        seed=4,
    )  # fmt: skip
    engine = Engine(
        model64, EngineConfig(max_tokens_per_step=24, speculative="draft", num_speculative_tokens=3), draft_model=draft
    )
    kept, seen = engine.proposer, []

    class Checked:
        def propose(self, requests, k):
            got = kept.propose(requests, k)
            # the independent reference: each history recomputed in full, no cache, for every guess
            fresh = {r.request_id: greedy(draft, r.all_ids, n) for r, n in zip(requests, k) if n > 0}
            assert got == fresh
            seen.append(sum(r.num_tokens for r, n in zip(requests, k) if n > 0))
            return got

    engine.proposer = Checked()
    for p, n in zip(*work_draft):
        engine.add_request(p, n)
    engine.run()
    assert engine.stats.draft_tokens > 0
    assert kept.computed_tokens < sum(seen)  # it did not recompute the histories


def test_the_draft_proposer_computes_each_history_once_then_one_token_per_guess():
    draft = TinyLM(ModelConfig(vocab_size=97, hidden_size=16, num_heads=2, intermediate_size=32, num_layers=1), seed=4)
    proposer = DraftModelProposer(draft, block_size=4)
    assert (proposer.computed_tokens, proposer.most) == (0, 0)
    req = Request(0, [1, 2, 3, 4, 5], 9)
    guesses = proposer.propose([req], [3])[0]
    assert len(guesses) == 3 and (proposer.computed_tokens, proposer.most) == (5 + 1 + 1, 3)
    req.output_ids.append(guesses[0])  # the first guess kept, the other two rejected
    proposer.propose([req], [2])
    assert proposer.computed_tokens == 7 + 1 + 1  # the history is stored up to the kept guess: one new token


@pytest.fixture
def work_draft():
    return [[1, 2, 3, 4, 5], [7, 8], [9] * 12, [3, 1, 4, 1, 5, 9, 2, 6]], [12, 5, 9, 14]


@pytest.mark.parametrize(
    ("settings", "runs"),
    [
        ({}, {"pool_attention"}),
        ({"attention": "ragged"}, {"ragged_attention"}),
        ({"kv_read": "flatten"}, {"gather_by_flatten", "segmented_attention"}),
        ({"attention": "ragged", "kv_read": "flatten"}, {"gather_by_flatten", "ragged_attention"}),
    ],
)
def test_each_setting_runs_its_own_attention_path(model64, monkeypatch, settings, runs):
    """The paths give the same tokens by design, so outputs cannot tell them apart: count which functions ran."""
    from cblab_teach.model import tiny_lm

    called: set[str] = set()
    for name in ("pool_attention", "ragged_attention", "segmented_attention", "gather_by_flatten"):
        original = getattr(tiny_lm, name)
        monkeypatch.setattr(tiny_lm, name, lambda *a, _f=original, _n=name, **k: called.add(_n) or _f(*a, **k))
    engine = Engine(model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4, **settings))
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    assert engine.generate(prompts, 3) == [greedy(model64, p, 3) for p in prompts]  # the no-cache reference
    assert called == runs


def test_a_decode_only_step_hands_back_the_decode_kernels_output_uncopied(model64, monkeypatch):
    """A step of decodes only is one group: pool_attention returns the kernel's output itself, with no output
    buffer to fill. A step with a prefill fills a buffer group by group. (Same numbers either way, so only
    the identity of the returned tensor tells the two paths apart.)"""
    from cblab_teach.attention import fast
    from cblab_teach.model import tiny_lm

    kernel_outputs = [torch.empty(0)]  # nothing from a pool_attention call can be this
    uncopied: list[bool] = []
    decode, pool = fast._decode_attention, tiny_lm.pool_attention
    monkeypatch.setattr(fast, "_decode_attention", lambda *a: kernel_outputs.append(decode(*a)) or kernel_outputs[-1])
    monkeypatch.setattr(
        tiny_lm, "pool_attention", lambda *a: (lambda out: uncopied.append(out is kernel_outputs[-1]) or out)(pool(*a))
    )
    engine = Engine(model64, EngineConfig(max_tokens_per_step=16, prefill_chunk_size=8))
    a, b = engine.add_request([1, 2, 3, 4, 5], 3), engine.add_request([6, 7], 3)
    layers = model64.config.num_layers
    engine.step()  # both prompts: prefill only
    assert uncopied == [False] * layers
    engine.step()  # both decode
    assert uncopied == [False] * layers + [True] * layers
    engine.add_request([8, 9, 10], 2)
    engine.step()  # two decodes and a prefill: the buffer again
    assert uncopied[2 * layers :] == [False] * layers
    engine.run()
    assert [engine.output(a), engine.output(b)] == [greedy(model64, [1, 2, 3, 4, 5], 3), greedy(model64, [6, 7], 3)]
