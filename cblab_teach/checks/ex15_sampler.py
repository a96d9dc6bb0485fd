"""Exercise 15: a seeded sampler (temperature, top-k, top-p), judged by the tokens it draws.

::

    sampler = Sampler(seed)
    sampler.sample(logits, temperature, top_k, top_p) -> int    # one token; the sampler keeps its generator

The target is the library's own rule (:func:`cblab_teach.core.sampling.filter_logits` after dividing by the
temperature): divide the logits by the temperature, keep the ``top_k`` largest (every token tied with the k-th
too), then the smallest set whose probability, renormalised over what top-k kept, reaches ``top_p`` (the token
that crosses it included), and renormalise. A sampler is random, so the check cannot compare one draw with
another: it draws ``DRAWS`` tokens from one sampler per case and runs Pearson's chi-square goodness-of-fit test
of their counts against that exact distribution. A token the filters remove fails at once. The significance
level ``ALPHA`` makes a false failure of a correct sampler negligible (about one in 10^5 over the whole check),
and the cases are built so that each classic mistake is off by a chi-square in the hundreds or more, far past
the critical value (``tests/test_checks.py`` computes that margin). Seeds: two samplers built with one seed and
drawn in turns give the same tokens; another seed gives others.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from ..core.sampling import filter_logits
from ..errors import ConfigError
from ._base import Case, Exercise, Mismatch

ALPHA = 1e-6  # per case: a correct sampler fails a case with this probability
DRAWS = 1000  # tokens drawn per case
MIN_EXPECTED = 5.0  # chi-square needs about five expected draws per bin: rarer tokens share a bin
SEED_DRAWS = 40  # tokens compared between samplers in the seed case


def target_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The exact distribution a correct sampler draws from (float64): the engine's own filters."""
    if not temperature > 0:  # 0 is greedy, which draws nothing; a negative one would favour the least likely
        raise ConfigError(f"temperature must be > 0 to sample, got {temperature!r}")
    return torch.softmax(filter_logits(logits.double() / temperature, top_k, top_p), -1)


