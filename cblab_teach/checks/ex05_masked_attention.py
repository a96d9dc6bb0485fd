"""Exercise 5: masked attention with stable numerics.

::

    attention(q [N, D], k [M, D], v [M, D], mask [N, M] bool) -> [N, D]

Masked keys must get exactly zero probability (values behind the mask are set
huge, so any leak shows), large scores must not overflow, and a row with no
visible key returns zeros instead of NaN. The reference is
:func:`cblab_teach.attention.masked_attention` on a single head.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from ..attention.masked import leaky_clamp_attention, masked_attention
from ._base import Case, Exercise, Mismatch

HUGE = 1e6  # value of keys no query may see: a leak of 1e-6 probability moves the output by 1


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Single-head view of the library's batched attention."""
    return masked_attention(q[None, :, None], k[None, :, None], v[None, :, None], mask[None])[0, :, 0]


def _inputs(n: int, m: int, d: int, mask: torch.Tensor, gen: torch.Generator, scale: float = 1.0) -> dict[str, Any]:
    q = torch.randn(n, d, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(m, d, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(m, d, generator=gen, dtype=torch.float64)
    hidden = ~mask.any(dim=0)  # keys nobody may read: another request's, say
    v[hidden] = HUGE
    return {"q": q, "k": k, "v": v, "mask": mask}


def _causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def _two_requests() -> torch.Tensor:
    """Request A owns keys 0-2 and queries 0-2, request B keys 3-4 and queries 3-4."""
    seq = torch.tensor([0, 0, 0, 1, 1])
    pos = torch.tensor([0, 1, 2, 0, 1])
    return (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])


class MaskedAttentionExercise(Exercise):
    name = "ex05_masked_attention"
    title = "Masked attention with stable numerics"
    entry = "attention"
    course = "06_attention_numerics"
    hint = (
        "scores = q @ k.T / sqrt(d); fill masked scores with a very negative number BEFORE softmax "
        "(softmax subtracts the row max for you); then zero the rows that have no visible key"
    )

    @property
    def reference(self):
        return reference_attention

    def fixed_cases(self) -> list[Case]:
        g = torch.Generator().manual_seed(5)
        only_other = torch.zeros(2, 4, dtype=torch.bool)
        only_other[:, :2] = True
        no_key = _causal(3)
        no_key[1] = False
        return [
            Case("every key visible", _inputs(3, 4, 4, torch.ones(3, 4, dtype=torch.bool), g)),
            Case("huge values behind the mask", _inputs(2, 4, 4, only_other, g)),
            Case("causal mask, one request", _inputs(4, 4, 8, _causal(4), g)),
            Case("two requests in one batch", _inputs(5, 5, 4, _two_requests(), g)),
            Case("large scores (softmax must not overflow)", _inputs(4, 4, 8, _causal(4), g, scale=40.0)),
            Case("a row with no visible key", _inputs(3, 3, 4, no_key, g)),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        n, m, d = rng.randint(1, 6), rng.randint(1, 8), rng.choice([2, 4, 8])
        mask = torch.rand(n, m, generator=g) < 0.6
        if rng.random() < 0.3:
            mask[rng.randrange(n)] = False
        return _inputs(n, m, d, mask, g, scale=rng.choice([1.0, 1.0, 3.0, 30.0]))

    def judge(self, learner, case: Case) -> Mismatch | None:
        expected = self.reference(**case.inputs)
        got = learner(**{k: v.clone() for k, v in case.inputs.items()})
        if not isinstance(got, torch.Tensor):
            return Mismatch(expected, got, f"return a torch.Tensor, not {type(got).__name__}")
        if tuple(got.shape) != tuple(expected.shape):
            return Mismatch(f"shape {list(expected.shape)}", f"shape {list(got.shape)}", "the output is [N, D]")
        got = got.to(expected.dtype)
        if torch.allclose(got, expected, rtol=1e-6, atol=1e-6):
            return None
        return Mismatch(expected, got, _diagnose(got, expected, case.inputs))


def _diagnose(got: torch.Tensor, expected: torch.Tensor, inputs: dict[str, torch.Tensor]) -> str:
    q, k, v, mask = inputs["q"], inputs["k"], inputs["v"], inputs["mask"]
    empty = ~mask.any(dim=1)
    if torch.isnan(got).any() or torch.isinf(got).any():
        if torch.isnan(got[empty]).any():
            return "a row with no visible key gave NaN (softmax of all -inf is 0/0): return zeros for it"
        return "NaN/inf: exp of a large score overflowed; subtract the row max (or use torch.softmax)"
    if empty.any() and not torch.allclose(got[empty], expected[empty], atol=1e-6):
        return "a row with no visible key must return zeros (there is nothing to attend to)"
    leak = leaky_clamp_attention(q[None, :, None], k[None, :, None], v[None, :, None], mask[None])[0, :, 0]
    if torch.allclose(got, leak, rtol=1e-6, atol=1e-6) or (got - expected).abs().max() > 1e3:
        return "probability leaked to masked keys (their values are huge): mask the scores before softmax"
    unscaled = reference_attention(q * math.sqrt(q.shape[-1]), k, v, mask)
    if torch.allclose(got, unscaled, rtol=1e-6, atol=1e-6):
        return "divide the scores by sqrt(head_dim) before softmax"
    return "rows of the probabilities must sum to 1 over visible keys, masked keys exactly 0"


EXERCISE = MaskedAttentionExercise()
