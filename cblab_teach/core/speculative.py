"""Multi-token decode by speculation: guess a few tokens cheaply, verify them in one forward.

A decoding request normally gains one token per step. Here a *proposer*
guesses the next ``k`` tokens; the step feeds ``[last token, guess_1..guess_k]``
as one chunk of the ragged batch (every guess costs budget), and the target
model's logits at those ``k + 1`` positions say, greedily, what it would have
produced. The longest agreeing prefix of the guesses is kept, plus the
target's own next token, so a step yields 1 to ``k + 1`` tokens that are
exactly what plain greedy decoding would give.

Two proposers:

* :class:`PromptLookupProposer` -- find the latest earlier occurrence of the
  request's last ``n`` tokens in its own history and propose what followed
  (free, and strong on repetitive text);
* :class:`DraftModelProposer` -- run a smaller :class:`TinyLM` greedily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .request import Request


class Proposer(Protocol):
    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> dict[int, list[int]]:
        """Up to ``k[i]`` guessed tokens for each request."""


class PromptLookupProposer:
    """n-gram lookup in the request's own prompt and output."""

    def __init__(self, ngram_size: int = 2) -> None:
        self.ngram_size = ngram_size

    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> dict[int, list[int]]:
        out = {}
        for req, n_guess in zip(requests, k):
            ids = req.all_ids
            n = self.ngram_size
            if n_guess < 1 or len(ids) <= n:
                continue
            tail = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):  # latest earlier match first
                if ids[start : start + n] == tail:
                    guess = ids[start + n : start + n + n_guess]
                    if guess:
                        out[req.request_id] = guess
                    break
        return out


class DraftModelProposer:
    """Greedy guesses from a smaller model that shares the vocabulary."""

    def __init__(self, draft_model) -> None:
        self.model = draft_model

    @torch.no_grad()
    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> dict[int, list[int]]:
        from .config import EngineConfig
        from .engine import Engine

        active = [(r, n) for r, n in zip(requests, k) if n > 0]
        if not active:
            return {}
        longest = max(r.num_tokens + n for r, n in active)
        engine = Engine(
            self.model,
            EngineConfig(
                max_tokens_per_step=max(longest, 1) * len(active),
                prefill_chunk_size=longest,
                kv_layout="dense",
                num_blocks=len(active) * longest + 1,
                block_size=1,
            ),
        )
        ids = {engine.add_request(r.all_ids, n): r.request_id for r, n in active}
        engine.run()
        return {rid: engine.output(i) for i, rid in ids.items()}
