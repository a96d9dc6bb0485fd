"""KV sharding: attention over keys split across P shards, merged exactly with log-sum-exp.

Why the merge is exact. For one query (and one head) with scores ``s_j`` over
keys ``j``, attention is ``out = sum_j exp(s_j) v_j / Z`` with ``Z = sum_j
exp(s_j)``. Split the keys into shards ``S_1 .. S_P``. Each shard can compute,
from its own keys only,

* its log-sum-exp ``lse_p = log sum_{j in S_p} exp(s_j)`` (so ``Z_p = exp(lse_p)``), and
* its locally normalised output ``out_p = sum_{j in S_p} exp(s_j) v_j / Z_p``.

Because ``Z = sum_p Z_p``, the full output is a weighted sum of the partials::

    out = sum_p (Z_p / Z) out_p = sum_p exp(lse_p - LSE) out_p,   LSE = logsumexp_p lse_p

This is an identity, not an approximation: no score is dropped and no
probability is renormalised twice. A shard whose keys are all masked for a
query has ``Z_p = 0``, i.e. ``lse_p = -inf``, so its weight is ``exp(-inf) = 0``
and it contributes nothing (we never form ``0/0``). Working in log space keeps
``exp`` from overflowing, as the max-subtraction in softmax does.

The merge is also associative and commutative: merging (A, B) and then C
equals merging A with (B, C). That is what makes it the bridge to multi-device
serving:

* **split-KV / flash decoding**: one decode query, a long context split across
  thread blocks or GPUs, each computes ``(out_p, lse_p)``, one small reduction;
* **ring attention**: KV blocks travel round a ring of devices and each device
  folds every visiting block into its running ``(out, lse)`` with
  :func:`merge_pair`, one block at a time;
* **sequence-parallel decode**: each device keeps its shard of the KV cache and
  only ``(out, lse)`` -- ``heads * (head_dim + 1)`` numbers per query -- crosses
  the wire, never the KV itself (see :mod:`cblab_teach.advanced.distributed`).

When is sending ``(out, lse)`` cheaper than sending the KV? A shard's partial is
``Q * H * (D + 1)`` numbers, its KV ``2 * (K / P) * Hkv * D``. Decode (``Q = 1``)
over a long context wins by orders of magnitude; a long prefill chunk against a
short context does not, which is why ring attention moves KV blocks during
prefill and split-KV decoding moves partials (``benchmarks/bench_sharding.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch

from ..attention.masked import expand_kv_heads
from ..core.batch_builder import RaggedBatch, batch_mask
from ..errors import ConfigError
from ..plugins.base import AttentionFn, AttentionPlugin

if TYPE_CHECKING:
    from ..model.tiny_lm import StepContext

SplitMode = Literal["contiguous", "round_robin"]


class ShardingError(ConfigError):
    """A sharding setting or tensor shape is invalid (the message names the value)."""


# -- one shard ---------------------------------------------------------------------------------------
def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ShardingError(
            f"q, k, v must be [B, Q, H, D] / [B, K, Hkv, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ShardingError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    b, nq, heads, dim = q.shape
    if k.shape[0] != b or k.shape[-1] != dim:
        raise ShardingError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in batch or head_dim")
    if k.shape[2] == 0 or heads % k.shape[2]:
        raise ShardingError(f"{heads} query heads cannot share {k.shape[2]} KV heads (grouped-query needs a divisor)")
    if tuple(mask.shape) != (b, nq, k.shape[1]) or mask.dtype != torch.bool:
        raise ShardingError(
            f"mask must be bool [B, Q, K] = {(b, nq, k.shape[1])}; got {mask.dtype} {tuple(mask.shape)}"
        )


def partial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over one shard's keys, normalised within the shard, and its log-sum-exp.

    q: ``[B, Q, H, D]``; k, v: ``[B, K, Hkv, D]`` (grouped-query: ``H`` a multiple of ``Hkv``);
    mask: ``[B, Q, K]`` bool. Returns ``out [B, Q, H, D]`` and ``lse [B, Q, H]``.
    A query that sees none of the shard's keys (fully masked row, or an empty shard)
    gets ``out = 0`` and ``lse = -inf``: weight zero in :func:`merge_partials`, never NaN.
    """
    _check_shapes(q, k, v, mask)
    heads = q.shape[-2]
    k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, H, Q]; -inf where every key is masked, or the shard is empty
    finite = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    probs = torch.exp(scores - finite[..., None])  # masked keys: exp(-inf) = 0 exactly
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out, lse.transpose(1, 2)  # lse as [B, Q, H], like out without D


