"""Attention numerics: masked keys get exactly zero, every path agrees."""

from __future__ import annotations

import torch

from cblab_teach import Request, build_batch
from cblab_teach.attention import leaky_clamp_attention, masked_attention, ragged_attention, segmented_attention
from cblab_teach.core.scheduler import ScheduledChunk, StepPlan


def _qkv(n_q: int, n_k: int, heads: int = 2, kv_heads: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = lambda n, h: (1, n, h, 8)  # noqa: E731
    return (
        torch.randn(shape(n_q, heads), generator=g, dtype=torch.float64),
        torch.randn(shape(n_k, kv_heads), generator=g, dtype=torch.float64),
        torch.randn(shape(n_k, kv_heads), generator=g, dtype=torch.float64),
    )


def test_masked_keys_get_exactly_zero_probability():
    q, k, v = _qkv(4, 6)
    mask = torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    mask[..., 0] = True
    _, probs = masked_attention(q, k, v, mask, return_probs=True)
    assert torch.all(probs[~mask[:, None].expand_as(probs)] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_fully_masked_row_gives_zeros_not_nan():
    q, k, v = _qkv(2, 3)
    mask = torch.tensor([[[True, False, False], [False, False, False]]])
    out = masked_attention(q, k, v, mask)
    assert not torch.isnan(out).any()
    assert torch.all(out[0, 1] == 0)


def test_values_behind_the_mask_cannot_change_the_output():
    q, k, v = _qkv(3, 5)
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    mask[..., 3:] = False
    v2 = v.clone()
    v2[:, 3:] = 1e6  # another request's values
    assert torch.equal(masked_attention(q, k, v, mask), masked_attention(q, k, v2, mask))
    # a naive engine's post-softmax clamp leaks eps * 1e6 of them in
    assert not torch.allclose(leaky_clamp_attention(q, k, v, mask), leaky_clamp_attention(q, k, v2, mask))


def test_the_leaky_clamp_adds_exactly_eps_times_each_hidden_value():
    """The teaching bug, said independently: every masked key gets probability eps instead of 0, so the output is
    the right one plus eps times the sum of the hidden values (visible probabilities stay above eps, unchanged).
    Grouped-query heads, so each query head must read its own K/V head."""
    q, k, v = _qkv(3, 5, heads=4, kv_heads=2)
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    mask[0, :, 3:] = False
    mask[0, 2, 1] = False
    for eps in (1e-6, 1e-3):
        hidden = torch.einsum("bqk,bkhd->bqhd", (~mask).double(), v.repeat_interleave(2, dim=2))
        expected = masked_attention(q, k, v, mask) + eps * hidden
        torch.testing.assert_close(leaky_clamp_attention(q, k, v, mask, eps=eps), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(leaky_clamp_attention(q, k, v, mask), leaky_clamp_attention(q, k, v, mask, eps=1e-6))


def test_grouped_query_heads_share_kv():
    q, k, v = _qkv(3, 3, heads=4, kv_heads=2)
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    out = masked_attention(q, k, v, mask)
    ref = masked_attention(q, k.repeat_interleave(2, 2), v.repeat_interleave(2, 2), mask)
    torch.testing.assert_close(out, ref)


def _mixed_batch():
    reqs = {0: Request(0, list(range(9)), 4), 1: Request(1, [5, 6, 7], 4), 2: Request(2, list(range(6)), 4)}
    reqs[1].output_ids, reqs[1].num_computed = [9], 3  # decoding
    reqs[0].num_computed = 4  # second prefill chunk: attends to a cached prefix
    chunks = [
        ScheduledChunk(1, 3, 1, "decode", True),
        ScheduledChunk(0, 4, 3, "prefill", False),
        ScheduledChunk(2, 0, 6, "prefill", True),
    ]
    return build_batch(StepPlan(budget=10, chunks=chunks), reqs)


def test_segmented_equals_ragged_equals_per_request():
    batch = _mixed_batch()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch.num_tokens, 4, 8, generator=g, dtype=torch.float64)
    k = torch.randn(batch.num_keys, 2, 8, generator=g, dtype=torch.float64)
    v = torch.randn(batch.num_keys, 2, 8, generator=g, dtype=torch.float64)
    ragged = ragged_attention(q, k, v, batch)
    torch.testing.assert_close(segmented_attention(q, k, v, batch), ragged)
    kstart = 0
    for b in range(len(batch.request_ids)):  # each request alone, with a plain causal mask over its own keys
        qs = slice(int(batch.cu_seqlens[b]), int(batch.cu_seqlens[b + 1]))
        n_k = int(batch.context_lens[b])
        mask = batch.key_positions[kstart : kstart + n_k][None, :] <= batch.positions[qs][:, None]
        alone = masked_attention(
            q[None, qs], k[None, kstart : kstart + n_k], v[None, kstart : kstart + n_k], mask[None]
        )
        torch.testing.assert_close(ragged[qs], alone[0])
        kstart += n_k
