"""Where the memory goes: process RSS and the tensors that matter (KV pool, weights, CUDA), at points you choose.

* :class:`MemoryProfiler` -- ``snapshot(label)`` records one :class:`MemorySnapshot`.
* :class:`DetailedMemoryProfiler` -- named snapshots plus ``with profiler.phase("prefill"):``
  blocks that record the memory before and after each phase and the delta.

RSS (from psutil) is what the operating system charges the process; it moves
with the allocator's caching, so compare it over large changes only. Tensor
bytes are exact: they count the storage of the tensors themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import torch

from .errors import MonitoringError


def process_rss() -> int:
    """Resident set size of this process in bytes."""
    return psutil.Process().memory_info().rss


def tensor_bytes(t) -> int:
    """Bytes held by a tensor, or by a K/V pool object exposing ``nbytes`` (e.g. an int8 pool)."""
    if isinstance(t, torch.Tensor):
        return t.untyped_storage().nbytes()
    return int(getattr(t, "nbytes", 0))


@dataclass(frozen=True)
class MemorySnapshot:
    label: str
    time: float
    rss_bytes: int | None
    tensors: dict[str, int]  # name -> bytes: kv_pool, parameters, cuda_allocated, cuda_reserved

    @property
    def tensor_total(self) -> int:
        return sum(v for k, v in self.tensors.items() if not k.startswith("cuda_"))

    def delta(self, before: MemorySnapshot) -> dict[str, int]:
        """Bytes gained since ``before`` (rss and every tensor entry)."""
        out = {k: v - before.tensors.get(k, 0) for k, v in self.tensors.items()}
        if self.rss_bytes is not None and before.rss_bytes is not None:
            out["rss"] = self.rss_bytes - before.rss_bytes
        return out


class MemoryProfiler:
    """Snapshots of process and tensor memory of an engine (or a model and a KV cache)."""

    def __init__(self, engine=None, model: torch.nn.Module | None = None, kv=None) -> None:
        self.model = model if model is not None else getattr(engine, "model", None)
        self.kv = kv if kv is not None else getattr(engine, "kv", None)
        self.snapshots: list[MemorySnapshot] = []

    def measure(self) -> dict[str, int]:
        tensors: dict[str, int] = {}
        if self.kv is not None:
            tensors["kv_pool"] = tensor_bytes(self.kv.k) + tensor_bytes(self.kv.v)
        if self.model is not None:
            tensors["parameters"] = sum(tensor_bytes(p) for p in self.model.parameters())
            tensors["buffers"] = sum(tensor_bytes(b) for b in self.model.buffers())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["cuda_allocated"] = torch.cuda.memory_allocated()
            tensors["cuda_reserved"] = torch.cuda.memory_reserved()
            tensors["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
        return tensors

    def snapshot(self, label: str = "") -> MemorySnapshot:
        snap = MemorySnapshot(label or f"#{len(self.snapshots)}", time.perf_counter(), process_rss(), self.measure())
        self.snapshots.append(snap)
        return snap

    def table(self) -> list[dict]:
        """One row per snapshot, in MiB, for printing or a DataFrame."""
        mib = 1 / 2**20
        return [
            {"label": s.label, "rss_mib": s.rss_bytes * mib if s.rss_bytes is not None else None}
            | {f"{k}_mib": v * mib for k, v in s.tensors.items()}
            for s in self.snapshots
        ]


@dataclass
class PhaseMemory:
    name: str
    before: MemorySnapshot
    after: MemorySnapshot | None = None
    delta: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class DetailedMemoryProfiler(MemoryProfiler):
    """Named snapshots and per-phase deltas: ``with profiler.phase("load"): ...``."""

    def __init__(self, engine=None, model: torch.nn.Module | None = None, kv=None) -> None:
        super().__init__(engine, model, kv)
        self.named: dict[str, MemorySnapshot] = {}
        self.phases: list[PhaseMemory] = []

    def snapshot(self, label: str = "") -> MemorySnapshot:
        snap = super().snapshot(label)
        if label:
            self.named[label] = snap
        return snap

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseMemory]:
        """Snapshot before and after the block; the phase's delta is filled in when it ends (even on error)."""
        record = PhaseMemory(name, self.snapshot(f"{name}:start"))
        self.phases.append(record)
        try:
            yield record
        finally:
            record.after = self.snapshot(f"{name}:end")
            record.delta = record.after.delta(record.before)
            record.seconds = record.after.time - record.before.time

    def delta(self, first: str, second: str) -> dict[str, int]:
        """Bytes gained from snapshot ``first`` to snapshot ``second`` (by name)."""
        for name in (first, second):
            if name not in self.named:
                raise MonitoringError(f"no snapshot named {name!r}; known: {sorted(self.named)}")
        return self.named[second].delta(self.named[first])

    def phase_table(self) -> list[dict]:
        mib = 1 / 2**20
        return [{"phase": p.name, "seconds": p.seconds} | {f"{k}_mib": v * mib for k, v in p.delta.items()}
                for p in self.phases]  # fmt: skip
