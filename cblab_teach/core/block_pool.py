"""The allocator under the paged KV cache: fixed-size blocks, a free list, a reference count per block.

A block is always in exactly one of three states:

* **free**: on ``free_blocks``, holding nothing anyone needs;
* **referenced**: in ``ref_counts[b]`` block tables (a fork or a prefix-cache hit shares it);
* **cached and idle** (prefix caching only): nobody references it, but its tokens are still named in the
  :class:`~.prefix_cache.PrefixIndex`, so a later request can find it; the pool may evict it when it needs room.

Everything above this file (copy-on-write, prefix caching, the scheduler's ledger) asks these questions
here instead of re-deriving them, so that "what would be free if these requests let go" has one answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from ..errors import KVCacheError
from .prefix_cache import PrefixIndex


class BlockPool:
    """Free list and reference counts of ``num_blocks`` blocks; cached idle blocks are evicted LRU-first."""

    def __init__(self, num_blocks: int, prefix: PrefixIndex | None = None) -> None:
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self.ref_counts: list[int] = [0] * num_blocks
        self.prefix = prefix

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now: never used, or cached but idle (evictable)."""
        return len(self.free_blocks) + (len(self.prefix.evictable) if self.prefix else 0)

    def take(self, owner: int) -> int:
        """A block with one reference: a free one, else the least recently used cached idle one."""
        if self.free_blocks:
            block = self.free_blocks.pop()
        elif self.prefix is not None and self.prefix.evictable:
            block = self.prefix.evict()
        else:
            raise KVCacheError(f"the block pool is exhausted while growing request {owner}")
        self.ref_counts[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more table holds ``block`` (a fork, or a prefix-cache hit that wakes an idle block)."""
        if self.prefix is not None:
            self.prefix.unpark(block)  # an idle cached block is in use again (a no-op for one that was not idle)
        self.ref_counts[block] += 1

    def drop(self, block: int) -> None:
        """One table lets go of ``block``; the last one sends it to the free list, or parks it if cached."""
        if self.ref_counts[block] < 1:
            raise KVCacheError(f"block {block} is dropped but no table holds it (double free?)")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            if self.prefix is not None and self.prefix.is_cached(block):
                self.prefix.park(block)
            else:
                self.free_blocks.append(block)

    def released_by(self, tables: Iterable[Sequence[int]]) -> int:
        """Blocks that would become free (or idle) if these tables all let go: those every reference of which
        they hold. A block shared with a table outside the set stays; one shared only among them is freed."""
        held = Counter(b for table in tables for b in table)
        return sum(self.ref_counts[b] == n for b, n in held.items())

    def is_shared(self, block: int, held_by_leaving: Counter | None = None) -> bool:
        """Would a write into ``block`` need a private copy, once the tables counted in ``held_by_leaving``
        have let go of it?"""
        return self.ref_counts[block] - (held_by_leaving[block] if held_by_leaving else 0) > 1
