"""Where K/V live: a dense (contiguous) cache and a paged one, behind one interface.

Both store K/V in one flat pool of *slots* per layer: ``k[layer, slot, head, dim]``.
A request's token at position ``p`` lives in some slot; the layouts differ only
in how positions map to slots:

* :class:`DenseKVCache` reserves one contiguous range per request, as long as
  the request could ever get (prompt + ``max_new_tokens``). Simple, but the
  reservation is mostly empty, and free space fragments into holes.
* :class:`PagedAllocator` cuts the pool into fixed-size blocks. A request owns a
  *block table* (list of block ids) and takes a new block only when its last
  one is full, so it wastes at most one partly-filled block. Blocks go back on
  the free list when it finishes.

Writing and reading are then the same tensor ops for both: scatter the new
tokens' K/V into their slots, gather the keys of every request in the batch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError, KVCacheError
from .block_pool import BlockPool
from .copy_on_write import CopyOnWrite
from .prefix_cache import PrefixCaching, PrefixIndex


@dataclass(frozen=True)
class KVUsage:
    """How much of the pool is in use, and how much of that is waste."""

    total_slots: int
    reserved_slots: int  # taken from the pool (dense: whole reservation; paged: whole blocks)
    used_slots: int  # actually holding a token's K/V
    bytes_per_slot: int

    @property
    def waste_slots(self) -> int:
        return self.reserved_slots - self.used_slots

    @property
    def used_bytes(self) -> int:
        return self.used_slots * self.bytes_per_slot

    @property
    def reserved_bytes(self) -> int:
        return self.reserved_slots * self.bytes_per_slot


class KVCache(ABC):
    """A pool of K/V slots shared by all requests, all layers and all heads."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_slots: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_slots < 1:
            raise ConfigError(f"a KV cache needs at least one slot, got {num_slots}")
        shape = (num_layers, num_slots, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        self.lengths: dict[int, int] = {}  # request id -> tokens stored
        self.plugins: list = []  # CachePlugins, set by the engine

    # -- bookkeeping each layout defines --------------------------------------
    @abstractmethod
    def fits(self, token_counts: Sequence[int]) -> bool:
        """Could requests of these worst-case lengths be admitted now, together?"""

    @abstractmethod
    def admit(self, request_id: int, max_tokens: int, reserve: bool = True) -> None:
        """Make room for a request that may grow to ``max_tokens`` tokens (promised now if ``reserve``)."""

    @abstractmethod
    def _grow(self, request_id: int, num_tokens: int) -> None:
        """Make sure slots exist for positions ``[0, num_tokens)``."""

    @abstractmethod
    def _release(self, request_id: int) -> None:
        """Give the request's slots back to the pool."""

    @abstractmethod
    def slots(self, request_ids: Sequence[int], seq_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Slot of each (request, position) pair, for a whole batch in one gather.

        ``seq_index[t]`` says which of ``request_ids`` token ``t`` belongs to.
        """

    @abstractmethod
    def usage(self) -> KVUsage: ...

    # -- shared by both layouts -------------------------------------------------
    @property
    def bytes_per_slot(self) -> int:
        """Bytes of K and V one slot holds over all layers (from the storage itself, so a compressed pool counts)."""
        return (self.k.nbytes + self.v.nbytes) // self.num_slots

    def ensure(self, request_id: int, num_tokens: int) -> None:
        if request_id not in self.lengths:
            raise KVCacheError(f"request {request_id} has no KV in this cache")
        self._grow(request_id, num_tokens)
        self.lengths[request_id] = max(self.lengths[request_id], num_tokens)

    def truncate(self, request_id: int, num_tokens: int) -> None:
        """Forget the K/V of positions ``num_tokens`` and later (rejected speculative tokens)."""
        self.lengths[request_id] = min(self.lengths[request_id], num_tokens)

    def copy_on_write(self, request_id: int, start: int, end: int) -> list[tuple[int, int]]:
        """Make positions ``[start, end)`` private to the request before it writes them; a layout that never
        shares storage has nothing to copy. Returns the ``(old, new)`` blocks copied."""
        return []

    def prepare_writes(self, chunks: Sequence) -> dict[int, list[tuple[int, int]]]:
        """Slots for every chunk's positions ``[start, end)`` (a step's plan); a shared block about to be
        written is copied first. Returns the copies made, ``request id -> [(old, new)]``."""
        copied = {}
        for c in chunks:
            if pairs := self.copy_on_write(c.request_id, c.start, c.end):
                copied[c.request_id] = pairs
            self.ensure(c.request_id, c.end)
        return copied

    def require(self, request_ids: Sequence[int]) -> None:
        """A typed error (not a bare KeyError) when asked about requests that hold no KV here."""
        unknown = [r for r in request_ids if r not in self.lengths]
        if unknown:
            raise KVCacheError(f"requests {unknown} have no KV in this cache (never admitted, or already freed)")

    def free(self, request_id: int) -> None:
        if request_id not in self.lengths:
            raise KVCacheError(f"request {request_id} has no KV to free (double free?)")
        self._release(request_id)
        del self.lengths[request_id]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch=None) -> None:
        """Store this step's K/V ``[tokens, heads, dim]`` into their slots; cache plugins see the step's ``batch``."""
        for plugin in self.plugins:
            k, v = plugin.before_append(layer, k, v, batch)
        self.k[layer, slots] = k
        self.v[layer, slots] = v
        for plugin in self.plugins:
            plugin.after_append(layer, k, v, batch)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V at ``slots`` (any shape) as ``[*slots.shape, heads, dim]``.

        One ``index_select`` of whole rows per pool: on CPU several times faster than ``pool[layer, slots]``
        (advanced indexing), for the same rows. A pool that is not a plain tensor (a compressed one) is indexed.
        """
        if not isinstance(self.k, torch.Tensor):
            return self.k[layer, slots], self.v[layer, slots]
        flat = slots.reshape(-1)
        shape = (*slots.shape, *self.k.shape[2:])
        return self.k[layer].index_select(0, flat).view(shape), self.v[layer].index_select(0, flat).view(shape)

    def request_slots(self, request_id: int, start: int, end: int) -> torch.Tensor:
        """Slots of one request's positions ``[start, end)``: what a copy in or out of its K/V indexes."""
        pos = torch.arange(start, end, device=self.k.device)
        return self.slots([request_id], torch.zeros_like(pos), pos)

    def gather(self, layer: int, request_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A request's K/V ``[length, heads, dim]`` as one contiguous tensor."""
        self.require([request_id])
        return self.read(layer, self.request_slots(request_id, 0, self.lengths[request_id]))


class DenseKVCache(KVCache):
    """One contiguous reservation per request, sized for its longest possible life."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ranges: dict[int, tuple[int, int]] = {}  # request id -> (first slot, capacity)

    def _holes(self, taken: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        holes, cursor = [], 0
        for start, size in sorted(taken):
            if start > cursor:
                holes.append((cursor, start - cursor))
            cursor = max(cursor, start + size)
        if cursor < self.num_slots:
            holes.append((cursor, self.num_slots - cursor))
        return holes

    def _first_fit(self, size: int, taken: list[tuple[int, int]]) -> int | None:
        for start, hole in self._holes(taken):
            if hole >= size:
                return start
        return None

    def fits(self, token_counts: Sequence[int]) -> bool:
        taken = list(self.ranges.values())
        for n in token_counts:
            start = self._first_fit(n, taken)
            if start is None:
                return False
            taken.append((start, n))
        return True

    def admit(self, request_id: int, max_tokens: int, reserve: bool = True) -> None:
        if request_id in self.lengths:
            raise KVCacheError(f"request {request_id} already has KV in this cache")
        start = self._first_fit(max_tokens, list(self.ranges.values()))
        if start is None:
            raise KVCacheError(f"no contiguous range of {max_tokens} slots is free for request {request_id}")
        self.ranges[request_id] = (start, max_tokens)
        self.lengths[request_id] = 0

    def _grow(self, request_id: int, num_tokens: int) -> None:
        if num_tokens > self.ranges[request_id][1]:
            raise KVCacheError(
                f"request {request_id} needs {num_tokens} slots but reserved {self.ranges[request_id][1]}"
            )

    def _release(self, request_id: int) -> None:
        del self.ranges[request_id]

    def slots(self, request_ids: Sequence[int], seq_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.require(request_ids)
        starts = torch.tensor([self.ranges[r][0] for r in request_ids], dtype=torch.long, device=self.k.device)
        return starts[seq_index] + positions

    def usage(self) -> KVUsage:
        return KVUsage(
            total_slots=self.num_slots,
            reserved_slots=sum(size for _, size in self.ranges.values()),
            used_slots=sum(self.lengths.values()),
            bytes_per_slot=self.bytes_per_slot,
        )


class PagedAllocator(CopyOnWrite, PrefixCaching, KVCache):
    """A shared pool of fixed-size blocks, a free list, and a block table per request.

    Split by idea: the free list and reference counts are a :class:`~.block_pool.BlockPool`
    (``free_blocks``, ``ref_counts``); forks and copy-on-write live in :mod:`.copy_on_write`;
    prefix caching in :mod:`.prefix_cache`. With prefix caching or forks a block may sit in
    several block tables at once, and ``ref_counts`` says how many.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        enable_prefix_caching: bool = False,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ConfigError(f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
        super().__init__(num_layers, num_kv_heads, head_dim, num_blocks * block_size, dtype, device)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.pool = BlockPool(num_blocks, PrefixIndex() if enable_prefix_caching else None)
        self.block_tables: dict[int, list[int]] = {}
        self.reserved_blocks: dict[int, int] = {}  # worst case promised at admission
        self._digests: dict[int, list[bytes]] = {}  # request id -> digests of its registered full blocks
        self._forked = False  # a fork shares blocks between tables, so used slots must count each block once

    # the pool's state, under the names the course has always used
    @property
    def free_blocks(self) -> list[int]:
        return self.pool.free_blocks

    @property
    def ref_counts(self) -> list[int]:
        return self.pool.ref_counts

    @property
    def prefix(self) -> PrefixIndex | None:
        return self.pool.prefix

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now: never used, or cached but unused (evictable)."""
        return self.pool.num_free

    def _unpromised_blocks(self) -> int:
        promised = sum(max(0, self.reserved_blocks[r] - len(self.block_tables[r])) for r in self.block_tables)
        return self.num_free_blocks - promised

    def fits(self, token_counts: Sequence[int]) -> bool:
        return sum(self.blocks_for(n) for n in token_counts) <= self._unpromised_blocks()

    # -- what the scheduler's ledger asks ------------------------------------------------------------
    def blocks_needed(self, request_id: int, num_tokens: int, leaving: Iterable[int] = ()) -> int:
        """New blocks a request needs to hold ``num_tokens`` tokens: blocks past its table, plus a copy of each
        shared block it will write into (copy-on-write) -- shared, that is, once the requests in ``leaving``
        (preempted this step) have let go of theirs."""
        held = Counter(b for r in leaving for b in self.block_tables.get(r, ()))
        grow = max(0, self.blocks_for(num_tokens) - len(self.block_tables.get(request_id, ())))
        return grow + self.copies_needed(request_id, num_tokens, held)

    def blocks_released_by(self, request_ids: int | Iterable[int]) -> int:
        """Blocks that would become free if these requests let go of their KV together (a block also held
        by a request outside them stays)."""
        ids = [request_ids] if isinstance(request_ids, int) else list(request_ids)
        return self.pool.released_by(self.block_tables.get(r, ()) for r in ids)

    def admit(self, request_id: int, max_tokens: int, reserve: bool = True, copies: int = 1) -> None:
        """``copies`` > 1 reserves for a request that will fork into that many sequences (parallel sampling)."""
        if request_id in self.lengths:
            raise KVCacheError(f"request {request_id} already has KV in this cache")
        if reserve and not self.fits([max_tokens] * copies):
            raise KVCacheError(f"{self.blocks_for(max_tokens) * copies} blocks are not free for request {request_id}")
        self.block_tables[request_id] = []
        self.reserved_blocks[request_id] = self.blocks_for(max_tokens) * copies if reserve else 0
        self.lengths[request_id] = 0
        self._digests[request_id] = []

    # -- growth and release -------------------------------------------------------------
    def _take_block(self, request_id: int) -> int:
        return self.pool.take(request_id)

    def _drop_block(self, block: int) -> None:
        self.pool.drop(block)

    def _grow(self, request_id: int, num_tokens: int) -> None:
        table = self.block_tables[request_id]
        while len(table) * self.block_size < num_tokens:
            table.append(self.pool.take(request_id))

    def truncate(self, request_id: int, num_tokens: int) -> None:
        """Forget tokens from ``num_tokens`` on (rejected draft tokens) and return whole unused blocks."""
        table = self.block_tables[request_id]
        keep = self.blocks_for(num_tokens)
        while len(table) > keep:
            self.pool.drop(table.pop())
        self.lengths[request_id] = min(self.lengths[request_id], num_tokens)

    def _release(self, request_id: int) -> None:
        for block in reversed(self.block_tables.pop(request_id)):
            self.pool.drop(block)
        del self.reserved_blocks[request_id]
        del self._digests[request_id]

    def slots(self, request_ids: Sequence[int], seq_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.require(request_ids)
        tables = [self.block_tables[r] for r in request_ids]
        width = max((len(t) for t in tables), default=0) or 1
        padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=self.k.device)
        return padded[seq_index, positions // self.block_size] * self.block_size + positions % self.block_size

    def flatten(self, layer: int, request_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate a request's blocks in table order and trim the unused tail."""
        self.require([request_id])
        blocks = torch.tensor(self.block_tables[request_id], dtype=torch.long, device=self.k.device)
        _, _, heads, dim = self.k.shape
        k = self.k[layer].view(self.num_blocks, self.block_size, heads, dim)[blocks]
        v = self.v[layer].view(self.num_blocks, self.block_size, heads, dim)[blocks]
        n = self.lengths[request_id]
        return k.reshape(-1, heads, dim)[:n], v.reshape(-1, heads, dim)[:n]

    def gather(self, layer: int, request_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flatten(layer, request_id)

    def _used_slots(self) -> int:
        """Slots holding a token; a block shared by several requests counts once."""
        if self.prefix is None and not self._forked:
            return sum(self.lengths.values())
        fill: dict[int, int] = {}
        for rid, table in self.block_tables.items():
            n = self.lengths[rid]
            for i, block in enumerate(table):
                fill[block] = max(fill.get(block, 0), min(self.block_size, max(0, n - i * self.block_size)))
        return sum(fill.values())

    def usage(self) -> KVUsage:
        # a block is free, parked in the prefix cache (evictable), or referenced: no walk over every block needed
        used_blocks = self.num_blocks - self.num_free_blocks
        return KVUsage(
            total_slots=self.num_slots,
            reserved_slots=used_blocks * self.block_size,
            used_slots=self._used_slots(),
            bytes_per_slot=self.bytes_per_slot,
        )
