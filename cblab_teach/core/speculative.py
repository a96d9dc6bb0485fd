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
  (free, and strong on repetitive text). It keeps an index of every n-gram's
  latest start per request, so a step looks up one key instead of scanning the
  history (:func:`lookup_by_scan` is the plain scan it must agree with);
* :class:`DraftModelProposer` -- run a smaller :class:`TinyLM` greedily. It
  keeps its own KV cache between steps, so a step computes only the tokens the
  target accepted since the last one, not every request's whole history again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .batch_builder import build_batch
from .kv_cache import PagedAllocator
from .request import Request
from .scheduler import ScheduledChunk, StepPlan, is_decoding


class Proposer(Protocol):
    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> dict[int, list[int]]:
        """Up to ``k[i]`` guessed tokens for each request."""


def lookup_by_scan(ids: Sequence[int], n: int, n_guess: int) -> list[int]:
    """What followed the latest earlier occurrence of the last ``n`` tokens (the reference the index must match)."""
    if n_guess < 1 or len(ids) <= n:
        return []
    tail = list(ids[-n:])
    for start in range(len(ids) - n - 1, -1, -1):  # latest earlier match first
        if list(ids[start : start + n]) == tail:
            return list(ids[start + n : start + n + n_guess])
    return []


class PromptLookupProposer:
    """n-gram lookup in the request's own prompt and output, through an index kept per request.

    ``index[rid][ngram]`` is the latest start of ``ngram`` among starts ``0 .. len - n - 1`` (every start but
    the tail's own); each step adds the starts the request's new tokens made, so the cost per step does not
    grow with the history.
    """

    def __init__(self, ngram_size: int = 2) -> None:
        self.ngram_size = ngram_size
        self.index: dict[int, dict[tuple[int, ...], int]] = {}
        self.indexed: dict[int, int] = {}  # request id -> starts indexed so far

    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> dict[int, list[int]]:
        n = self.ngram_size
        live = {r.request_id for r in requests}
        for rid in [rid for rid in self.index if rid not in live]:  # finished or preempted: forget
            del self.index[rid], self.indexed[rid]
        out = {}
        for req, n_guess in zip(requests, k):
            ids = req.all_ids
            if len(ids) <= n:
                continue
            rid = req.request_id
            index = self.index.setdefault(rid, {})
            for start in range(self.indexed.get(rid, 0), len(ids) - n):  # later starts overwrite earlier ones
                index[tuple(ids[start : start + n])] = start
            self.indexed[rid] = len(ids) - n
            start = index.get(tuple(ids[-n:]))
            if n_guess >= 1 and start is not None:
                guess = ids[start + n : start + n + n_guess]
                if guess:
                    out[rid] = guess
        return out


class _Tokens:
    """The token list of one draft sequence, as :func:`build_batch` reads it."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def token_slice(self, start: int, end: int) -> list[int]:
        return self.ids[start:end]


class DraftModelProposer:
    """Greedy guesses from a smaller model that shares the vocabulary, with its own KV cache kept between steps.

    ``stored[rid]`` are the tokens whose draft K/V is in the draft's pool: last step's history plus its guesses
    but the last. Each step the entry is cut back to the longest prefix it shares with the request's history
    now (the rejected guesses go, as in the target's cache), the missing tokens are computed in one ragged
    batch with every other request's, and the guesses follow one batched token at a time.
    """

    def __init__(self, draft_model, block_size: int = 16) -> None:
        self.model = draft_model
        self.block_size = block_size
        self.kv: PagedAllocator | None = None
        self.stored: dict[int, list[int]] = {}
        self.confirmed: dict[int, int] = {}  # request id -> length of its history at the last call
        self.most = 0
        self.computed_tokens = 0  # draft tokens computed so far (the re-prefill of every history it avoids)

    def _make_room(self, need_blocks: int) -> None:
        """A pool with room for ``need_blocks``; a bigger one (and every entry recomputed) when it is too small."""
        if self.kv is not None and self.kv.num_blocks >= need_blocks:
            return
        cfg = self.model.config
        blocks = max(64, 2 * need_blocks)
        self.kv = PagedAllocator(
            cfg.num_layers, cfg.kv_heads, cfg.head_dim, blocks, self.block_size, self.model.dtype, self.model.device
        )
        self.stored, self.confirmed = {}, {}

    def _forget(self, rid: int) -> None:
        del self.stored[rid], self.confirmed[rid]
        self.kv.free(rid)

    @torch.no_grad()
    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> dict[int, list[int]]:
        live = {r.request_id for r in requests}
        for rid in [rid for rid in self.stored if rid not in live]:
            self._forget(rid)
        active = [(r, n) for r, n in zip(requests, k) if n > 0]
        if not active:
            return {}
        self.most = max(self.most, max(k, default=0))  # what a stored entry may hold beyond its history
        most = self.most
        self._make_room(sum(-(-(r.num_tokens + most) // self.block_size) for r in requests))
        seqs: dict[int, list[int]] = {}
        for r, _ in active:
            rid, hist = r.request_id, r.all_ids
            if rid not in self.stored:
                self.kv.admit(rid, 0, reserve=False)
                self.stored[rid], self.confirmed[rid] = [], 0
            stored = self.stored[rid]
            # the history only grows, so the first `confirmed` stored tokens (last call's history) still match
            keep = min(self.confirmed[rid], len(stored), len(hist) - 1)
            while keep < min(len(stored), len(hist) - 1) and stored[keep] == hist[keep]:
                keep += 1
            self.confirmed[rid] = len(hist)
            self.kv.truncate(rid, keep)
            self.stored[rid] = hist[:keep]
            seqs[rid] = hist
        out: dict[int, list[int]] = {r.request_id: [] for r, _ in active}
        for step in range(max(n for _, n in active)):
            chunks = []
            for r, n in active:
                if step < n:
                    rid = r.request_id
                    start = len(self.stored[rid])
                    chunks.append(ScheduledChunk(rid, start, len(seqs[rid]) - start, "prefill", True))
                    self.kv.ensure(rid, len(seqs[rid]))
            tokens = {c.request_id: _Tokens(seqs[c.request_id]) for c in chunks}
            batch = build_batch(StepPlan(budget=sum(c.length for c in chunks), chunks=chunks), tokens, self.kv.k.device)
            guesses = self.model(batch, self.kv).argmax(dim=-1).tolist()
            self.computed_tokens += batch.num_tokens
            for c, token in zip(chunks, guesses):
                seq = seqs[c.request_id]
                self.stored[c.request_id] = list(seq)  # every token of seq now has draft K/V
                out[c.request_id].append(token)
                seqs[c.request_id] = seq + [token]
        return out


def propose_drafts(
    proposer: Proposer | None, running: Sequence[Request], most: int, draft_window: int | None
) -> dict[int, list[int]]:
    """Speculative guesses for the decoding requests, never past their max_new_tokens (nor, for a draft model,
    its max_position). Greedy requests keep the agreeing guesses; sampled ones verify them by rejection sampling."""
    if proposer is None:
        return {}
    reqs = [r for r in running if is_decoding(r)]
    room = [min(most, r.max_new_tokens - len(r.output_ids) - 1) for r in reqs]
    if draft_window is not None:  # the draft model must hold the request's tokens plus its guesses
        room = [min(n, draft_window - r.num_tokens) for r, n in zip(reqs, room)]
    return proposer.propose(reqs, room)
