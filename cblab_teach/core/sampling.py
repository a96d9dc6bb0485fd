"""Turn a row of logits into a token, greedy or seeded.

Each request owns its ``torch.Generator``, so its sampled tokens do not depend
on which other requests share its batch.
"""

from __future__ import annotations

import torch

from .request import Request


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


def sample_token(logits: torch.Tensor, request: Request) -> int:
    """Draw one token from a row of logits with the request's own generator."""
    s = request.sampling
    filtered = filter_logits(logits.double().cpu() / s.temperature, s.top_k, s.top_p)
    return int(torch.multinomial(torch.softmax(filtered, -1), 1, generator=request.generator))


def sample_tokens(logits: torch.Tensor, requests: list[Request]) -> list[int]:
    """One token per row; greedy rows share a single vectorised argmax."""
    greedy = logits.argmax(dim=-1).tolist()
    return [
        best if req.sampling.greedy else sample_token(logits[row], req)
        for row, (req, best) in enumerate(zip(requests, greedy))
    ]


def accept_drafts(target_best: list[int], drafts: tuple[int, ...]) -> list[int]:
    """Greedy verification: the agreeing prefix of the drafts, then the target's own next token."""
    n = 0
    while n < len(drafts) and target_best[n] == drafts[n]:
        n += 1
    return list(drafts[:n]) + [target_best[n]]
