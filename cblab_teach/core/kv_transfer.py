"""Hand a prefilled request from one engine to another: its state, and its K/V block by block.

This is what disaggregated serving moves between a prefill engine and a decode engine
(:mod:`cblab_teach.advanced.disaggregated`). A request is ready to move once its prompt's
K/V is stored and its first token is sampled: exactly one token (that first one) waits to
be fed back, so the receiving engine schedules it as an ordinary decode.

The K/V travels in blocks of the sender's ``block_size`` tokens (for a paged pool, one
physical block each; for a dense pool, slices of its contiguous range). The receiver writes
each block into whatever slots its own layout gives those positions, so the two engines may
use different layouts and block sizes. ``nbytes`` counts exactly the tensors that move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import KVCacheError, RequestError
from .kv_cache import KVCache
from .request import Request, RequestState, SamplingParams, token_ids
from .scheduler import is_decoding

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class KVBlock:
    """K and V of positions ``[start, start + tokens)`` over every layer: ``[layers, tokens, kv_heads, head_dim]``."""

    start: int
    k: torch.Tensor
    v: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.k.shape[1])

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class PrefilledRequest:
    """Everything a decode engine needs to continue a request: plain data, so it can cross a process boundary."""

    request_id: int
    prompt_ids: list[int]
    output_ids: list[int]  # tokens sampled so far (the first one, when a prefill engine hands it over)
    max_new_tokens: int
    sampling: SamplingParams
    eos_token_id: int | None
    priority: int
    adapter: str | None
    arrival_time: float  # when it first arrived (perf_counter), so TTFT and E2E span both engines
    token_times: list[float]
    blocks: list[KVBlock] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Tokens whose K/V travels: all but the last sampled one (the receiver computes that one's K/V)."""
        return sum(b.num_tokens for b in self.blocks)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)


def read_blocks(kv: KVCache, request_id: int, num_tokens: int, block_size: int) -> list[KVBlock]:
    """A request's K/V for positions ``[0, num_tokens)`` as blocks of ``block_size`` tokens (copies)."""
    layers = kv.k.shape[0]
    blocks = []
    for start in range(0, num_tokens, block_size):
        slots = kv.request_slots(request_id, start, min(num_tokens, start + block_size))
        pairs = [kv.read(layer, slots) for layer in range(layers)]
        k = torch.stack([p[0] for p in pairs]).clone()
        v = torch.stack([p[1] for p in pairs]).clone()
        blocks.append(KVBlock(start, k, v))
    return blocks


def write_blocks(kv: KVCache, request_id: int, blocks: Sequence[KVBlock]) -> None:
    """Store received blocks in this pool's own slots for those positions (the request is admitted already)."""
    for block in blocks:
        end = block.start + block.num_tokens
        kv.ensure(request_id, end)
        slots = kv.request_slots(request_id, block.start, end)
        for layer in range(block.k.shape[0]):
            kv.k[layer, slots] = block.k[layer].to(kv.k.device)
            kv.v[layer, slots] = block.v[layer].to(kv.v.device)


def export_prefilled(engine: Engine, request_id: int) -> PrefilledRequest:
    """Take a request that has its first token out of ``engine``: copy its K/V, free it there, forget it."""
    req = engine.request(request_id)
    if req not in engine.running or not is_decoding(req):
        raise RequestError(
            f"request {request_id} cannot be handed over: it must hold KV with its prompt computed and one "
            f"sampled token waiting (state {req.state.value}, {req.num_computed} of {req.num_tokens} tokens computed)"
        )
    blocks = read_blocks(engine.kv, request_id, req.num_computed, engine.config.block_size)
    engine.remove_running(request_id)
    return PrefilledRequest(
        request_id=req.request_id,
        prompt_ids=list(req.prompt_ids),
        output_ids=list(req.output_ids),
        max_new_tokens=req.max_new_tokens,
        sampling=req.sampling,
        eos_token_id=req.eos_token_id,
        priority=req.priority,
        adapter=req.adapter,
        arrival_time=req.arrival_time,
        token_times=list(req.token_times),
        blocks=blocks,
    )


def _slots_needed(engine: Engine, handoff: PrefilledRequest) -> int:
    """What admission must find free: the worst case, or (preemption mode) just the K/V that arrives plus one."""
    worst = len(handoff.prompt_ids) + handoff.max_new_tokens - 1
    return handoff.num_tokens + 1 if engine.config.preemption else worst


