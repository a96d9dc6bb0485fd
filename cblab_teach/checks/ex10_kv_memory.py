"""Exercise 10: how many requests fit? KV bytes per token and paged capacity.

::

    kv_capacity(num_layers, num_heads, num_kv_heads, head_dim, dtype_bytes,
                pool_bytes, block_size, tokens_per_request) -> (bytes_per_token, requests_that_fit)

Every token keeps one key and one value vector per KV head in every layer,
so ``bytes_per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes``
(query heads store nothing). The pool is cut into blocks of ``block_size``
tokens; a request takes whole blocks, ``ceil(tokens_per_request / block_size)``
of them, and a request fits only with all of its blocks. The reference asks
the library: the bytes one slot of a real :class:`PagedAllocator` occupies, and
its ``blocks_for`` rounding.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from ..core.kv_cache import PagedAllocator
from ._base import Case, Exercise, Mismatch

DTYPES = {1: torch.int8, 2: torch.bfloat16, 4: torch.float32}


def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Measured, not computed: the storage of a one-block, one-slot paged pool of that shape."""
    pool = PagedAllocator(num_layers, num_kv_heads, head_dim, 1, 1, dtype=DTYPES[dtype_bytes])
    return pool.bytes_per_slot


def reference_kv_capacity(
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype_bytes: int,
    pool_bytes: int,
    block_size: int,
    tokens_per_request: int,
) -> tuple[int, int]:
    """Bytes per token from real storage; blocks per request by the allocator's own rounding."""
    per_token = bytes_per_token(num_layers, num_kv_heads, head_dim, dtype_bytes)
    num_blocks = pool_bytes // (per_token * block_size)
    per_request = PagedAllocator(1, 1, 1, 1, block_size).blocks_for(tokens_per_request)
    return per_token, num_blocks // per_request


def _shape(layers: int, heads: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> dict[str, int]:
    return {
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "dtype_bytes": dtype_bytes,
    }


GIB = 2**30
LLAMA3_8B = _shape(32, 32, 8, 128, 2)  # meta-llama/Meta-Llama-3-8B config.json, bf16


class KVMemory(Exercise):
    name = "ex10_kv_memory"
    title = "KV bytes per token and requests that fit"
    entry = "kv_capacity"
    course = "15_memory_and_step_time"
    hint = (
        "bytes per token = 2 (K and V) * layers * KV heads * head_dim * bytes per element; blocks in the pool = "
        "pool_bytes // (bytes per token * block_size); each request takes ceil(tokens / block_size) whole blocks"
    )

    @property
    def reference(self):
        return reference_kv_capacity

    def fixed_cases(self) -> list[Case]:
        tiny = _shape(3, 4, 4, 8, 4)
        per_tok = 2 * 3 * 4 * 8 * 4  # 768 bytes
        return [
            Case(
                "tiny model, request fills its blocks exactly",
                {**tiny, "pool_bytes": 64 * per_tok, "block_size": 4, "tokens_per_request": 8},
            ),
            Case(
                "one token past a block boundary",
                {**tiny, "pool_bytes": 64 * per_tok, "block_size": 4, "tokens_per_request": 9},
            ),
            Case(
                "one token short of a block boundary",
                {**tiny, "pool_bytes": 64 * per_tok, "block_size": 4, "tokens_per_request": 7},
            ),
            Case(
                "pool not a whole number of blocks",
                {**tiny, "pool_bytes": 64 * per_tok + 3 * per_tok, "block_size": 4, "tokens_per_request": 8},
            ),
            Case(
                "grouped-query attention (8 KV heads for 32 query heads)",
                {**LLAMA3_8B, "pool_bytes": 40 * GIB, "block_size": 16, "tokens_per_request": 4096},
            ),
            Case(
                "block size 1 (no rounding at all)",
                {**LLAMA3_8B, "pool_bytes": 16 * GIB, "block_size": 1, "tokens_per_request": 1000},
            ),
            Case(
                "request smaller than one block",
                {**tiny, "pool_bytes": 10 * 16 * per_tok, "block_size": 16, "tokens_per_request": 3},
            ),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        heads = rng.choice([4, 8, 16, 32, 64])
        shape = _shape(
            rng.choice([1, 2, 4, 16, 32, 80]),
            heads,
            rng.choice([h for h in (1, 2, 4, 8, heads) if heads % h == 0]),
            rng.choice([32, 64, 128]),
            rng.choice([1, 2, 4]),
        )
        block = rng.choice([1, 8, 16, 32])
        tokens = rng.randint(1, 6) * block + rng.choice([0, 0, 1, -1]) if block > 1 else rng.randint(1, 3000)
        return {
            **shape,
            "pool_bytes": rng.randint(1, 64) * GIB // 8,
            "block_size": block,
            "tokens_per_request": max(1, tokens),
        }

    def judge(self, learner, case: Case) -> Mismatch | None:
        expected = self.reference(**case.inputs)
        got = learner(**case.inputs)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Mismatch(expected, got, "return a pair: (bytes_per_token, requests_that_fit)")
        got = tuple(got)
        if got == expected:
            return None
        return Mismatch(expected, got, _diagnose(got, expected, case.inputs))


def _diagnose(got: tuple, expected: tuple[int, int], x: dict[str, int]) -> str:
    per_token, fit = expected
    elems = x["num_layers"] * x["num_kv_heads"] * x["head_dim"] * x["dtype_bytes"]
    if got[0] != per_token:
        if got[0] == per_token // 2:
            return "every token stores a key AND a value: multiply by 2"
        if got[0] == per_token // x["num_layers"]:
            return "every layer keeps its own K and V: multiply by num_layers"
        if x["num_heads"] != x["num_kv_heads"] and got[0] == 2 * elems // x["num_kv_heads"] * x["num_heads"]:
            return "only the KV heads are cached (grouped-query attention): use num_kv_heads, not num_heads"
        return f"bytes per token = 2 * layers * KV heads * head_dim * dtype_bytes = {per_token} here"
    blocks = x["pool_bytes"] // (per_token * x["block_size"])
    tokens, bs = x["tokens_per_request"], x["block_size"]
    if got[1] == blocks // max(1, tokens // bs) and tokens % bs:
        return "rounding down: a request whose last block is partly filled still needs that whole block (ceil)"
    if got[1] == blocks // (tokens // bs + 1) and tokens % bs == 0:
        return "off by one at the block boundary: a request of exactly k * block_size tokens needs k blocks, not k + 1"
    if got[1] == x["pool_bytes"] // (per_token * tokens):
        return "paged pools hand out whole blocks: round each request up to ceil(tokens / block_size) blocks"
    return f"the pool holds {blocks} whole blocks; each request takes ceil(tokens / block_size) of them"


EXERCISE = KVMemory()
