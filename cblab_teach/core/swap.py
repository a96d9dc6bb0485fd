"""Swap preemption: park a victim's K/V in host memory instead of throwing it away.

When the block pool runs out, a preempted request loses its blocks. With recompute (the
default, and the only mode vLLM V1 keeps) its tokens are prefilled again later: compute
spent twice. With swap, its K/V is first copied to a second pool in host memory
(:class:`HostKVPool`, with its own capacity), and copied back when it is admitted again, so
it resumes exactly where it stopped: bytes moved twice instead of tokens recomputed.

Which is cheaper depends on the machine: a copy costs ``2 x bytes / copy bandwidth`` (out and
back), a recompute costs the forward of ``tokens`` tokens. On a GPU the copy crosses PCIe,
much slower than the GPU's own memory, and a recompute batches with other work, which is why
vLLM V1 recomputes. ``benchmarks/bench_swap.py`` measures the crossover on this machine.

A host pool without room for a victim is not an error: that victim is recomputed instead.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, KVCacheError
from .kv_cache import KVCache


class HostKVPool:
    """Blocks of K/V in host memory, ``[layers, blocks * block_size, kv_heads, head_dim]``, with a free list."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        pin_memory: bool = False,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ConfigError(f"a host pool needs num_blocks and block_size >= 1, got {num_blocks} and {block_size}")
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, pin_memory=pin_memory)  # pinned: faster, async copies from a GPU
        self.v = torch.zeros(shape, dtype=dtype, pin_memory=pin_memory)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))
        self.tables: dict[int, list[int]] = {}  # request id -> host blocks holding its K/V
        self.lengths: dict[int, int] = {}  # request id -> tokens parked

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def can_hold(self, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) <= len(self.free_blocks)

    def holds(self, request_id: int) -> bool:
        return request_id in self.tables

    def _host_slots(self, request_id: int, num_tokens: int) -> torch.Tensor:
        pos = torch.arange(num_tokens)
        table = torch.tensor(self.tables[request_id], dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def swap_out(self, kv: KVCache, request_id: int, num_tokens: int) -> int:
        """Copy positions ``[0, num_tokens)`` of a request from ``kv`` to host blocks; returns the bytes copied.

        The caller frees the request's device blocks afterwards."""
        if request_id in self.tables:
            raise KVCacheError(f"request {request_id} is already swapped out")
        if not self.can_hold(num_tokens):
            raise KVCacheError(
                f"the host pool has {len(self.free_blocks)} free blocks, request {request_id} needs "
                f"{self.blocks_for(num_tokens)}"
            )
        self.tables[request_id] = [self.free_blocks.pop() for _ in range(self.blocks_for(num_tokens))]
        self.lengths[request_id] = num_tokens
        device_slots = kv.request_slots(request_id, 0, num_tokens)
        host_slots = self._host_slots(request_id, num_tokens)
        k, v = kv.k.index_select(1, device_slots), kv.v.index_select(1, device_slots)  # every layer at once
        self.k[:, host_slots] = k.to("cpu")
        self.v[:, host_slots] = v.to("cpu")
        return k.nbytes + v.nbytes

    def swap_in(self, kv: KVCache, request_id: int) -> tuple[int, int]:
        """Copy a parked request back into ``kv`` (admitted there already); returns (tokens, bytes copied)."""
        if request_id not in self.tables:
            raise KVCacheError(f"request {request_id} is not swapped out")
        n = self.lengths[request_id]
        kv.ensure(request_id, n)
        device_slots = kv.request_slots(request_id, 0, n)
        host_slots = self._host_slots(request_id, n)
        k, v = self.k[:, host_slots], self.v[:, host_slots]
        kv.k[:, device_slots] = k.to(kv.k.device)
        kv.v[:, device_slots] = v.to(kv.v.device)
        self.discard(request_id)
        return n, k.nbytes + v.nbytes

    def discard(self, request_id: int) -> None:
        """Give a parked request's host blocks back (after its swap-in, or without copying: it was aborted)."""
        if request_id not in self.tables:
            raise KVCacheError(f"request {request_id} is not swapped out")
        self.free_blocks.extend(reversed(self.tables.pop(request_id)))
        del self.lengths[request_id]

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self.free_blocks)
