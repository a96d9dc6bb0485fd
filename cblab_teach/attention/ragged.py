"""Attention over a ragged batch, two ways that must agree.

* :func:`ragged_attention` builds the full ``[N, M]`` ragged causal mask (every
  query against every key of the step) and runs one masked attention. It is
  the definition: easy to draw, but it computes ``N * M`` scores, most masked.
* :func:`segmented_attention` does the same work request by request, batched:
  each request's queries are laid out against only its own keys (padded to the
  longest in its group), and decode rows (one query) are grouped apart from
  prefill chunks so a single long chunk does not pad every decode row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.batch_builder import RaggedBatch, batch_mask
from .masked import masked_attention


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch) -> torch.Tensor:
    """q: ``[N, H, D]``; k, v: ``[M, Hkv, D]`` (all keys of the batch's requests, in batch order)."""
    mask = batch_mask(batch)
    return masked_attention(q[None], k[None], v[None], mask[None])[0]


@dataclass
class SegmentGroup:
    """Requests laid out as ``[b, Qmax]`` queries against ``[b, Kmax]`` keys."""

    q_index: torch.Tensor  # [b, Qmax] rows of the packed queries (clamped where invalid)
    q_valid: torch.Tensor  # [b, Qmax]
    k_index: torch.Tensor  # [b, Kmax] rows of the packed keys
    mask: torch.Tensor  # [b, Qmax, Kmax] causal, within the request


def _pad_index(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = int(lengths.max()) if len(lengths) else 0
    offsets = torch.arange(width, device=starts.device)
    valid = offsets[None, :] < lengths[:, None]
    index = torch.where(valid, starts[:, None] + offsets[None, :], starts[:, None])
    return index, valid


def segment_layout(batch: RaggedBatch) -> list[SegmentGroup]:
    """Group the batch's requests (decode rows apart from prefill chunks) and pad each group."""
    q_lens = batch.query_lens
    k_lens = batch.context_lens
    k_starts = torch.cumsum(k_lens, 0) - k_lens
    groups = []
    for rows in (torch.nonzero(q_lens == 1).flatten(), torch.nonzero(q_lens > 1).flatten()):
        if rows.numel() == 0:
            continue
        q_index, q_valid = _pad_index(batch.cu_seqlens[rows], q_lens[rows])
        k_index, k_valid = _pad_index(k_starts[rows], k_lens[rows])
        q_pos = batch.positions[q_index]
        k_pos = torch.arange(k_index.shape[1], device=q_pos.device)
        mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & k_valid[:, None, :] & q_valid[:, :, None]
        groups.append(SegmentGroup(q_index, q_valid, k_index, mask))
    return groups


def segmented_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch, layout: list[SegmentGroup] | None = None
) -> torch.Tensor:
    """Same result as :func:`ragged_attention`, computing only each request's own scores."""
    layout = segment_layout(batch) if layout is None else layout
    out = torch.empty_like(q)
    for g in layout:
        o = masked_attention(q[g.q_index], k[g.k_index], v[g.k_index], g.mask)
        out[g.q_index[g.q_valid]] = o[g.q_valid]
    return out
