"""Attention-sink + sliding-window eviction (StreamingLLM): attend to the first ``sink`` tokens and the last ``window``.

Long conversations outgrow any KV budget. StreamingLLM's observation: keeping
the very first tokens (the "attention sinks" that soak up probability mass)
plus a recent window keeps a model fluent, while everything in between is
evicted. Here a query at position ``i`` may see key ``j`` only if
``j < sink`` or ``i - j < window`` (and ``j <= i``, as always).

The plugin changes attention, so it changes outputs (unlike the recorder).
With the paged layout it also *evicts*: after each step, every block whose
tokens no query will ever see again goes back to the free list. Its entry in
the block table then points at one shared "null block" (as vLLM does), so
positions still map to slots; attention masks those keys, so what the null
block holds never matters. One block is kept for that purpose while the plugin
is in use. ``released_blocks`` counts the blocks handed back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..attention.masked import masked_attention
from ..core.batch_builder import batch_mask
from ..core.kv_cache import PagedAllocator
from ..errors import ConfigError
from .base import AttentionFn, AttentionPlugin, SchedulerPlugin

if TYPE_CHECKING:
    from ..core.engine import Engine, StepRecord
    from ..model.tiny_lm import StepContext


def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, sink: int) -> torch.Tensor:
    """``[N, M]`` bool: key ``j`` survives eviction for query ``i`` (causality is applied separately)."""
    return (k_pos[None, :] < sink) | (q_pos[:, None] - k_pos[None, :] < window)


class SlidingWindowPlugin(AttentionPlugin, SchedulerPlugin):
    """Evict the middle of long sequences: attend to the ``sink`` first tokens and the last ``window``,
    and (paged layout, ``release=True``) give the evicted blocks back to the pool."""

    def __init__(self, window: int, sink: int = 4, release: bool = True) -> None:
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be an int >= 1, got {window!r}")
        if not isinstance(sink, int) or sink < 0:
            raise ConfigError(f"sink must be an int >= 0, got {sink!r}")
        self.window = window
        self.sink = sink
        self.release = release
        self.released_blocks = 0
        self.null_block: int | None = None
        self._null_owner: PagedAllocator | None = None
        self.masked_keys = 0  # (query, key) pairs the window removed, summed over layers and steps

    def evicted_tokens(self, length: int) -> int:
        """K/V slots of a ``length``-token sequence that its next token will never read."""
        return max(0, length + 1 - self.window - self.sink)

    def attend(self, layer: int, q: torch.Tensor, ctx: StepContext, default: AttentionFn) -> torch.Tensor:
        batch = ctx.batch
        k, v = ctx.keys_values(layer)
        causal = batch_mask(batch)
        mask = causal & window_mask(batch.positions, batch.key_positions, self.window, self.sink)
        if layer == 0:
            self.masked_keys += int(causal.sum() - mask.sum())
        return masked_attention(q[None], k[None], v[None], mask[None])[0]

    # -- eviction ------------------------------------------------------------------------------
    def evictable_blocks(self, num_computed: int, block_size: int) -> range:
        """Table indices of blocks no query at position >= ``num_computed`` will read.

        Block ``i`` holds positions ``[i*bs, (i+1)*bs)``: it is past the window when its last position
        ``j`` has ``num_computed - j >= window``, and outside the sink when its first is ``>= sink``.
        """
        first = -(-self.sink // block_size)
        end = (num_computed - self.window + 1) // block_size
        return range(first, max(first, end))

    def after_step(self, engine: Engine, record: StepRecord) -> None:
        kv = engine.kv
        if not self.release or not isinstance(kv, PagedAllocator):
            return
        if kv.prefix is not None:
            raise ConfigError("SlidingWindowPlugin(release=True) cannot be used with enable_prefix_caching")
        null = self.null_block if self._null_owner is kv else None
        for request in engine.running:
            table = kv.block_tables.get(request.request_id, [])
            for i in self.evictable_blocks(request.num_computed, kv.block_size):
                if i < len(table) and table[i] != null:
                    self._evict(kv, table, i)
                    null = self.null_block

    def _evict(self, kv: PagedAllocator, table: list[int], i: int) -> None:
        old = table[i]
        kv._drop_block(old)  # back on the free list (it is this request's own block)
        if self._null_owner is not kv:
            self.null_block = kv._take_block(-1)  # held by the plugin itself; often the block just freed
            self._null_owner = kv
        else:
            self.released_blocks += 1  # the very first eviction only pays for the null block
        table[i] = self.null_block
        kv.ref_counts[self.null_block] += 1  # one reference per table entry, dropped when the request leaves
