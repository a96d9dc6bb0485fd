"""Seeded synthetic workloads: prompts and output lengths the course and benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    max_new_tokens: list[int]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def total_new_tokens(self) -> int:
        return sum(self.max_new_tokens)


def make_workload(
    num_requests: int = 8,
    prompt_len: tuple[int, int] = (4, 24),
    new_tokens: tuple[int, int] = (4, 24),
    vocab_size: int = 256,
    seed: int = 0,
    long_tail: bool = False,
) -> Workload:
    """Uniform lengths in ``[lo, hi]``; ``long_tail`` draws output lengths from a heavy tail
    (most short, a few near ``hi``), the shape that makes static batching wait."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = prompt_len
    lens = torch.randint(lo, hi + 1, (num_requests,), generator=g).tolist()
    prompts = [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lens]
    lo, hi = new_tokens
    if long_tail:
        u = torch.rand(num_requests, generator=g)
        outs = (lo + (hi - lo) * u.pow(4)).round().long().tolist()
    else:
        outs = torch.randint(lo, hi + 1, (num_requests,), generator=g).tolist()
    return Workload(prompts, [max(1, int(n)) for n in outs])


def serve_with_urgent_arrivals(engine, background: Workload, urgent: Workload, every: int = 3) -> list[int]:
    """Queue ``background`` at low priority (5), then add one ``urgent`` request (priority 0) every ``every``
    steps while serving: the load on which a priority policy shows what it buys. Returns the urgent ids."""
    for p, n in zip(background.prompts, background.max_new_tokens):
        engine.add_request(p, n, priority=5)
    urgent_ids: list[int] = []
    while engine.has_unfinished() or len(urgent_ids) < len(urgent):
        k = len(urgent_ids)
        if len(engine.records) % every == 0 and k < len(urgent):
            urgent_ids.append(engine.add_request(urgent.prompts[k], urgent.max_new_tokens[k], priority=0))
        if engine.has_unfinished():
            engine.step()
    return urgent_ids
