"""Prefix caching: find full KV blocks that another request already computed.

A full block is named by a *chained* hash: the digest of its parent block's
digest and its own tokens. Two requests get the same digest for block ``i``
only if their first ``(i + 1) * block_size`` tokens are identical, so a new
request can reuse every leading block whose digest is known, by reference
(no copy), and compute only the rest.

When the last request using a cached block finishes, the block is not wiped:
it waits in an LRU list, still findable, until the pool needs it back.

:class:`PrefixIndex` is the name table alone; :class:`PrefixCaching` is the side of
:class:`~.kv_cache.PagedAllocator` that looks names up, claims cached blocks for a new
request and names the blocks a request has filled.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence


def block_digests(token_ids: Sequence[int], block_size: int, parent: bytes = b"") -> list[bytes]:
    """Chained digests of every *full* block of ``token_ids``."""
    digests = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hashlib.sha256(parent)
        h.update(b",".join(str(t).encode() for t in token_ids[start : start + block_size]))
        parent = h.digest()
        digests.append(parent)
    return digests


class PrefixIndex:
    """digest -> block id for full blocks, plus the LRU of cached blocks nobody uses now."""

    def __init__(self) -> None:
        self.block_of: dict[bytes, int] = {}
        self.digest_of: dict[int, bytes] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self.hits = 0  # blocks reused
        self.evictions = 0

    def lookup(self, digests: Sequence[bytes]) -> list[int]:
        """Blocks of the longest cached run of leading digests."""
        blocks = []
        for d in digests:
            block = self.block_of.get(d)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def register(self, digest: bytes, block: int) -> bool:
        """Name a block that just became full; False if that prefix is already cached elsewhere."""
        if digest in self.block_of or block in self.digest_of:
            return False
        self.block_of[digest] = block
        self.digest_of[block] = digest
        return True

    def is_cached(self, block: int) -> bool:
        return block in self.digest_of

    def park(self, block: int) -> None:
        """Nobody uses the block any more; keep it findable until evicted."""
        self.evictable[block] = None

    def unpark(self, block: int) -> None:
        self.evictable.pop(block, None)

    def evict(self) -> int:
        """Forget the least recently used cached block and hand it back for reuse."""
        block, _ = self.evictable.popitem(last=False)
        del self.block_of[self.digest_of.pop(block)]
        self.evictions += 1
        return block


class PrefixCaching:
    """A mixin of :class:`~.kv_cache.PagedAllocator`: reuse whole cached blocks of a request's leading tokens."""

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        """Tokens of ``token_ids`` whose KV is cached in whole blocks (pure lookup).

        At least one token is always left to compute: its logits give the next token.
        """
        if self.prefix is None:
            return 0
        blocks = self.prefix.lookup(block_digests(token_ids[:-1], self.block_size))
        return len(blocks) * self.block_size

    def claim_prefix(self, request_id: int, token_ids: Sequence[int]) -> int:
        """Put the cached leading blocks into the request's table (by reference); returns tokens reused."""
        if self.prefix is None:
            return 0
        digests = block_digests(token_ids[:-1], self.block_size)
        blocks = self.prefix.lookup(digests)
        for block in blocks:
            self.pool.share(block)
        self.block_tables[request_id].extend(blocks)
        self._digests[request_id] = digests[: len(blocks)]
        self.prefix.hits += len(blocks)
        n = len(blocks) * self.block_size
        self.lengths[request_id] = n
        return n

    def register_full_blocks(self, request_id: int, token_ids: Sequence[int]) -> None:
        """Name the request's blocks that are now full, so later requests can find them."""
        if self.prefix is None:
            return
        known = self._digests[request_id]
        full = self.lengths[request_id] // self.block_size
        if full <= len(known):
            return
        parent = known[-1] if known else b""
        start = len(known) * self.block_size
        new = block_digests(token_ids[start : full * self.block_size], self.block_size, parent)
        table = self.block_tables[request_id]
        for i, digest in enumerate(new, start=len(known)):
            self.prefix.register(digest, table[i])
        known.extend(new)
