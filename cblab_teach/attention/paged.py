"""Paged attention: read K/V from the block pool, two ways that must agree.

* through :meth:`PagedAllocator.flatten`: copy each request's blocks into one
  contiguous tensor first (simple; what the Q&A describes);
* straight from the block table: turn (request, position) into pool slots with
  the block table and gather those rows (no per-request contiguous copy, but an
  indexed gather that still moves O(context) bytes into a new tensor per layer
  and step). A real paged kernel, as in vLLM, reads the blocks in place inside
  the attention kernel and never materialises the gathered keys.
"""

from __future__ import annotations

import torch

from ..core.batch_builder import RaggedBatch
from ..core.kv_cache import KVCache


def gather_from_block_table(cache: KVCache, layer: int, batch: RaggedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """All keys of the batch's requests, in batch order, gathered by slot."""
    slots = cache.slots(batch.request_ids, batch.key_seq_ids, batch.key_positions)
    return cache.read(layer, slots)


def gather_by_flatten(cache: KVCache, layer: int, batch: RaggedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """All keys of the batch's requests, by flattening each request's blocks."""
    ks, vs = [], []
    for i, rid in enumerate(batch.request_ids):
        k, v = cache.gather(layer, rid)  # PagedAllocator.flatten for the paged layout
        n = int(batch.context_lens[i])
        ks.append(k[:n])
        vs.append(v[:n])
    return torch.cat(ks), torch.cat(vs)

