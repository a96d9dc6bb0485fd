"""Parallel sampling: ``n`` sequences of one prompt, the prompt computed once.

On a paged pool the first sequence (the *parent*) prefills the prompt; the others wait, outside the
queues, in ``parent.forks``. At the parent's first sample each of them forks from it
(:meth:`~.copy_on_write.CopyOnWrite.fork`): it shares the parent's blocks by reference, draws its own first
token from the same logits row, and joins the running set. Sequence ``i`` samples with seed
``seed + i``, so its tokens equal those of the same request run alone with that seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..errors import CapacityError, RequestError
from .config import EngineConfig
from .kv_cache import KVCache, PagedAllocator
from .request import Request, SamplingParams


def check_group(n, config: EngineConfig, kv: KVCache, prompt_len: int, max_new_tokens: int) -> None:
    """Can ``n`` sequences of this request ever run together? (A typed error if not.)"""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise RequestError(f"add_request_group: n must be an int >= 1, got {n!r}")
    most = min(config.max_running, config.max_tokens_per_step)
    if n > most:
        raise RequestError(
            f"add_request_group: n={n} sequences cannot run together: at most min(max_running, "
            f"max_tokens_per_step) = {most}"
        )
    if isinstance(kv, PagedAllocator) and not config.preemption:
        need = kv.blocks_for(prompt_len + max_new_tokens - 1) * n
        if need > kv.num_blocks:
            raise CapacityError(
                f"a group of {n} needs up to {need} KV blocks reserved but the whole pool has {kv.num_blocks}"
            )


def group_params(base: SamplingParams, n: int) -> list[SamplingParams]:
    """Sequence ``i`` of the group samples with seed ``base.seed + i``."""
    return [replace(base, seed=base.seed + i) for i in range(n)]


def fork_children(
    kv: KVCache,
    parent: Request,
    requests: Mapping[int, Request],
    first_tokens: Mapping[int, list[int]],
    now: float,
    reserve: bool,
) -> tuple[list[Request], list[Request]]:
    """The parent just sampled its first token: each fork shares its blocks and takes its own first token.

    Returns ``(joined, finished)``: forks that now run, and forks already done (one token, or an end token)."""
    joined, finished = [], []
    for fid in parent.forks:
        fork = requests[fid]
        kv.fork(parent.request_id, fid, fork.max_total_tokens, reserve=reserve)
        fork.num_computed = parent.num_computed
        fork.last_scheduled_step = parent.last_scheduled_step
        fork.append_token(first_tokens[fid][0])
        fork.token_times.append(now)
        if fork.is_finished:
            kv.free(fid)
            finished.append(fork)
        else:
            joined.append(fork)
    parent.forks = []
    return joined, finished


def leave_group(req: Request, requests: Mapping[int, Request], holders: list[Request]) -> list[Request]:
    """``req`` is aborted: it leaves its parent's pending forks, and its own pending forks (which cannot start
    without it) are returned, to be stopped with it."""
    for parent in holders:
        if req.request_id in parent.forks:
            parent.forks.remove(req.request_id)
    pending, req.forks = [requests[fid] for fid in req.forks], []
    return pending
