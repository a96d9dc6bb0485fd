"""The default attention: each group's keys read straight from the pool, then ``scaled_dot_product_attention``.

Same groups as :func:`.ragged.segmented_attention` (decode rows apart from prefill chunks, each padded to the
longest in its group), with the two copies and the hand-written softmax taken out:

* **one read per layer**: the pool slot of every padded key is worked out once per step
  (:func:`pool_layout`), and each layer reads ``pool.index_select(0, slots)`` straight into ``[b, Kmax]``;
  the reference reads every key of the batch into a packed tensor first, then pads it with a second gather;
* **one kernel for the attention**: ``torch.nn.functional.scaled_dot_product_attention`` with a boolean
  mask (``True`` = may attend). A ``False`` key gets exactly zero weight, as in :func:`.masked.attention_probs`,
  and grouped-query heads share K/V without a copy (``enable_gqa``).

A padded query row (a shorter chunk in the prefill group) is allowed key 0 only, so no row is ever fully
masked; its output is never copied out. ``tests/test_fast_paths.py`` checks this path against the references.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.kv_cache import KVCache
from .ragged import SegmentGroup


@dataclass
class PoolGroup:
    """A :class:`SegmentGroup` with what every layer needs precomputed: pool slots, SDPA mask, output rows."""

    q_index: torch.Tensor  # [b, Qmax] rows of the step's queries
    slots: torch.Tensor  # [b * Kmax] pool slot of each padded key (a valid slot even where masked)
    mask: torch.Tensor  # additive float mask, 0 = attend, -inf = masked: [b, 1, 1, Kmax] decode, [b, 1, Qmax, Kmax]
    rows: torch.Tensor  # [R] query rows this group writes
    picks: torch.Tensor  # [R] where each of them sits in the flattened [b * Qmax] output
    first_rows: int | None  # R when the group's rows are exactly 0..R-1 in order (decode rows): no gather needed

    @property
    def decode(self) -> bool:
        return self.q_index.shape[1] == 1

    @property
    def width(self) -> int:
        return self.mask.shape[-1]


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where a key may be read, -inf where not: ``exp(-inf) == 0``, so a masked key gets exactly zero weight."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def pool_layout(layout: list[SegmentGroup], read_slots: torch.Tensor, dtype: torch.dtype) -> list[PoolGroup]:
    """Per group: the pool slots of its padded keys (``read_slots`` are the packed keys' slots) and its mask."""
    groups = []
    for g in layout:
        allowed = g.mask | (~g.q_valid[:, :, None] & (torch.arange(g.mask.shape[-1], device=g.mask.device) == 0))
        flat_valid = g.q_valid.flatten()
        rows = g.q_index.flatten()[flat_valid]
        in_order = bool(flat_valid.all()) and torch.equal(rows, torch.arange(rows.numel(), device=rows.device))
        groups.append(
            PoolGroup(
                q_index=g.q_index,
                slots=read_slots[g.k_index].flatten(),
                mask=_additive(allowed[:, None], dtype),
                rows=rows,
                picks=torch.nonzero(flat_valid).flatten(),
                first_rows=rows.numel() if in_order else None,
            )
        )
    return groups


def read_group(cache: KVCache, layer: int, slots: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's K/V as ``[b, Hkv, Kmax, D]``, read from the pool in one ``index_select`` each."""
    k, v = cache.read(layer, slots)
    b = slots.numel() // width
    return k.view(b, width, *k.shape[1:]).transpose(1, 2), v.view(b, width, *v.shape[1:]).transpose(1, 2)


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query per request: the query heads sharing a KV head become that head's query rows, ``[b, Hkv, G, D]``
    (query head ``h`` reads KV head ``h // G``, as :func:`.masked.expand_kv_heads`), so K/V are never repeated."""
    b, heads, dim = q.shape
    kv_heads = k.shape[1]
    o = F.scaled_dot_product_attention(q.view(b, kv_heads, heads // kv_heads, dim), k, v, attn_mask=mask)
    return o.reshape(b, heads, dim)


def pool_attention(q: torch.Tensor, cache: KVCache, layer: int, groups: list[PoolGroup]) -> torch.Tensor:
    """q: ``[N, H, D]`` -> ``[N, H, D]``; equals ``segmented_attention`` over the same keys."""
    heads, dim = q.shape[1], q.shape[2]
    if len(groups) == 1 and groups[0].decode and groups[0].first_rows == q.shape[0]:  # a decode-only step
        k, v = read_group(cache, layer, groups[0].slots, groups[0].width)
        return _decode_attention(q, k, v, groups[0].mask)
    out = q.new_empty(q.shape)
    for g in groups:
        k, v = read_group(cache, layer, g.slots, g.width)
        if g.decode:
            qs = q[: g.first_rows] if g.first_rows is not None else q[g.rows]
            o = _decode_attention(qs, k, v, g.mask)
        else:
            qg = q[g.q_index].transpose(1, 2)
            o = F.scaled_dot_product_attention(qg, k, v, attn_mask=g.mask, enable_gqa=True)
            o = o.transpose(1, 2).reshape(-1, heads, dim)[g.picks]
        if g.first_rows is not None:
            out[: g.first_rows] = o
        else:
            out[g.rows] = o
    return out
