"""Masked attention with honest numerics.

Masked keys must get *exactly* zero probability, or one request's output
changes with its batch neighbours. So we mask **before** softmax, with the
most negative finite number of the dtype (``exp`` of it underflows to 0), and
zero any row that has no visible key at all (instead of a NaN from 0/0).

:func:`leaky_clamp_attention` keeps the classic bug for the course to show:
masking to ``-inf`` and then ``clamp(min=eps)`` *after* softmax gives every
masked key probability ``eps``, so rows sum to more than 1 and values of
other requests leak in.
"""

from __future__ import annotations

import math

import torch


def expand_kv_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Grouped-query attention: repeat each K/V head for the query heads that share it."""
    kv_heads = x.shape[-2]
    return x if kv_heads == num_heads else x.repeat_interleave(num_heads // kv_heads, dim=-2)


def attention_probs(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over keys that ``mask`` allows; masked keys get exactly 0."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    return probs.masked_fill(~mask, 0.0)  # only changes fully-masked rows (uniform -> 0)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, return_probs: bool = False):
    """Attention over a batch of segments.

    q: ``[B, Q, H, D]``; k, v: ``[B, K, Hkv, D]``; mask: ``[B, Q, K]`` bool.
    Returns ``[B, Q, H, D]`` (and the ``[B, H, Q, K]`` probabilities if asked).
    """
    b, nq, heads, d = q.shape
    kv_heads = k.shape[-2]
    # grouped-query: query head h reads K/V head h // group (as expand_kv_heads), without copying K/V
    qg = q.view(b, nq, kv_heads, heads // kv_heads, d)
    scores = torch.einsum("bqhgd,bkhd->bhgqk", qg, k).reshape(b, heads, nq, -1) / math.sqrt(d)
    probs = attention_probs(scores, mask[:, None, :, :])
    pg = probs.view(b, kv_heads, heads // kv_heads, nq, -1)
    out = torch.einsum("bhgqk,bkhd->bqhgd", pg, v).reshape(b, nq, heads, d)
    return (out, probs) if return_probs else out


def leaky_clamp_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """A naive engine's attention: post-softmax clamp. Wrong on purpose; for teaching only."""
    heads = q.shape[-2]
    k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1).clamp(min=eps, max=1.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)
