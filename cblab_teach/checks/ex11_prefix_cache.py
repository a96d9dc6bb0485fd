"""Exercise 11: find the longest cached prefix by chained block digests.

::

    cached_prefix(token_ids, block_size, cache) -> number of prompt tokens whose KV is reused

``cache`` maps the digest of a full block to its block id. A block's digest is
``hash_block(parent_digest, block_tokens)`` with the previous block's digest as
parent (``b""`` for the first), so two prompts share block ``i``'s digest only
if their first ``(i + 1) * block_size`` tokens agree. Only *leading* full
blocks count, and never the whole prompt: the last token is always computed
again, because its logits give the first new token. The reference is the
library's own :func:`cblab_teach.core.prefix_cache.block_digests` and
:class:`~cblab_teach.core.prefix_cache.PrefixIndex` lookup.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from ..core.prefix_cache import PrefixIndex, block_digests
from ._base import Case, Exercise, Mismatch


def hash_block(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The digest of one full block whose parent block has digest ``parent`` (the library's encoding)."""
    return hashlib.sha256(parent + b",".join(str(int(t)).encode() for t in tokens)).digest()


def reference_cached_prefix(token_ids: list[int], block_size: int, cache: dict[bytes, int]) -> int:
    """Leading full blocks of ``token_ids[:-1]`` found in the cache, in tokens."""
    index = PrefixIndex()
    index.block_of = dict(cache)
    return len(index.lookup(block_digests(token_ids[:-1], block_size))) * block_size


def cache_of(prompts: list[list[int]], block_size: int, drop_first: bool = False) -> dict[bytes, int]:
    """The cache after serving ``prompts``: every full block of each, chained (optionally the first evicted)."""
    cache: dict[bytes, int] = {}
    for p in prompts:
        for i, d in enumerate(block_digests(p, block_size)):
            if drop_first and i == 0:
                continue
            cache.setdefault(d, len(cache))
    return cache


def _case(prompt: list[int], block_size: int, served: list[list[int]], drop_first: bool = False) -> dict[str, Any]:
    return {"token_ids": prompt, "block_size": block_size, "cache": cache_of(served, block_size, drop_first)}


class PrefixCacheExercise(Exercise):
    name = "ex11_prefix_cache"
    title = "Chained block digests and the longest cached prefix"
    entry = "cached_prefix"
    course = "12_prefix_caching"
    hint = (
        "digest full blocks of token_ids[:-1] in order, each hash_block(previous digest, block) starting from b''; "
        "count leading digests found in the cache and stop at the first miss; return blocks * block_size"
    )

    @property
    def reference(self):
        return reference_cached_prefix

    def fixed_cases(self) -> list[Case]:
        system = [7, 3, 9, 1, 4, 4, 2, 8]  # two blocks of 4: a shared system prompt
        return [
            Case("empty cache", _case(system + [5, 6], 4, [])),
            Case("shared system prompt, new question", _case(system + [5, 6, 1], 4, [system + [9, 9]])),
            Case("whole prompt cached, block-aligned (last token recomputed)", _case(system, 4, [system])),
            Case("prompt = cached blocks + 1 token", _case(system + [5], 4, [system])),
            Case(
                "same block content, different prefix",
                _case([1, 1, 1, 1] + system[4:] + [0], 4, [system, [2, 2, 2, 2, 1, 1, 1, 1]]),
            ),
            Case("first block evicted, second still cached", _case(system + [5, 6], 4, [system], drop_first=True)),
            Case("partial last block shared", _case(system + [5, 6, 0], 4, [system + [5, 6, 7, 1]])),
            Case("prompt shorter than a block", _case([7, 3], 4, [system])),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        bs = rng.choice([1, 2, 3, 4])
        vocab = rng.choice([2, 3, 10])  # a small vocabulary makes coincidences (unchained hits) likely
        base = [rng.randrange(vocab) for _ in range(rng.randint(1, 16))]
        served = []
        for _ in range(rng.randint(0, 3)):
            cut = rng.randint(0, len(base))
            served.append(base[:cut] + [rng.randrange(vocab) for _ in range(rng.randint(0, 8))])
        prompt = base if rng.random() < 0.8 else [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        return _case(prompt, bs, served, drop_first=rng.random() < 0.15)

    def describe(self, case: Case) -> str:
        x = case.inputs
        return f"token_ids={x['token_ids']}, block_size={x['block_size']}, cache=<{len(x['cache'])} digests>"

    def judge(self, learner, case: Case) -> Mismatch | None:
        x = case.inputs
        expected = self.reference(**x)
        got = learner(list(x["token_ids"]), x["block_size"], dict(x["cache"]))
        if isinstance(got, bool) or not isinstance(got, int):
            return Mismatch(expected, got, f"return the number of cached tokens (an int), not {type(got).__name__}")
        if got == expected:
            return None
        return Mismatch(expected, got, _diagnose(got, x))


def _leading_hits(digests: list[bytes], cache: dict[bytes, int]) -> int:
    n = 0
    while n < len(digests) and digests[n] in cache:
        n += 1
    return n


def _diagnose(got: int, x: dict[str, Any]) -> str:
    ids, bs, cache = x["token_ids"], x["block_size"], x["cache"]
    if got == _leading_hits(block_digests(ids, bs), cache) * bs:
        return (
            "the whole prompt was looked up: digest only token_ids[:-1], because the last token must be computed "
            "again (its logits give the first new token)"
        )
    unchained = [hash_block(b"", ids[i : i + bs]) for i in range(0, len(ids) - 1 - bs + 1, bs)]
    if got == _leading_hits(unchained, cache) * bs:
        return (
            "each block was hashed on its own: chain the digests (parent = previous block's digest), or two "
            "prompts that share a block but not what precedes it would share K/V computed for another context"
        )
    if got % bs:
        return "only whole blocks are cached: the answer is a multiple of block_size"
    digests = block_digests(ids[:-1], bs)
    if got == sum(d in cache for d in digests) * bs:
        return "stop at the first miss: a block is reusable only if every block before it is reused too"
    return "count leading full blocks of token_ids[:-1] whose chained digest is in the cache"


EXERCISE = PrefixCacheExercise()
