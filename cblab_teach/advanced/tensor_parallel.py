"""Tensor parallelism for real: the tiny model's forward on P gloo processes, each holding only its heads.

Each rank keeps a slice of every layer, split the way Megatron-LM and vLLM split a Llama layer
(https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/layers/linear.py):

* **column-parallel** q/k/v and gate/up: rank ``r`` keeps the rows of its query heads, of its KV heads, and of its
  slice of the MLP width, so it computes its own heads' attention and its own slice of the MLP with no message;
* **row-parallel** o_proj and down: the matching columns, so each rank's output is a *partial sum* of the full
  ``hidden`` vector, and one ``all_reduce`` (sum) after attention and one after the MLP give every rank the same
  residual stream again: two all-reduces of ``tokens x hidden`` per layer, nothing else crosses.

KV heads follow vLLM's rule: with at least ``P`` KV heads each rank keeps ``kv_heads / P`` of them; with fewer, each
rank keeps one and ``P / kv_heads`` ranks share a copy (rank ``r`` keeps KV head ``r // copies``). The embedding,
norms and LM head are kept whole on every rank here (vLLM splits the embedding and head by vocabulary too).

The one-process answer is :class:`~cblab_teach.model.tiny_lm.TinyLM`'s own forward over one prefill step through
the engine's batch builder and KV cache. Splitting a sum into partial sums changes float32 rounding, so the check is
``allclose`` within :data:`ATOL`, not equality. The same per-rank code also runs in one process with every rank in
lock step (:func:`simulate_tensor_parallel`), which is how the tests plant bugs cheaply; with two ranks that
simulation and the real gloo run agree bit for bit (a sum of two numbers does not depend on their order).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from ..core.batch_builder import build_batch
from ..core.config import EngineConfig
from ..core.parts import make_kv_cache
from ..core.request import Request
from ..core.scheduler import ScheduledChunk, StepPlan
from ..errors import ConfigError
from ..model.config import ModelConfig
from ..model.layers import RotaryEmbedding
from ..model.tiny_lm import TinyLM
from .processes import init_group, launch, scratch_folder

ATOL = 1e-5  # float32 logits of the tiny model are O(0.1-1); partial sums move them by about 1e-7
Bug = Literal["skip_all_reduce", "wrong_kv_heads"] | None
BUGS = ("skip_all_reduce", "wrong_kv_heads")


def head_split(num_heads: int, kv_heads: int, world_size: int, rank: int, bug: Bug = None) -> tuple[range, range]:
    """(query heads, KV heads) rank ``rank`` keeps (vLLM's rule, module docstring). ``bug="wrong_kv_heads"``
    hands each rank its neighbour's KV heads: the planted mistake the tests must catch."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ConfigError(f"world_size must be an int >= 1, got {world_size!r}")
    if num_heads % world_size:
        raise ConfigError(f"world_size={world_size} does not divide num_heads={num_heads}")
    if world_size <= kv_heads:
        if kv_heads % world_size:
            raise ConfigError(f"world_size={world_size} does not divide num_kv_heads={kv_heads}")
        per, index = kv_heads // world_size, rank
        count = kv_heads // per
    else:
        if world_size % kv_heads:
            raise ConfigError(f"world_size={world_size} is above num_kv_heads={kv_heads} but not a multiple of it")
        per, index, count = 1, rank // (world_size // kv_heads), kv_heads
    if bug == "wrong_kv_heads":
        index = (index + 1) % count
    q_per = num_heads // world_size
    return range(rank * q_per, (rank + 1) * q_per), range(index * per, (index + 1) * per)


def shard_weights(model: TinyLM, rank: int, world_size: int, bug: Bug = None) -> dict[str, torch.Tensor]:
    """The tensors rank ``rank`` keeps: its rows of q/k/v and gate/up, its columns of o_proj and down, the rest
    whole. Copies (``clone``), so a rank's file holds its shard and nothing more."""
    cfg = model.config
    d, inter = cfg.head_dim, cfg.intermediate_size
    if inter % world_size:
        raise ConfigError(f"world_size={world_size} does not divide intermediate_size={inter}")
    qh, kvh = head_split(cfg.num_heads, cfg.kv_heads, world_size, rank, bug)
    q_rows = slice(qh.start * d, qh.stop * d)
    kv_rows = slice(kvh.start * d, kvh.stop * d)
    mlp = slice(rank * inter // world_size, (rank + 1) * inter // world_size)
    out = {}
    for name, t in model.state_dict().items():
        if name.endswith("q_proj.weight"):
            t = t[q_rows]
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            t = t[kv_rows]
        elif name.endswith("o_proj.weight"):
            t = t[:, q_rows]
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            t = t[mlp]
        elif name.endswith("down_proj.weight"):
            t = t[:, mlp]
        out[name] = t.detach().clone()
    return out


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rank_forward(
    cfg: ModelConfig, w: dict[str, torch.Tensor], ids: torch.Tensor
) -> Generator[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One rank's forward over one causal sequence. Yields each partial sum to be all-reduced and expects the sum
    back (``send``); returns the logits ``[T, vocab]``. The caller decides what "all-reduce" is: gloo, or the
    other ranks in the same process."""
    t, d = ids.shape[0], cfg.head_dim
    rope = RotaryEmbedding(d, cfg.rope_theta)
    cos, sin = rope.cos_sin(torch.arange(t), w["embed_tokens.weight"].dtype)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    x = w["embed_tokens.weight"][ids]
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = RotaryEmbedding.apply((h @ w[p + "self_attn.q_proj.weight"].T).view(t, -1, d), cos, sin)
        k = RotaryEmbedding.apply((h @ w[p + "self_attn.k_proj.weight"].T).view(t, -1, d), cos, sin)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(t, -1, d)
        group = q.shape[1] // k.shape[1]  # this rank's query heads per KV head it keeps
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        attn = torch.einsum("hqk,khd->qhd", torch.softmax(scores.masked_fill(~causal, float("-inf")), -1), v)
        x = x + (yield attn.reshape(t, -1) @ w[p + "self_attn.o_proj.weight"].T)
        h = _rms(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        act = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
        x = x + (yield act @ w[p + "mlp.down_proj.weight"].T)
    return _rms(x, w["norm.weight"], cfg.rms_norm_eps) @ w["lm_head.weight"].T


def _drive(gens: list, reduce) -> list[torch.Tensor]:
    """Run rank generators in lock step: at each yield, ``reduce(partials)`` gives what each rank gets back."""
    partials = [next(g) for g in gens]
    while True:
        sums = reduce(partials)
        outs, nxt = [], []
        for g, s in zip(gens, sums):
            try:
                nxt.append(g.send(s))
            except StopIteration as stop:
                outs.append(stop.value)
        if outs:
            return outs
        partials = nxt


def _check(model: TinyLM, ids: Sequence[int], bug: Bug, world_size: int) -> torch.Tensor:
    """Refuse, naming the value, what would fail later inside a rank process."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ConfigError(f"world_size must be an int >= 1, got {world_size!r}")
    if not isinstance(model, TinyLM):
        raise ConfigError(f"model must be a TinyLM, got {type(model).__name__}")
    if bug is not None and bug not in BUGS:
        raise ConfigError(f"bug must be None or one of {BUGS}, got {bug!r}")
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    if ids_t.dim() != 1 or ids_t.numel() == 0:
        raise ConfigError(f"ids must be a non-empty sequence of token ids, got {list(ids)!r}")
    if int(ids_t.min()) < 0 or int(ids_t.max()) >= model.config.vocab_size:
        raise ConfigError(f"ids must lie in [0, vocab_size={model.config.vocab_size}), got {list(ids)!r}")
    return ids_t


def simulate_tensor_parallel(model: TinyLM, ids: Sequence[int], world_size: int, bug: Bug = None) -> torch.Tensor:
    """Logits of every rank's forward run in this process, in lock step; the all-reduce is a sum over ranks in
    rank order (``bug="skip_all_reduce"``: each rank keeps its own partial). Returns rank 0's logits."""
    ids_t = _check(model, ids, bug, world_size)
    shards = [shard_weights(model, r, world_size, bug) for r in range(world_size)]
    gens = [rank_forward(model.config, w, ids_t) for w in shards]

    def reduce(partials: list[torch.Tensor]) -> list[torch.Tensor]:
        if bug == "skip_all_reduce":
            return partials
        total = partials[0].clone()
        for p in partials[1:]:
            total += p
        return [total] * len(partials)

    return _drive(gens, reduce)[0]


@torch.no_grad()
def one_process_logits(model: TinyLM, ids: Sequence[int]) -> torch.Tensor:
    """The reference: TinyLM's own forward over ``ids`` as one prefill step (engine batch and KV cache)."""
    ids = list(ids)
    config = EngineConfig(max_tokens_per_step=len(ids), num_blocks=len(ids) // 16 + 2, block_size=16)
    kv = make_kv_cache(model, config)
    kv.admit(0, len(ids))
    kv.ensure(0, len(ids))
    plan = StepPlan(budget=len(ids), chunks=[ScheduledChunk(0, 0, len(ids), "prefill", True)])
    return model(build_batch(plan, {0: Request(0, ids, 1)}), kv, all_logits=True)


@dataclass
class TensorParallelResult:
    """What :func:`run_tensor_parallel` measured on real processes."""

    logits: torch.Tensor  # [T, vocab] from rank 0
    reference: torch.Tensor  # the one-process forward
    max_abs_error: float
    ranks_agree: bool  # every rank ended with the same logits, bit for bit
    world_size: int
    all_reduce_bytes: int  # per rank: every buffer it all-reduced (2 per layer, tokens x hidden each)
    shard_bytes: list[int]  # the weights each rank loaded
    seconds: float  # the whole run, process start-up included

    @property
    def matches(self) -> bool:
        return self.max_abs_error <= ATOL

    def __repr__(self) -> str:
        verdict = "matches" if self.matches else "DIFFERS FROM"
        return (
            f"TensorParallelResult: {self.world_size} ranks, logits {list(self.logits.shape)} {verdict} one process "
            f"(max |error| {self.max_abs_error:.2g}, tolerance {ATOL}); ranks agree: {self.ranks_agree}\n"
            f"  each rank all-reduced {self.all_reduce_bytes:,} bytes and loaded {self.shard_bytes} bytes of weights; "
            f"{self.seconds:.2f} s in all"
        )


def _worker(rank: int, world_size: int, folder: str, timeout_s: float, cfg: ModelConfig, bug: Bug) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    init_group(rank, world_size, folder, timeout_s)
    try:
        ids = torch.load(os.path.join(folder, "ids.pt"))
        weights = torch.load(os.path.join(folder, f"shard_{rank}.pt"))  # this rank's slice and nothing else
        moved = 0

        def reduce(partials: list[torch.Tensor]) -> list[torch.Tensor]:
            nonlocal moved
            (part,) = partials
            moved += part.numel() * part.element_size()
            if bug != "skip_all_reduce":
                dist.all_reduce(part)
            return [part]

        logits = _drive([rank_forward(cfg, weights, ids)], reduce)[0]
        gathered = [torch.empty_like(logits) for _ in range(world_size)]
        dist.all_gather(gathered, logits.contiguous())
        if rank == 0:
            agree = all(torch.equal(g, logits) for g in gathered)
            torch.save({"logits": logits, "agree": agree, "moved": moved}, os.path.join(folder, "result.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_tensor_parallel(
    model: TinyLM | None = None,
    ids: Sequence[int] | None = None,
    world_size: int = 2,
    bug: Bug = None,
    timeout_s: float = 60.0,
) -> TensorParallelResult:
    """Spawn ``world_size`` gloo processes, give each its shard, run the forward, compare with one process.

    Defaults: a 2-layer grouped-query TinyLM (4 query heads, 2 KV heads) and 12 token ids."""
    model = model or TinyLM(ModelConfig(num_heads=4, num_kv_heads=2), seed=0)
    ids = list(range(1, 13)) if ids is None else list(ids)
    ids_t = _check(model, ids, bug, world_size)
    shards = [shard_weights(model, r, world_size, bug) for r in range(world_size)]  # refuses a bad split here
    start = time.perf_counter()
    with scratch_folder("cblab_tp_") as folder:
        torch.save(ids_t, os.path.join(folder, "ids.pt"))
        for r, w in enumerate(shards):
            torch.save(w, os.path.join(folder, f"shard_{r}.pt"))
        args = (world_size, folder, timeout_s, model.config, bug)
        launch(_worker, args, world_size, timeout_s, name="run_tensor_parallel")
        res = torch.load(os.path.join(folder, "result.pt"))
    reference = one_process_logits(model, ids)
    return TensorParallelResult(
        logits=res["logits"],
        reference=reference,
        max_abs_error=(res["logits"] - reference).abs().max().item(),
        ranks_agree=res["agree"],
        world_size=world_size,
        all_reduce_bytes=res["moved"],
        shard_bytes=[sum(t.numel() * t.element_size() for t in w.values()) for w in shards],
        seconds=time.perf_counter() - start,
    )
