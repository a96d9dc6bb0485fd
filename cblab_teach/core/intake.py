"""Intake: everything a caller hands the engine is checked here, before anything changes.

A bad value gets a typed error naming it (:mod:`cblab_teach.errors`), raised while the engine is
untouched: no id consumed, no KV admitted, no queue changed, so every other request carries on.
Checking on arrival matters because a bad value found mid-step would stop every request in the batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..errors import CapacityError, DuplicateRequestError, RequestError, UnknownAdapterError
from .config import check_token_id
from .request import Request, SamplingParams, token_ids


def is_int(value) -> bool:
    """An integer of any kind (Python, numpy), but not a bool: ``True`` is a typo, not 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sampling(sampling, owner: str) -> SamplingParams:
    """A SamplingParams with a finite temperature >= 0, an int top_k >= 0, 0 < top_p <= 1 and an int seed.

    The seed keys the sampling noise (``core/sampling.py``): it must be an int, so that it is hashable and the
    same in every process (a str's hash is salted per process, so "seeded" tokens would change run to run)."""
    if sampling is None:
        return SamplingParams()
    problem = None
    if not isinstance(sampling, SamplingParams):
        problem = "need a SamplingParams with a finite temperature >= 0, an int top_k >= 0 and 0 < top_p <= 1"
    elif not all(
        isinstance(x, numbers.Real) and not isinstance(x, bool) for x in (sampling.temperature, sampling.top_p)
    ):
        problem = "temperature and top_p must be numbers"
    elif not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
        problem = "need a finite temperature >= 0"
    elif not (is_int(sampling.top_k) and sampling.top_k >= 0):
        problem = "need an int top_k >= 0"
    elif not 0 < sampling.top_p <= 1:
        problem = "need 0 < top_p <= 1"
    elif not is_int(sampling.seed):
        problem = f"the seed must be an int, got {sampling.seed!r}"
    if problem:
        raise RequestError(f"{owner}: invalid sampling parameters {sampling!r} ({problem})")
    return replace(sampling, seed=int(sampling.seed), top_k=int(sampling.top_k))


def check_max_new_tokens(value, owner: str) -> int:
    if not is_int(value) or value < 1:
        raise RequestError(f"{owner}: max_new_tokens must be an int >= 1, got {value!r}")
    return int(value)


def generate_args(prompts: Sequence, max_new_tokens, sampling) -> tuple[list, list, list]:
    """``generate``'s arguments, one entry per prompt: an int or one per prompt, a SamplingParams or one per
    prompt. The one place every ``generate`` (engine, static baseline, disaggregated) normalises them."""
    try:
        n = len(prompts)
    except TypeError:
        raise RequestError(f"generate needs a list of prompts, got {prompts!r}") from None
    if is_int(max_new_tokens):
        lengths = [int(max_new_tokens)] * n
    elif isinstance(max_new_tokens, Sequence) and not isinstance(max_new_tokens, str):
        lengths = list(max_new_tokens)
    else:
        raise RequestError(f"max_new_tokens must be an int >= 1 or one per prompt, got {max_new_tokens!r}")
    params = list(sampling) if isinstance(sampling, (list, tuple)) else [sampling] * n
    if len(lengths) != n or len(params) != n:
        raise RequestError(f"got {n} prompts but {len(lengths)} max_new_tokens and {len(params)} sampling params")
    return list(prompts), lengths, params


class Intake:
    """Checks a request against the model, the pool and the engine's ids; hands out ids and arrival order."""

    def __init__(self, vocab_size: int, max_position: int, num_slots: int, default_eos: int | None) -> None:
        self.vocab_size, self.max_position, self.num_slots = vocab_size, max_position, num_slots
        self.default_eos = default_eos
        self.next_id = 0  # the id a request without one gets
        self.arrivals = 0  # arrival order, the tie-breaker everywhere

    def check(
        self,
        known: Mapping[int, Request],
        prompt_ids,
        max_new_tokens,
        request_id=None,
        sampling=None,
        priority=0,
        eos_token_id=None,
        adapter=None,
        adapters: Mapping | None = None,
    ) -> Request:
        """A new :class:`Request` built from checked, normalised values (not yet queued); raises otherwise."""
        rid = self.next_id if request_id is None else request_id
        if not is_int(rid):
            raise RequestError(f"request_id must be an int, got {rid!r}")
        rid = int(rid)
        if rid in known:
            raise DuplicateRequestError(f"request id {rid} is already in use")
        owner = f"request {rid}"
        prompt = token_ids(prompt_ids, owner)
        if not prompt:
            raise RequestError(f"{owner}: the prompt is empty; give at least one token id")
        self.check_in_vocab(prompt, owner, "token ids")
        max_new_tokens = check_max_new_tokens(max_new_tokens, owner)
        total = len(prompt) + max_new_tokens
        if total > self.max_position:
            raise RequestError(
                f"{owner}: prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds "
                f"the model's max_position {self.max_position}"
            )
        if total - 1 > self.num_slots:  # a paged pool's slots are its blocks times their size: the same test
            raise CapacityError(
                f"{owner} needs {total - 1} KV slots but the whole pool has {self.num_slots}; it could never run"
            )
        if not is_int(priority):
            raise RequestError(f"{owner}: priority must be an int (smaller runs first), got {priority!r}")
        sampling = check_sampling(sampling, owner)
        eos = (
            self.default_eos
            if eos_token_id is None
            else check_token_id(eos_token_id, f"{owner}: eos_token_id", RequestError)
        )
        adapters = adapters or {}
        if adapter is not None and (not isinstance(adapter, str) or adapter not in adapters):
            raise UnknownAdapterError(
                f"{owner}: unknown adapter {adapter!r}; known: {sorted(adapters)} (add_adapter first)"
            )
        return Request(rid, prompt, max_new_tokens, sampling, eos, int(priority), adapter=adapter)

    def check_in_vocab(self, ids: list[int], owner: str, what: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"{owner}: {what} {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

    def enter(self, request: Request) -> None:
        """The request joins the engine: it takes the next arrival number, and later ids go past its own."""
        request.arrival = self.arrivals
        self.arrivals += 1
        self.next_id = max(self.next_id, request.request_id + 1)
