"""Speculation for sampled requests: the tokens follow the target's distribution (chi-square tests, seeded),
and with the position-keyed noise they are the very tokens the request samples without speculation."""

from __future__ import annotations

import pytest
import torch

from cblab_teach import Engine, EngineConfig, ModelConfig, SamplingParams, TinyLM
from cblab_teach.core.request import Request
from cblab_teach.core.sampling import rejection_sample, sample_token, token_probs, verify_sampled

from .reference import full_logits

SIGNIFICANCE = 1e-3  # a correct sampler fails one run in a thousand; every test here is seeded, so never flaky


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P(a chi-square with len - 1 degrees of freedom exceeds the statistic): Q(df / 2, stat / 2)."""
    expected = probs.double() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was drawn"
    stat = ((counts[keep].double() - expected[keep]) ** 2 / expected[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def test_the_chi_square_helper_rejects_a_wrong_distribution():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    draws = torch.multinomial(p, 3000, replacement=True, generator=gen)
    counts = torch.bincount(draws, minlength=3)
    assert chi_square_p_value(counts, p) > SIGNIFICANCE
    assert chi_square_p_value(counts, torch.tensor([0.45, 0.35, 0.2], dtype=torch.float64)) < SIGNIFICANCE


def random_rows(gen: torch.Generator, rows: int, vocab: int, sharp: float) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * sharp, -1)


@pytest.mark.parametrize("trials", [20_000])
def test_rejection_sampling_emits_the_target_distribution(trials):
    """General draft distributions: every emitted token is distributed as the target's row at its position."""
    gen = torch.Generator().manual_seed(7)
    p, q = random_rows(gen, 3, 6, 1.5), random_rows(gen, 2, 6, 1.5)
    first = torch.zeros(6, dtype=torch.long)
    second = torch.zeros(6, dtype=torch.long)
    accepted = 0
    for _ in range(trials):
        drafts = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
        out = rejection_sample(p, q, drafts, gen)
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
        accepted += len(out) - 1
    assert chi_square_p_value(first, p[0]) > SIGNIFICANCE
    assert chi_square_p_value(second, p[1]) > SIGNIFICANCE
    expected_first = float(torch.minimum(p[0], q[0]).sum())  # P(accept draft 0) = sum_x min(p, q)
    assert accepted / trials >= expected_first - 0.02  # drafts are really accepted, not always resampled


def test_accepting_every_draft_would_be_caught():
    """The test above can fail: a verifier that keeps every draft emits q, not p."""
    gen = torch.Generator().manual_seed(7)
    p, q = random_rows(gen, 2, 6, 1.5), random_rows(gen, 1, 6, 1.5)
    counts = torch.zeros(6, dtype=torch.long)
    for _ in range(5000):
        counts[int(torch.multinomial(q[0], 1, generator=gen))] += 1  # "accept always"
    assert chi_square_p_value(counts, p[0]) < SIGNIFICANCE


def test_a_point_mass_draft_is_accepted_with_the_targets_probability():
    """Deterministic guesses (n-gram, greedy draft): accept x with probability p(x), which verify_sampled does."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    p = torch.softmax(logits[0], -1)
    request = Request(0, [1], 4, SamplingParams(temperature=1.0))
    kept = 0
    trials = 4000
    for seed in range(trials):
        request.sampling = SamplingParams(temperature=1.0, seed=seed)
        out = verify_sampled(logits, [1], request, position=5)
        kept += out[0] == 1
        assert out[0] == sample_token(logits[0], request, 5)  # the same noise as plain sampling
    share = kept / trials
    assert abs(share - float(p[1])) < 4 * (float(p[1]) * (1 - float(p[1])) / trials) ** 0.5


@pytest.fixture(scope="module")
def small_vocab():
    """Vocabulary 8, so the joint distribution of two tokens has few enough cells for a chi-square test."""
    return TinyLM(
        ModelConfig(vocab_size=8, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, dtype=torch.float64),
        seed=3,
    )


PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]  # the n-gram proposer always finds something to guess
SAMPLING = SamplingParams(temperature=1.3)


def run_seeds(model, seeds, speculative):
    cfg = EngineConfig(
        max_tokens_per_step=4096, prefill_chunk_size=64, max_running=4096, block_size=4, num_blocks=8192,
        speculative=speculative, num_speculative_tokens=3, ngram_size=1,
    )
    engine = Engine(model, cfg)
    ids = [engine.add_request(PROMPT, 3, sampling=SamplingParams(temperature=1.3, seed=s)) for s in seeds]
    engine.run()
    return [engine.output(i) for i in ids], engine.stats


@pytest.fixture(scope="module")
def runs(small_vocab):
    seeds = range(3000)
    plain, _ = run_seeds(small_vocab, seeds, None)
    speculated, stats = run_seeds(small_vocab, seeds, "ngram")
    return plain, speculated, stats


def test_sampled_requests_speculate_and_keep_their_tokens(runs):
    plain, speculated, stats = runs
    assert stats.draft_tokens > 1000 and 0.05 < stats.acceptance_rate < 0.95  # guesses both kept and rejected
    assert speculated == plain  # same noise per position: speculation changes no sampled token


def test_sampled_speculation_follows_the_target_distribution(small_vocab, runs):
    """The first two tokens against the exact joint distribution from a cache-free recompute."""
    _, speculated, _ = runs
    request = Request(0, PROMPT, 3, SAMPLING)
    first = token_probs(full_logits(small_vocab, PROMPT)[-1], request)
    joint = torch.zeros(8, 8, dtype=torch.float64)
    for a in range(8):
        joint[a] = first[a] * token_probs(full_logits(small_vocab, PROMPT + [a])[-1], request)
    counts = torch.zeros(8, 8, dtype=torch.long)
    for out in speculated:
        counts[out[0], out[1]] += 1
    assert chi_square_p_value(counts.flatten(), joint.flatten()) > SIGNIFICANCE
    shuffled = joint.flatten()[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    assert chi_square_p_value(counts.flatten(), shuffled) < SIGNIFICANCE  # and the test can tell a wrong one


def test_sampled_tokens_do_not_depend_on_the_batch(small_vocab):
    """Alone, or batched under a tight budget that cuts guesses short: the same tokens for the same seed."""
    seeds = range(12)
    alone = [run_seeds(small_vocab, [s], "ngram")[0][0] for s in seeds]
    engine = Engine(small_vocab, EngineConfig(max_tokens_per_step=5, prefill_chunk_size=3, block_size=2,
                                              speculative="ngram", num_speculative_tokens=3, ngram_size=1))
    ids = [engine.add_request(PROMPT, 3, sampling=SamplingParams(temperature=1.3, seed=s)) for s in seeds]
    engine.run()
    assert [engine.output(i) for i in ids] == alone


def test_the_noise_is_keyed_by_seed_and_position():
    logits = torch.zeros(50, dtype=torch.float64)
    request = Request(0, [1], 4, SamplingParams(temperature=1.0, seed=4))
    draws = [sample_token(logits, request, pos) for pos in range(40)]
    assert len(set(draws)) > 10  # positions get different noise
    assert draws == [sample_token(logits, request, pos) for pos in range(40)]  # and the same noise again
    other = Request(0, [1], 4, SamplingParams(temperature=1.0, seed=5))
    assert draws != [sample_token(logits, other, pos) for pos in range(40)]