# -- the merge ---------------------------------------------------------------------------------------
def merge_weights(lses: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each shard's share of the softmax mass, ``exp(lse_p - logsumexp_p lse_p)``, and the total lse.

    lses: P tensors ``[...]`` (or one stacked ``[P, ...]``). Returns ``weights [P, ...]``
    (summing to 1 wherever any shard saw a key, 0 where none did) and ``lse [...]``.
    """
    if len(lses) == 0:  # before stacking: torch.stack of nothing is a bare RuntimeError
        raise ShardingError("merge needs at least one shard, got 0")
    stacked = lses if isinstance(lses, torch.Tensor) else torch.stack(list(lses))
    total = torch.logsumexp(stacked, dim=0)  # -inf only where every shard is -inf
    finite = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    return torch.exp(stacked - finite), total  # exp(-inf - x) = 0: an empty shard weighs nothing


def merge_partials_with_lse(
    outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`merge_partials`, also returning the merged lse (so merges can be chained, as in ring attention)."""
    if len(outs) != len(lses):
        raise ShardingError(f"got {len(outs)} partial outputs but {len(lses)} lse tensors")
    for i, (o, s) in enumerate(zip(outs, lses)):
        if tuple(o.shape[:-1]) != tuple(s.shape):
            raise ShardingError(f"shard {i}: out {tuple(o.shape)} and lse {tuple(s.shape)} disagree")
    weights, total = merge_weights(lses)
    out = (weights[..., None] * torch.stack(list(outs))).sum(dim=0)
    return out, total


def merge_partials(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]) -> torch.Tensor:
    """Exact attention from P shards' ``(out_p, lse_p)``: ``sum_p exp(lse_p - logsumexp_p lse_p) * out_p``.

    outs: P tensors ``[..., D]``; lses: P tensors ``[...]`` (e.g. ``[B, Q, H, D]`` and ``[B, Q, H]``).
    Rows no shard could see come out as zeros, like :func:`cblab_teach.attention.masked_attention`.
    """
    return merge_partials_with_lse(outs, lses)[0]


