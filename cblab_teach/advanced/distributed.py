"""Sharded attention for real: P processes, each holding only its shard of K/V (``torch.distributed``, gloo).

Every rank gets the queries (in sequence-parallel decode they are broadcast) and
loads only its own slice of the keys and values. It computes its partial
``(out_p, lse_p)`` with :func:`~cblab_teach.advanced.sharding.partial_attention`;
the ranks then ``all_gather`` just those two tensors -- ``heads * (head_dim + 1)``
numbers per query -- and every rank merges them with the log-sum-exp reduction.
The KV itself never crosses a process boundary. Rank 0 also reads the full K/V
(for the check only) and compares the merge with full masked attention.

The process group uses a ``file://`` store in a fresh temporary folder: no TCP
port to pick, nothing to collide with on a shared CI machine, and the folder
(store, shards, result) is removed afterwards.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..attention.masked import masked_attention
from .processes import init_group, launch, scratch_folder
from .sharding import ShardingError, merge_partials, partial_attention, shard_bounds, shard_sizes


@dataclass
class DistributedResult:
    """What :func:`run_distributed` measured; byte counts are of the tensors actually exchanged."""

    out: torch.Tensor  # [B, Q, H, D] merged on rank 0
    reference: torch.Tensor  # [B, Q, H, D] full masked attention on rank 0
    max_abs_error: float
    ranks_agree: bool  # every rank merged the same output
    world_size: int
    shard_sizes: list[int]
    partial_bytes_per_rank: int  # one rank's (out, lse)
    bytes_communicated: int  # all_gather of (out, lse): each rank's partial reaches every other rank
    kv_bytes_per_rank: list[int]  # each rank's K and V shard
    kv_gather_bytes: int  # the same all_gather pattern moving K/V instead: what the merge avoids
    seconds: float  # wall time of the whole run, process start-up included
    per_rank_seconds: list[float] = field(default_factory=list)  # partial + all_gather + merge on each rank

    @property
    def communication_ratio(self) -> float:
        """KV bytes a gather would move per byte the merge moves."""
        return self.kv_gather_bytes / max(self.bytes_communicated, 1)

    def __repr__(self) -> str:  # the tensors would print thousands of numbers; ``.out`` and ``.reference`` hold them
        verdict = "matches" if self.max_abs_error < 1e-9 else "differs from"
        return (
            f"DistributedResult: {self.world_size} ranks, shards of {self.shard_sizes} keys, out {list(self.out.shape)}\n"
            f"  merged output {verdict} full attention: max |error| {self.max_abs_error:.2g}; "
            f"ranks agree: {self.ranks_agree}\n"
            f"  exchanged {self.bytes_communicated:,} bytes of (out, lse); gathering the KV instead: "
            f"{self.kv_gather_bytes:,} bytes ({self.communication_ratio:.1f}x more)\n"
            f"  {self.seconds:.2f} s in all, process start-up included"
        )


def causal_example(
    num_queries: int = 4,
    num_keys: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A prefill chunk's last ``num_queries`` queries over ``num_keys`` cached + new keys (causal, grouped-query)."""
    if num_queries > num_keys:
        raise ShardingError(f"num_queries ({num_queries}) cannot exceed num_keys ({num_keys}) in a causal chunk")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, num_queries, num_heads, head_dim, generator=g, dtype=dtype)
    k = torch.randn(1, num_keys, num_kv_heads, head_dim, generator=g, dtype=dtype)
    v = torch.randn(1, num_keys, num_kv_heads, head_dim, generator=g, dtype=dtype)
    q_pos = torch.arange(num_keys - num_queries, num_keys)
    mask = (torch.arange(num_keys)[None, :] <= q_pos[:, None])[None]
    return q, k, v, mask


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _worker(rank: int, world_size: int, folder: str, timeout_s: float) -> None:
    """One rank: load the queries and only its own K/V shard, attend, all_gather (out, lse), merge."""
    torch.set_num_threads(1)  # P processes share the machine's cores
    init_group(rank, world_size, folder, timeout_s)
    try:
        shared = torch.load(os.path.join(folder, "queries.pt"))
        shard = torch.load(os.path.join(folder, f"shard_{rank}.pt"))  # this rank's keys and nothing else
        start = time.perf_counter()
        out, lse = partial_attention(shared["q"], shard["k"], shard["v"], shard["mask"])
        outs = [torch.empty_like(out) for _ in range(world_size)]
        lses = [torch.empty_like(lse) for _ in range(world_size)]
        dist.all_gather(outs, out.contiguous())
        dist.all_gather(lses, lse.contiguous())
        merged = merge_partials(outs, lses)
        seconds = time.perf_counter() - start
        gathered = [torch.empty_like(merged) for _ in range(world_size)]
        dist.all_gather(gathered, merged)  # only to prove every rank holds the same answer
        times = [None] * world_size
        dist.all_gather_object(times, seconds)
        if rank == 0:
            full = torch.load(os.path.join(folder, "full_kv.pt"))  # the check's reference, rank 0 only
            reference = masked_attention(shared["q"], full["k"], full["v"], shared["mask"])
            result = {
                "out": merged,
                "reference": reference,
                "max_abs_error": (merged - reference).abs().max().item() if merged.numel() else 0.0,
                "ranks_agree": all(torch.equal(g, merged) for g in gathered),
                "partial_bytes_per_rank": _nbytes(out) + _nbytes(lse),
                "per_rank_seconds": times,
            }
            torch.save(result, os.path.join(folder, "result.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(
    world_size: int = 2,
    q: torch.Tensor | None = None,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    timeout_s: float = 90.0,
    **example,
) -> DistributedResult:
    """Spawn ``world_size`` gloo processes, shard the KV across them, merge (out, lse), check on rank 0.

    Give ``q [B, Q, H, D]``, ``k, v [B, K, Hkv, D]``, ``mask [B, Q, K]`` (e.g. a real engine step),
    or none of them for :func:`causal_example` (``**example`` are its arguments).
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ShardingError(f"world_size must be an int >= 1, got {world_size!r}")
    given = [t is not None for t in (q, k, v, mask)]
    if any(given) and not all(given):
        raise ShardingError("give all of q, k, v and mask, or none of them")
    if not any(given):
        q, k, v, mask = causal_example(**example)
    partial_attention(q[:, :0], k, v, mask[:, :0])  # validate shapes here, before any process starts
    sizes = shard_sizes(k.shape[1], world_size)
    start = time.perf_counter()
    with scratch_folder("cblab_shard_") as folder:
        torch.save({"q": q, "mask": mask}, os.path.join(folder, "queries.pt"))
        torch.save({"k": k, "v": v}, os.path.join(folder, "full_kv.pt"))
        kv_bytes = []
        for rank, (lo, hi) in enumerate(shard_bounds(sizes)):
            piece = {"k": k[:, lo:hi].clone(), "v": v[:, lo:hi].clone(), "mask": mask[:, :, lo:hi].clone()}
            kv_bytes.append(_nbytes(piece["k"]) + _nbytes(piece["v"]))
            torch.save(piece, os.path.join(folder, f"shard_{rank}.pt"))
        launch(_worker, (world_size, folder, timeout_s), world_size, timeout_s, name="run_distributed")
        res = torch.load(os.path.join(folder, "result.pt"))
    partial = res["partial_bytes_per_rank"]
    return DistributedResult(
        out=res["out"],
        reference=res["reference"],
        max_abs_error=res["max_abs_error"],
        ranks_agree=res["ranks_agree"],
        world_size=world_size,
        shard_sizes=sizes,
        partial_bytes_per_rank=partial,
        bytes_communicated=partial * world_size * (world_size - 1),
        kv_bytes_per_rank=kv_bytes,
        kv_gather_bytes=sum(kv_bytes) * (world_size - 1),
        seconds=time.perf_counter() - start,
        per_rank_seconds=res["per_rank_seconds"],
    )