class ReferenceSampler:
    """A correct answer: its own generator, seeded once; one multinomial draw from the target per call."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> int:
        probs = target_probs(logits, temperature, top_k, top_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass(frozen=True)
class Fit:
    """Pearson's chi-square of observed counts against expected probabilities."""

    statistic: float
    dof: int
    p_value: float


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X chi-square with ``dof`` degrees of freedom: the regularised upper gamma."""
    if dof <= 0:
        return 1.0
    s = torch.tensor(statistic / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), s))


def chi_square(counts: Counter, probs: torch.Tensor, draws: int) -> Fit:
    """Fit of ``counts`` (token -> draws) to ``probs`` over its support; bins expecting fewer than MIN_EXPECTED
    draws are pooled (the test's approximation needs it). Counts outside the support are the caller's business."""
    expected = sorted(((float(p) * draws, t) for t, p in enumerate(probs.tolist()) if p > 0), reverse=True)
    bins: list[tuple[float, int]] = []  # (expected, observed)
    pool_e, pool_o = 0.0, 0
    for e, t in expected:
        if e >= MIN_EXPECTED:
            bins.append((e, counts.get(t, 0)))
        else:
            pool_e, pool_o = pool_e + e, pool_o + counts.get(t, 0)
    if pool_e > 0:
        if pool_e >= MIN_EXPECTED or not bins:
            bins.append((pool_e, pool_o))
        else:  # still too rare alone: pooled with the smallest full bin
            e, o = bins.pop()
            bins.append((e + pool_e, o + pool_o))
    statistic = sum((o - e) ** 2 / e for e, o in bins)
    dof = len(bins) - 1
    return Fit(statistic, dof, chi2_sf(statistic, dof))


def draw(learner: Any, seed: int, logits: torch.Tensor, settings: dict[str, Any], n: int) -> list[int]:
    """``n`` tokens from one sampler built with ``seed``: the same object draws them all."""
    sampler = learner(seed)
    return [int(sampler.sample(logits.clone(), **settings)) for _ in range(n)]


def _logits_of(probs: list[float]) -> list[float]:
    return [math.log(p) for p in probs]


def _case(name: str, logits: list[float], temperature=1.0, top_k=0, top_p=1.0, seed=1) -> Case:
    settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    return Case(name, {"logits": logits, "settings": settings, "seed": seed, "draws": DRAWS})


class SeededSampler(Exercise):
    name = "ex15_sampler"
    title = "A seeded sampler: temperature, top-k, top-p, judged by a chi-square test"
    entry = "Sampler"
    course = "07_engine_proven_correct"
    hint = (
        "divide the logits by the temperature, keep the top-k (ties included) and then the smallest set that "
        "reaches top-p over the renormalised probabilities, and draw with the sampler's own seeded generator"
    )
    num_random = 3

    @property
    def reference(self):
        return ReferenceSampler

    def fixed_cases(self) -> list[Case]:
        return [
            _case("plain softmax: temperature 1, no filters", [1.0, 0.5, 0.0, -0.5, -1.0, 0.2], seed=11),
            _case("temperature 0.5 sharpens", [1.0, 0.6, 0.2, -0.3, -0.8], temperature=0.5, seed=12),
            _case("temperature 2 flattens", [2.0, 1.0, 0.0, -1.0, -2.0], temperature=2.0, seed=13),
            _case("top-k with a tie at the k-th place", [2.0, 1.5, 1.0, 1.0, 0.0, -1.0], top_k=3, seed=14),
            _case("top-p keeps the token that crosses it", _logits_of([0.4, 0.3, 0.2, 0.1]), top_p=0.6, seed=15),
            _case(
                "top-p over what top-k kept, renormalised",
                _logits_of([0.30, 0.25, 0.20, 0.15, 0.10]),
                top_k=3,
                top_p=0.7,
                seed=16,
            ),
            _case("large logits: no overflow", [1000.0, 999.5, 999.0, 998.0], seed=17),
            Case("same seed, same tokens; another seed, others", {"seeds": [21, 21, 22], "logits": [0.1] * 6}),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        while True:
            vocab = rng.randint(4, 9)
            logits = [round(rng.gauss(0, 1.5), 3) for _ in range(vocab)]
            settings = {
                "temperature": rng.choice([0.7, 1.0, 1.5]),
                "top_k": rng.choice([0, 0, rng.randint(2, vocab - 1)]),
                "top_p": rng.choice([1.0, 1.0, round(rng.uniform(0.5, 0.95), 2)]),
            }
            if not _near_a_boundary(logits, **settings):
                return {"logits": logits, "settings": settings, "seed": rng.randrange(1000), "draws": DRAWS}

    def describe(self, case: Case) -> str:
        x = case.inputs
        if "seeds" in x:
            return (
                f"Sampler({x['seeds'][0]}) twice, drawing in turns, and Sampler({x['seeds'][2]}); logits={x['logits']}"
            )
        s = x["settings"]
        return (
            f"logits={[round(v, 3) for v in x['logits']]}, temperature={s['temperature']}, top_k={s['top_k']}, "
            f"top_p={s['top_p']}; {x['draws']} draws from Sampler({x['seed']})"
        )

    def judge(self, learner, case: Case) -> Mismatch | None:
        x = case.inputs
        if "seeds" in x:
            return _judge_seeds(learner, x)
        logits = torch.tensor(x["logits"], dtype=torch.float32)
        probs = target_probs(logits, **x["settings"])
        tokens = draw(learner, x["seed"], logits, x["settings"], x["draws"])
        counts = Counter(tokens)
        expected = _show_probs(probs)
        got = _show_counts(counts, x["draws"])
        outside = sorted(t for t in counts if not 0 <= t < len(probs) or probs[t] == 0)
        if outside:
            return Mismatch(expected, got, _outside_hint(outside, logits, x["settings"]))
        fit = chi_square(counts, probs, x["draws"])
        if fit.p_value >= ALPHA:
            return None
        return Mismatch(
            expected,
            got + f" (chi-square {fit.statistic:.1f} on {fit.dof} dof, p = {fit.p_value:.2g})",
            _misfit_hint(counts, probs, logits, x),
        )


def _judge_seeds(learner, x: dict[str, Any]) -> Mismatch | None:
    logits = torch.tensor(x["logits"], dtype=torch.float32)
    first, again, other = (learner(seed) for seed in x["seeds"])
    a, b = [], []
    for _ in range(SEED_DRAWS):  # in turns: a sampler that shares a global generator cannot hide it
        a.append(int(first.sample(logits.clone())))
        b.append(int(again.sample(logits.clone())))
    c = [int(other.sample(logits.clone())) for _ in range(SEED_DRAWS)]
    if a != b:
        return Mismatch(
            f"Sampler({x['seeds'][0]}) twice: the same tokens",
            f"{a[:12]}... and {b[:12]}...",
            "two samplers with the same seed drew different tokens: each sampler needs its OWN generator "
            "(torch.Generator().manual_seed(seed)), passed to every draw; the global torch generator is shared",
        )
    if a == c:
        return Mismatch(
            f"Sampler({x['seeds'][2]}) draws other tokens than Sampler({x['seeds'][0]})",
            f"both drew {a[:12]}...",
            "the seed is ignored: seed the sampler's generator with the seed it is given",
        )
    return None


def _near_a_boundary(logits: list[float], temperature: float, top_k: int, top_p: float) -> bool:
    """A random case whose top-p cut sits within a hair of a cumulative sum: float32 and float64 could disagree."""
    if top_p >= 1.0:
        return False
    kept = torch.softmax(filter_logits(torch.tensor(logits, dtype=torch.float64) / temperature, top_k, 1.0), -1)
    cum = kept.sort(descending=True).values.cumsum(-1)
    return bool(((cum - top_p).abs() < 0.02).any())


def _ranked(logits: torch.Tensor, settings: dict[str, Any]) -> list[int]:
    """Tokens from the most to the least likely, after the temperature."""
    return torch.sort(logits.double() / settings["temperature"], descending=True, stable=True).indices.tolist()


def _outside_hint(outside: list[int], logits: torch.Tensor, s: dict[str, Any]) -> str:
    probs = target_probs(logits, **s)
    kept = sorted(t for t in range(len(probs)) if probs[t] > 0)
    after_k = target_probs(logits, s["temperature"], s["top_k"], 1.0)
    next_one = next((t for t in _ranked(logits, s) if probs[t] == 0 and after_k[t] > 0), None)
    if s["top_p"] < 1.0 and outside == [next_one]:
        if s["top_k"] > 0:
            return (
                f"token {next_one} is past the top-p cut: measure top-p on the probabilities renormalised over the "
                "tokens top-k kept (they sum to 1 again), and stop right after the token that crosses top_p"
            )
        return (
            f"top-p kept one token too many (token {next_one}): keep the smallest set whose probability reaches "
            "top_p, and stop right after the token that crosses it"
        )
    return f"tokens {outside} were drawn, but the filters remove them (the kept tokens are {kept})"


def _misfit_hint(counts: Counter, probs: torch.Tensor, logits: torch.Tensor, x: dict[str, Any]) -> str:
    s, draws = x["settings"], x["draws"]
    support = [t for t in range(len(probs)) if probs[t] > 0]
    missing = [t for t in support if counts.get(t, 0) == 0 and probs[t] * draws >= 20]
    if missing and s["top_k"] > 0:
        kth = torch.topk(logits.double() / s["temperature"], s["top_k"]).values[-1]
        if all(float(logits[t]) / s["temperature"] == float(kth) for t in missing):
            return (
                f"tokens {missing} tie with the k-th largest logit and were never drawn: top-k keeps every token "
                "whose logit equals the k-th largest (compare with its value, not its index)"
            )
    if missing and s["top_p"] < 1.0:
        crossing = [t for t in _ranked(logits, s) if probs[t] > 0][-1]  # the least likely kept token
        if missing == [crossing]:
            return (
                f"top-p kept one token too few (token {crossing} was never drawn): the token whose probability "
                "crosses top_p stays in the set"
            )
    if len(counts) == 1 and len(support) > 1:
        (only,) = counts
        return (
            f"every draw gave token {only}: is the generator re-seeded on every call? Seed it once, when the "
            "sampler is built, and keep drawing from it"
        )
    if s["temperature"] != 1.0:
        plain = target_probs(logits, 1.0, s["top_k"], s["top_p"])
        if chi_square(counts, plain, draws).p_value >= ALPHA:
            return (
                "the draws fit temperature 1: divide the LOGITS by the temperature before the softmax; dividing "
                "the probabilities after it changes nothing once they are renormalised"
            )
    if missing:
        return f"tokens {missing} should be drawn about {[round(float(probs[t]) * draws) for t in missing]} times"
    return (
        "the token frequencies do not fit the target distribution: temperature first (on the logits), then top-k, "
        "then top-p on the renormalised probabilities, then one draw from the sampler's generator"
    )


def _show_probs(probs: torch.Tensor) -> str:
    return "probabilities " + str({t: round(float(p), 3) for t, p in enumerate(probs.tolist()) if p > 0})


def _show_counts(counts: Counter, draws: int) -> str:
    return "frequencies " + str({t: round(c / draws, 3) for t, c in sorted(counts.items())})


EXERCISE = SeededSampler()