def merge_pair(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one partial into another: the step ring attention repeats as KV blocks go round."""
    return merge_partials_with_lse([out_a, out_b], [lse_a, lse_b])


# -- splitting keys into shards ------------------------------------------------------------------------
def _check_num_shards(num_shards: int) -> None:
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ShardingError(f"num_shards must be an int >= 1, got {num_shards!r}")


def shard_sizes(num_keys: int, num_shards: int) -> list[int]:
    """Balanced contiguous split (like ``torch.tensor_split``): sizes differ by at most one; extra shards are empty."""
    _check_num_shards(num_shards)
    base, extra = divmod(num_keys, num_shards)
    return [base + (1 if p < extra else 0) for p in range(num_shards)]


def shard_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, end)]`` of each shard from its size."""
    bounds, start = [], 0
    for n in sizes:
        bounds.append((start, start + n))
        start += n
    return bounds


def sharded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    num_shards: int,
    sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Split the keys (dim 1 of k, v, dim 2 of mask) into ``num_shards`` contiguous shards, attend, merge.

    Equals :func:`cblab_teach.attention.masked_attention` for any P: balanced shards by default,
    or the given ``sizes`` (unequal, zeros allowed; they must add up to the number of keys).
    """
    _check_num_shards(num_shards)
    if k.dim() != 4:
        raise ShardingError(f"k must be [batch, keys, kv_heads, head_dim], got shape {tuple(k.shape)}")
    num_keys = k.shape[1]
    if sizes is None:
        sizes = shard_sizes(num_keys, num_shards)
    sizes = list(sizes)
    if len(sizes) != num_shards or any(n < 0 for n in sizes) or sum(sizes) != num_keys:
        raise ShardingError(f"shard sizes {sizes} must be {num_shards} non-negative ints adding up to {num_keys} keys")
    outs, lses = [], []
    for start, end in shard_bounds(sizes):
        o, s = partial_attention(q, k[:, start:end], v[:, start:end], mask[:, :, start:end])
        outs.append(o)
        lses.append(s)
    return merge_partials(outs, lses)


# -- sharding a real engine step ---------------------------------------------------------------------
def key_shards(
    batch: RaggedBatch, num_shards: int, mode: SplitMode = "contiguous", block_size: int = 16
) -> torch.Tensor:
    """``[M]`` shard of every key of a ragged batch; each request's own keys are split across the shards.

    ``contiguous``: request r's positions ``0..L_r-1`` cut into ``num_shards`` balanced ranges
    (what sequence parallelism does). ``round_robin``: block ``i`` of the request's block table
    goes to shard ``i % num_shards`` (how a paged pool could be striped across devices).
    Any assignment gives the same merged output; these two are just the natural ones.
    """
    _check_num_shards(num_shards)
    pos = batch.key_positions
    if mode == "contiguous":
        length = batch.context_lens[batch.key_seq_ids]
        return (pos * num_shards) // length  # balanced: shard sizes differ by at most one
    if mode == "round_robin":
        if not isinstance(block_size, int) or block_size < 1:
            raise ShardingError(f"block_size must be an int >= 1, got {block_size!r}")
        return (pos // block_size) % num_shards
    raise ShardingError(f"mode must be 'contiguous' or 'round_robin', got {mode!r}")


def sharded_ragged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: RaggedBatch,
    num_shards: int,
    mode: SplitMode = "contiguous",
    block_size: int = 16,
) -> torch.Tensor:
    """A step's attention with every request's keys split over shards: q ``[N, H, D]``, k, v ``[M, Hkv, D]``.

    Shard p holds the keys ``key_shards == p`` of every request in the batch and sees the
    ragged causal mask restricted to them; the partials merge into the engine's output.
    """
    shard = key_shards(batch, num_shards, mode, block_size)
    mask = batch_mask(batch)
    outs, lses = [], []
    for p in range(num_shards):
        keys = torch.nonzero(shard == p).flatten()
        o, s = partial_attention(q[None], k[keys][None], v[keys][None], mask[:, keys][None])
        outs.append(o[0])
        lses.append(s[0])
    return merge_partials(outs, lses)


class ShardedAttentionPlugin(AttentionPlugin):
    """Replace the engine's attention by sharded attention over the KV pool, merged with log-sum-exp.

    Greedy outputs with this plugin equal the plain engine's: the merge is exact.
    ``verify=True`` also runs the engine's own attention and keeps the largest
    difference seen in ``max_abs_error`` (a live check, for notebooks; ``None`` while no check has run).
    """

    def __init__(
        self, num_shards: int, mode: SplitMode = "contiguous", block_size: int | None = None, verify: bool = False
    ) -> None:
        _check_num_shards(num_shards)
        if mode not in ("contiguous", "round_robin"):
            raise ShardingError(f"mode must be 'contiguous' or 'round_robin', got {mode!r}")
        self.num_shards = num_shards
        self.mode = mode
        self.block_size = block_size
        self.verify = verify
        self.calls = 0
        self.max_abs_error: float | None = None
        self.keys_per_shard = [0] * num_shards  # keys each shard attended over, summed over calls

    def attend(self, layer: int, q: torch.Tensor, ctx: StepContext, default: AttentionFn) -> torch.Tensor:
        k, v = ctx.keys_values(layer)
        block_size = self.block_size or getattr(ctx.cache, "block_size", 16)
        shard = key_shards(ctx.batch, self.num_shards, self.mode, block_size)
        counts = torch.bincount(shard, minlength=self.num_shards).tolist()
        self.keys_per_shard = [a + b for a, b in zip(self.keys_per_shard, counts)]
        out = sharded_ragged_attention(q, k, v, ctx.batch, self.num_shards, self.mode, block_size)
        self.calls += 1
        if self.verify:
            err = (out - default(layer, q, ctx)).abs().max().item()
            self.max_abs_error = max(self.max_abs_error or 0.0, err)
        return out


# -- data for a figure (the course draws it; the core never plots) ---------------------------------------
def demo_sharding_figure(num_keys: int = 12, num_shards: int = 3, head_dim: int = 8, seed: int = 0) -> dict:
    """One query against ``num_keys`` keys split into shards: everything a figure needs, as plain lists.

    Keys: ``shard_of_key``, ``scores``, ``probs_full`` (softmax over all keys), ``probs_in_shard``
    (softmax within each shard), ``shard_lse``, ``shard_weights`` (``exp(lse_p - LSE)``),
    ``probs_merged`` (in-shard probs times the shard weight: equals ``probs_full``),
    ``out_full``, ``out_merged`` and ``max_abs_error``.
    """
    _check_num_shards(num_shards)
    if not isinstance(num_keys, int) or num_keys < 1:
        raise ShardingError(f"num_keys must be an int >= 1, got {num_keys!r}")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, 1, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, num_keys, 1, head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(1, num_keys, 1, head_dim, generator=g, dtype=torch.float64)
    scores = (torch.einsum("d,kd->k", q[0, 0, 0], k[0, :, 0]) / math.sqrt(head_dim)).tolist()
    probs_full = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)
    sizes = shard_sizes(num_keys, num_shards)
    shard_of_key = [p for p, n in enumerate(sizes) for _ in range(n)]
    outs, lses, probs_in_shard = [], [], []
    for start, end in shard_bounds(sizes):
        mask = torch.ones(1, 1, end - start, dtype=torch.bool)
        o, s = partial_attention(q, k[:, start:end], v[:, start:end], mask)
        outs.append(o)
        lses.append(s)
        probs_in_shard += torch.softmax(torch.tensor(scores[start:end], dtype=torch.float64), dim=0).tolist()
    weights, _ = merge_weights(lses)
    weights = weights.flatten().tolist()
    merged = merge_partials(outs, lses)[0, 0, 0]
    full = (probs_full[:, None] * v[0, :, 0]).sum(0)
    probs_merged = [probs_in_shard[j] * weights[shard_of_key[j]] for j in range(num_keys)]
    return {
        "num_keys": num_keys,
        "num_shards": num_shards,
        "shard_sizes": sizes,
        "shard_of_key": shard_of_key,
        "scores": scores,
        "probs_full": probs_full.tolist(),
        "probs_in_shard": probs_in_shard,
        "shard_lse": [s.item() for s in lses],
        "shard_weights": weights,
        "probs_merged": probs_merged,
        "out_full": full.tolist(),
        "out_merged": merged.tolist(),
        "max_abs_error": (merged - full).abs().max().item(),
    }

