"""Turn a row of logits into a token, greedy or seeded.

A sampled token's randomness is keyed by the request's seed and the token's
position (:func:`sampling_noise`), so its sampled tokens do not depend on which
other requests share its batch, nor on how its steps were cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from .request import Request

if TYPE_CHECKING:
    from .records import EngineStats
    from .scheduler import StepPlan


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the ``top_k`` largest and the smallest set whose probability reaches ``top_p``."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) >= top_p  # keep the token that crosses top_p
        logits[order[drop]] = float("-inf")
    return logits


def token_probs(logits: torch.Tensor, request: Request) -> torch.Tensor:
    """The distribution a sampled request draws from: temperature, then top-k / top-p, in float64."""
    s = request.sampling
    return torch.softmax(filter_logits(logits.double().cpu() / s.temperature, s.top_k, s.top_p), -1)


def sampling_noise(seed: int, position: int, vocab_size: int) -> torch.Tensor:
    """Gumbel noise for the token at ``position`` of a request seeded ``seed``.

    Keyed by (seed, position), not drawn from a stream: the token at a position gets the same numbers
    whether the request runs alone or batched, chunked, preempted, moved to another engine or speculated.
    """
    gen = torch.Generator().manual_seed(hash((seed, position)) & 0x7FFF_FFFF_FFFF_FFFF)
    u = torch.rand(vocab_size, dtype=torch.float64, generator=gen)
    return -torch.log(-torch.log(u))  # u == 0 gives -inf: that token is never picked


def sample_token(logits: torch.Tensor, request: Request, position: int) -> int:
    """Draw the token at ``position`` from the request's distribution: ``argmax(log p + Gumbel noise)`` is
    distributed exactly as ``p`` (the Gumbel-max trick); filtered tokens have ``log p = -inf``."""
    p = token_probs(logits, request)
    return int((p.log() + sampling_noise(request.sampling.seed, position, p.numel())).argmax())


def verify_sampled(logits: torch.Tensor, drafts: Sequence[int], request: Request, position: int) -> list[int]:
    """Speculative sampling for guesses made deterministically (n-gram lookup, a greedy draft model).

    Row ``i`` of ``logits`` is the target at ``position + i``. Each position is sampled as it would be
    without speculation (:func:`sample_token`, same noise); a guess is kept while it equals that sample, and
    the first sample that differs ends the step. For a guess ``x`` that is the textbook rule with ``q`` a point
    mass on ``x``: accept with probability ``min(1, p(x) / q(x)) = p(x)``, else draw from ``p`` without ``x``
    (:func:`rejection_sample` is the general rule). Sharing the noise makes it more than equal in distribution:
    a sampled request produces the very same tokens with and without speculation.
    """
    out: list[int] = []
    for i, guess in enumerate(drafts):
        token = sample_token(logits[i], request, position + i)
        out.append(token)
        if token != guess:
            return out
    out.append(sample_token(logits[len(drafts)], request, position + len(drafts)))  # the bonus token
    return out


def rejection_sample(p: torch.Tensor, q: torch.Tensor, drafts: Sequence[int], generator: torch.Generator) -> list[int]:
    """Speculative sampling with any draft distribution (Leviathan et al. 2023; Chen et al. 2023).

    ``p``: the target's ``len(drafts) + 1`` probability rows; ``q``: the draft's rows, ``drafts[i]`` drawn from
    ``q[i]``. Accept draft ``x`` with probability ``min(1, p_i(x) / q_i(x))``; at the first rejection draw from
    the residual ``max(0, p_i - q_i)``, normalised, and stop; if all are accepted, draw a bonus token from the
    last row. Every token returned is distributed as the target would have sampled it.
    """
    out: list[int] = []
    for i, x in enumerate(drafts):
        pi, qi = p[i].double(), q[i].double()
        if torch.rand((), dtype=torch.float64, generator=generator) * qi[x] < pi[x]:  # u < p/q, never dividing by 0
            out.append(int(x))
            continue
        residual = (pi - qi).clamp(min=0)
        if residual.sum() <= 0:  # p == q up to rounding: this rejection had probability 0
            residual = pi
        out.append(int(torch.multinomial(residual, 1, generator=generator)))  # weights: normalised by multinomial
        return out
    out.append(int(torch.multinomial(p[len(drafts)].double(), 1, generator=generator)))
    return out


def accept_drafts(target_best: list[int], drafts: tuple[int, ...]) -> list[int]:
    """Greedy verification: the agreeing prefix of the drafts, then the target's own next token."""
    n = 0
    while n < len(drafts) and target_best[n] == drafts[n]:
        n += 1
    return list(drafts[:n]) + [target_best[n]]


def sample_step(
    plan: StepPlan, logits: torch.Tensor, requests: Mapping[int, Request], stats: EngineStats
) -> dict[int, list[int]]:
    """Tokens each request of the step gains: one sample, or the verified prefix of its drafts plus one.

    ``logits`` has one row per position that needs one, chunk by chunk (``ScheduledChunk.num_logits``)."""
    greedy = logits.argmax(dim=-1).tolist()
    out: dict[int, list[int]] = {}
    row = 0

    def draw(r: Request) -> int:  # the next token of ``r`` from this row: argmax, or sampled at its position
        return greedy[row] if r.sampling.greedy else sample_token(logits[row], r, r.num_tokens)

    for c in plan.chunks:
        if not c.num_logits:
            continue
        req = requests[c.request_id]
        if c.drafts:  # greedy: the agreeing prefix; sampled: rejection sampling keeps the target's distribution
            rows = slice(row, row + c.num_logits)
            out[c.request_id] = (
                accept_drafts(greedy[rows], c.drafts)
                if req.sampling.greedy
                else verify_sampled(logits[rows], c.drafts, req, req.num_tokens)
            )
            stats.draft_tokens += len(c.drafts)
            stats.accepted_tokens += len(out[c.request_id]) - 1
        else:
            out[c.request_id] = [draw(req)]
        for fid in req.forks:  # parallel sampling: each fork draws its first token from the same row
            out[fid] = [draw(requests[fid])]
        row += c.num_logits
    return out
