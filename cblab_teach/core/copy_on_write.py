"""Copy-on-write: sequences that share a prompt share its KV blocks until one of them writes.

Parallel sampling (``Engine.add_request_group``) prefills a prompt once; at its first sample every other
sequence *forks*: it gets the same block table, and each block's reference count goes up. Blocks that are
full are only ever read, so they stay shared for good. The partly filled last block is written by every
sequence's next token: before that write, a sequence whose block is still shared takes a private copy
(:meth:`CopyOnWrite.copy_on_write`). The last holder writes in place, so ``n`` sharers make ``n - 1`` copies.

A mixin of :class:`~.kv_cache.PagedAllocator`: it reads the allocator's block tables, lengths and pool.
"""

from __future__ import annotations

from collections import Counter

from ..errors import KVCacheError


class CopyOnWrite:
    """Fork a block table by reference; copy a shared block just before a write into it."""

    def fork(self, parent: int, child: int, max_tokens: int, reserve: bool = True) -> None:
        """Give ``child`` the parent's K/V by reference: the same block table, every block's count + 1.

        With ``reserve``, the parent's reservation (made for the whole group) is split: each sequence keeps
        its own worst case, plus one block for copying the shared, partly filled last block."""
        if child in self.lengths:
            raise KVCacheError(f"request {child} already has KV in this cache")
        self.require([parent])
        table = self.block_tables[parent]
        for block in table:
            self.pool.share(block)
        self._forked = True
        self.block_tables[child] = list(table)
        self.lengths[child] = self.lengths[parent]
        self._digests[child] = list(self._digests[parent])
        partial = int(self.lengths[parent] % self.block_size != 0)
        self.reserved_blocks[child] = self.blocks_for(max_tokens) + partial if reserve else 0
        if reserve:
            self.reserved_blocks[parent] = self.blocks_for(max_tokens)

    def copies_needed(self, request_id: int, num_tokens: int, leaving: Counter | None = None) -> int:
        """Shared blocks the request would copy before writing up to ``num_tokens`` tokens, once the tables
        counted in ``leaving`` (preempted this step) have let go of theirs."""
        table = self.block_tables.get(request_id)
        if not table:
            return 0
        first = self.lengths[request_id] // self.block_size  # writes start at the tokens it holds
        return sum(self.pool.is_shared(b, leaving) for b in table[first : self.blocks_for(num_tokens)])

    def copy_on_write(self, request_id: int, start: int, end: int) -> list[tuple[int, int]]:
        """Before writing positions ``[start, end)``, replace each shared block among them by a private copy.

        Returns the ``(old, new)`` pairs copied."""
        table = self.block_tables[request_id]
        copied = []
        for i in range(start // self.block_size, min(len(table), self.blocks_for(end))):
            old = table[i]
            if self.pool.is_shared(old):
                new = self.pool.take(request_id)
                rows, into = slice(old * self.block_size, (old + 1) * self.block_size), new * self.block_size
                self.k[:, into : into + self.block_size] = self.k[:, rows]
                self.v[:, into : into + self.block_size] = self.v[:, rows]
                self.pool.drop(old)  # others still hold it
                table[i] = new
                copied.append((old, new))
        return copied
