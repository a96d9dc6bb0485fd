"""Exercise 9: merge attention computed on key shards, by log-sum-exp.

When the keys of a long sequence are split across devices, each shard returns
its partial attention output (softmax over *its* keys only) and the log of its
softmax denominator, ``lse``. The exact output is a weighted sum::

    merge_partials(outs [S, N, D], lses [S, N]) -> [N, D]
    w_s = exp(lse_s - max_s lse_s);  out = sum_s w_s * out_s / sum_s w_s

A shard where a query sees no key has ``lse = -inf`` and contributes nothing;
if no shard has a visible key the row is zeros. The expected output is not a
merge at all: it is :func:`cblab_teach.attention.masked_attention` over all the
keys at once, so the check holds the merge to the definition. The reference
answer is :func:`reference_merge_partials` below, the tensor form of
:func:`cblab_teach.advanced.sharding.merge_partials` (a test keeps them equal).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from ..attention.masked import masked_attention
from ._base import Case, Exercise, Mismatch


def reference_merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """Stable merge: subtract the row max of the lses; rows no shard sees stay zero."""
    top = lses.max(dim=0).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(lses - top)  # [S, N]; exp(-inf) = 0 for empty shards
    total = weights.sum(dim=0)
    merged = (weights[..., None] * outs).sum(dim=0)
    return merged / torch.where(total > 0, total, torch.ones_like(total))[..., None]


def single_head(q, k, v, mask) -> torch.Tensor:
    return masked_attention(q[None, :, None], k[None, :, None], v[None, :, None], mask[None])[0, :, 0]


def shard_partials(q, k, v, mask, bounds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial outputs and lses of key shards ``[bounds[i], bounds[i+1])``."""
    outs, lses = [], []
    scores = q @ k.T / math.sqrt(q.shape[-1])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        outs.append(single_head(q, k[lo:hi], v[lo:hi], mask[:, lo:hi]))
        lses.append(torch.logsumexp(scores[:, lo:hi].masked_fill(~mask[:, lo:hi], float("-inf")), dim=-1))
    return torch.stack(outs), torch.stack(lses)


def _case(n: int, m: int, bounds: list[int], mask: torch.Tensor, g: torch.Generator, scale: float = 1.0) -> dict:
    q = torch.randn(n, 4, generator=g, dtype=torch.float64) * scale
    k = torch.randn(m, 4, generator=g, dtype=torch.float64) * scale
    v = torch.randn(m, 4, generator=g, dtype=torch.float64)
    outs, lses = shard_partials(q, k, v, mask, bounds)
    return {"outs": outs, "lses": lses, "expected": single_head(q, k, v, mask)}


class LseMerge(Exercise):
    name = "ex09_lse_merge"
    title = "Merging sharded attention by log-sum-exp"
    entry = "merge_partials"
    course = "14_kv_sharding"
    hint = (
        "weight each shard by exp(lse - row max of lse), normalise the weights to sum to 1, and treat "
        "lse = -inf (no visible key) as weight 0; a row with no visible key anywhere stays zero"
    )

    @property
    def reference(self):
        return reference_merge_partials

    def fixed_cases(self) -> list[Case]:
        g = torch.Generator().manual_seed(9)
        full = torch.ones(3, 6, dtype=torch.bool)
        causal = torch.ones(6, 6, dtype=torch.bool).tril()
        empty_row = causal[:3].clone()
        empty_row[1] = False
        return [
            Case("two equal shards", _case(3, 6, [0, 3, 6], full, g)),
            Case("uneven shards (1 key vs 5)", _case(3, 6, [0, 1, 6], full, g)),
            Case("causal: early queries see nothing in the last shard", _case(6, 6, [0, 2, 4, 6], causal, g)),
            Case("large scores (exp overflows without the max)", _case(3, 6, [0, 3, 6], full, g, scale=30.0)),
            Case("a row with no visible key", _case(3, 6, [0, 3, 6], empty_row, g)),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        n, m = rng.randint(1, 6), rng.randint(2, 12)
        cuts = sorted(rng.sample(range(1, m), rng.randint(1, min(3, m - 1))))
        mask = torch.rand(n, m, generator=g) < 0.7
        return _case(n, m, [0, *cuts, m], mask, g, scale=rng.choice([1.0, 1.0, 4.0, 30.0]))

    def describe(self, case: Case) -> str:
        from ._base import show

        return f"outs={show(case.inputs['outs'], 300)}, lses={show(case.inputs['lses'], 300)}"

    def judge(self, learner, case: Case) -> Mismatch | None:
        expected = case.inputs["expected"]
        got = learner(case.inputs["outs"].clone(), case.inputs["lses"].clone())
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return Mismatch(f"a tensor of shape {list(expected.shape)}", shape, "the merged output is [N, D]")
        got = got.to(expected.dtype)
        if torch.allclose(got, expected, rtol=1e-6, atol=1e-8):
            return None
        return Mismatch(expected, got, _diagnose(got, case.inputs))


def _diagnose(got: torch.Tensor, inputs: dict[str, torch.Tensor]) -> str:
    outs, lses = inputs["outs"], inputs["lses"]
    if torch.isnan(got).any() or torch.isinf(got).any():
        if torch.isinf(lses).any():
            return "NaN/inf: a shard with no visible key has lse = -inf; its weight is 0 (and -inf - -inf is NaN)"
        return "NaN/inf: exp(lse) overflowed; subtract the row max of the lses first"
    if torch.allclose(got, outs.mean(dim=0), atol=1e-8):
        return "a plain average ignores how much each shard's keys matter: weight by exp(lse)"
    return "out = sum_s exp(lse_s - m) * out_s / sum_s exp(lse_s - m), with m the row max of the lses"


EXERCISE = LseMerge()
