"""Sampling filters and the general rejection rule, checked exactly where they are exact."""

from __future__ import annotations

import math

import pytest
import torch

from cblab_teach import SamplingParams
from cblab_teach.core.request import Request
from cblab_teach.core.sampling import filter_logits, rejection_sample, sample_token, token_probs, verify_sampled

NEG = float("-inf")


def kept(logits: torch.Tensor) -> set[int]:
    return {i for i, x in enumerate(logits.tolist()) if x != NEG}


@pytest.mark.parametrize(("top_k", "want"), [(1, {1}), (2, {1, 3}), (3, {1, 3, 2}), (4, {0, 1, 2, 3}), (0, {0, 1, 2, 3})])
def test_top_k_keeps_the_k_largest(top_k, want):
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0], dtype=torch.float64)
    out = filter_logits(logits, top_k, 1.0)
    assert kept(out) == want
    assert torch.equal(out[list(want)], logits[list(want)])  # kept logits are untouched
    assert logits.tolist() == [1.0, 5.0, 3.0, 4.0]  # and the input is not modified


@pytest.mark.parametrize(("top_p", "want"), [(0.3, {2}), (0.6, {2, 0}), (0.85, {2, 0, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_that_reaches_it(top_p, want):
    probs = torch.tensor([0.3, 0.08, 0.5, 0.12], dtype=torch.float64)  # sorted: 0.5, 0.3, 0.12, 0.08
    out = filter_logits(probs.log(), 0, top_p)
    assert kept(out) == want  # the token that crosses top_p is kept; the rest go


def test_top_k_then_top_p_compose():
    probs = torch.tensor([0.3, 0.08, 0.5, 0.12], dtype=torch.float64)
    assert kept(filter_logits(probs.log(), 3, 0.6)) == {2, 0}


def test_sample_token_never_draws_a_filtered_token():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 0.5, 4.5], dtype=torch.float64)
    request = Request(0, [1], 4, SamplingParams(temperature=5.0, top_k=2, seed=3))  # hot: every token likely
    draws = {sample_token(logits, request, pos) for pos in range(300)}
    assert draws == {1, 5}


def test_rejection_sampling_is_seeded():
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    rows = torch.softmax(torch.randn(4, 6, generator=gen(), dtype=torch.float64), -1)
    p, q = rows[:3], rows[3:].repeat(2, 1) * 0.5 + rows[:2] * 0.5
    first = [rejection_sample(p, q, [1, 4], g) for g in [gen()] for _ in range(50)]
    again = [rejection_sample(p, q, [1, 4], g) for g in [gen()] for _ in range(50)]
    assert first == again  # the same generator state gives the same tokens, draw after draw


def test_a_draft_that_is_the_target_is_always_kept_and_the_bonus_is_drawn_from_the_last_row():
    gen = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(3, 5, generator=gen, dtype=torch.float64), -1)
    bonus = torch.zeros(5, dtype=torch.long)
    trials = 3000
    for _ in range(trials):
        drafts = [int(torch.multinomial(p[i], 1, generator=gen)) for i in range(2)]
        out = rejection_sample(p, p[:2], drafts, gen)  # q == p: min(1, p/q) = 1, nothing is rejected
        assert out[:2] == drafts and len(out) == 3
        bonus[out[2]] += 1
    for token in range(5):  # each bonus count within 4 standard deviations of p[2]
        share, expected = bonus[token].item() / trials, p[2, token].item()
        assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / trials) + 1e-9


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_tokens_follow_the_tempered_distribution(temperature):
    """Over 4,000 positions (fresh noise each) the draws' frequencies are softmax(logits / T), computed here
    directly; 4 standard deviations of a frequency is at most 0.032."""
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).log()
    request = Request(0, [1], 4, SamplingParams(temperature=temperature, seed=7))
    want = torch.softmax(logits / temperature, -1)
    torch.testing.assert_close(token_probs(logits, request), want, rtol=0, atol=1e-12)
    n = 4000
    counts = torch.bincount(torch.tensor([sample_token(logits, request, pos) for pos in range(n)]), minlength=4)
    assert (counts / n - want).abs().max() < 0.032, (counts / n).tolist()


def test_each_verified_position_draws_its_own_noise():
    """Drafts equal to what sampling draws are all kept, then the bonus: each is the sample at its position."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    request = Request(0, [1], 8, SamplingParams(temperature=1.0, seed=5))
    want = [sample_token(logits[i], request, 10 + i) for i in range(4)]
    assert verify_sampled(logits, want[:3], request, 10) == want
    assert len(set(want)) > 1  # positions draw different noise: a shared draw would repeat one token
