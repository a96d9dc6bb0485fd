"""Preemption: what happens to a running request when the block pool runs out.

The scheduler's ledger picks the victims (``core/scheduler.py``); this module carries out the choice.
A victim loses its blocks and goes back to the queue, either

* **recomputed** (``preemption=True`` or ``"recompute"``): its ``num_computed`` drops to 0 and its tokens
  are prefilled again when it is admitted (compute spent twice), or
* **swapped** (``preemption="swap"``): its K/V is first copied to a host pool (``core/swap.py``) and copied
  back when it is admitted, so it resumes exactly where it stopped (bytes moved twice). A victim the host
  pool cannot hold, or a compressed (int8) pool, falls back to recompute.
"""

from __future__ import annotations

import torch

from ..errors import InvariantError
from ..model.tiny_lm import TinyLM
from .config import EngineConfig
from .kv_cache import KVCache
from .records import EngineStats
from .request import Request, RequestState
from .swap import HostKVPool


def make_host_pool(model: TinyLM, config: EngineConfig) -> HostKVPool | None:
    """The host pool swap preemption parks K/V in, shaped like the model's KV (None unless ``preemption="swap"``);
    pinned when the engine runs on a GPU: faster, asynchronous copies."""
    if config.preemption != "swap":
        return None
    cfg = model.config
    pin = torch.device(config.device).type == "cuda"
    return HostKVPool(
        cfg.num_layers, cfg.kv_heads, cfg.head_dim, config.num_host_blocks, config.block_size, model.dtype, pin
    )


class Preemption:
    """Frees a victim's KV (parking it in the host pool if it can) and restores it on re-admission."""

    def __init__(self, kv: KVCache, host: HostKVPool | None, stats: EngineStats) -> None:
        self.kv, self.host, self.stats = kv, host, stats

    def can_swap(self, req: Request) -> bool:
        plain_pool = isinstance(self.kv.k, torch.Tensor)  # an int8 pool (KVQuantizationPlugin) is recomputed
        return self.host is not None and plain_pool and req.num_computed > 0 and self.host.can_hold(req.num_computed)

    def preempt(self, req: Request, running: list[Request], waiting: list[Request]) -> bool:
        """Free the request's KV and move it from ``running`` to ``waiting``; True if its K/V went to the host
        pool (it resumes where it stopped), False if it will be recomputed."""
        swapped = self.can_swap(req)
        if swapped:
            self.stats.swapped_out_bytes += self.host.swap_out(self.kv, req.request_id, req.num_computed)
            self.stats.swap_outs += 1
        else:
            self.stats.recomputed_tokens += req.num_computed
            req.num_computed = 0
        self.kv.free(req.request_id)
        self.stats.preemptions += 1
        req.num_preemptions += 1
        req.state = RequestState.WAITING
        running.remove(req)
        waiting.append(req)
        return swapped

    def is_swapped(self, request_id: int) -> bool:
        return self.host is not None and self.host.holds(request_id)

    def swap_in(self, req: Request) -> None:
        """Copy a swapped request's K/V back (it is admitted already): it resumes where it stopped."""
        tokens, nbytes = self.host.swap_in(self.kv, req.request_id)
        if tokens != req.num_computed:
            raise InvariantError(
                f"request {req.request_id}: {tokens} tokens of K/V came back from the host pool but "
                f"{req.num_computed} are computed; the swap bookkeeping is wrong"
            )
        self.stats.swapped_in_bytes += nbytes

    def forget(self, request_id: int) -> None:
        """An aborted request: give back its host blocks, if it has any."""
        if self.is_swapped(request_id):
            self.host.discard(request_id)