def can_import(engine: Engine, handoff: PrefilledRequest) -> bool:
    """Is there room for this request in ``engine`` now (a running slot and the KV it will need)?"""
    return len(engine.running) < engine.config.max_running and engine.kv.fits([_slots_needed(engine, handoff)])


def _check_blocks(engine: Engine, handoff: PrefilledRequest) -> None:
    """The K/V arrives in order from position 0, in this engine's shapes and dtype, one block per tensor pair."""
    cfg = engine.model.config
    dtype = engine.kv.k.dtype if isinstance(engine.kv.k, torch.Tensor) else engine.model.dtype
    expected = len(handoff.prompt_ids) + len(handoff.output_ids) - 1
    position = 0
    for block in handoff.blocks:
        if not (isinstance(block, KVBlock) and isinstance(block.k, torch.Tensor) and isinstance(block.v, torch.Tensor)):
            raise KVCacheError(
                f"request {handoff.request_id}: a hand-over block must be a KVBlock of two tensors, got {block!r}"
            )
        shape = (cfg.num_layers, block.num_tokens, cfg.kv_heads, cfg.head_dim)
        if block.start != position or tuple(block.k.shape) != shape or tuple(block.v.shape) != shape:
            raise KVCacheError(
                f"request {handoff.request_id}: KV block at position {block.start} has shape {tuple(block.k.shape)}; "
                f"this engine expects blocks in order from 0, each [layers, tokens, kv_heads, head_dim] = {shape}"
            )
        if block.k.dtype != dtype or block.v.dtype != dtype:
            raise KVCacheError(
                f"request {handoff.request_id}: KV block at position {block.start} is {block.k.dtype}/{block.v.dtype} "
                f"but this engine's pool is {dtype}; convert the hand-over (or the model) so they match"
            )
        position += block.num_tokens
    if position != expected or not handoff.output_ids:
        raise KVCacheError(
            f"request {handoff.request_id}: got K/V for {position} tokens and {len(handoff.output_ids)} sampled "
            f"tokens; a hand-over brings at least one sampled token and the K/V of every token before the last"
        )


def _request(engine: Engine, handoff: PrefilledRequest) -> Request:
    """The request the hand-over describes, checked as ``add_request`` checks one, plus its sampled tokens:
    in the vocabulary, fewer than ``max_new_tokens``, and not ending in its end token (it would be finished)."""
    req = engine.check_request(
        handoff.prompt_ids, handoff.max_new_tokens, request_id=handoff.request_id, sampling=handoff.sampling,
        priority=handoff.priority, eos_token_id=handoff.eos_token_id, adapter=handoff.adapter,
    )  # fmt: skip
    owner = f"request {req.request_id}"
    req.output_ids = token_ids(handoff.output_ids, f"{owner}: output_ids")
    engine.intake.check_in_vocab(req.output_ids, owner, "output_ids")
    done = len(req.output_ids) >= req.max_new_tokens or (req.output_ids and req.output_ids[-1] == req.eos_token_id)
    if done:
        raise RequestError(
            f"{owner}: the hand-over is already finished ({len(req.output_ids)} of max_new_tokens="
            f"{req.max_new_tokens} tokens, last {req.output_ids[-1]}, end token {req.eos_token_id}): nothing to decode"
        )
    req.state = RequestState.DECODE
    return req


def import_prefilled(engine: Engine, handoff: PrefilledRequest) -> int:
    """Continue in ``engine`` a request another engine prefilled; it decodes at ``engine``'s next step.

    Everything is checked before anything changes; if writing the K/V still fails, the admitted blocks are
    freed again, so a refused hand-over leaves the engine exactly as it was."""
    if not isinstance(handoff, PrefilledRequest):
        raise RequestError(f"import_prefilled needs a PrefilledRequest (from export_prefilled), got {handoff!r}")
    req = _request(engine, handoff)
    _check_blocks(engine, handoff)
    if not can_import(engine, handoff):
        raise KVCacheError(
            f"request {req.request_id}: no room in this engine now (running slots or KV blocks); try later"
        )
    engine.kv.admit(req.request_id, req.max_total_tokens, reserve=not engine.config.preemption)
    try:
        write_blocks(engine.kv, req.request_id, handoff.blocks)
    except BaseException:
        engine.kv.free(req.request_id)
        raise
    req.num_computed = handoff.num_tokens
    req.token_times = list(handoff.token_times)
    engine.add_running(req, handoff.arrival_time)
    return req.request_id
