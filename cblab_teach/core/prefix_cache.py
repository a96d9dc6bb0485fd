"""Prefix caching: find full KV blocks that another request already computed.

A full block is named by a *chained* hash: the digest of its parent block's
digest and its own tokens. Two requests get the same digest for block ``i``
only if their first ``(i + 1) * block_size`` tokens are identical, so a new
request can reuse every leading block whose digest is known, by reference
(no copy), and compute only the rest.

When the last request using a cached block finishes, the block is not wiped:
it waits in an LRU list, still findable, until the pool needs it back.
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
