"""Leak detection: does memory keep growing step after step?

A serving engine's memory should plateau: the KV pool and the weights are
allocated once, and finished requests give their blocks back. A leak (a plugin
keeping every K/V tensor it sees, a cache that never evicts) shows as growth
that goes on for as long as the engine runs. The detector samples a memory
measure after every step, fits a straight line over the last ``window``
samples, and reports a leak when the slope is above the tolerance and the
line explains the samples well (steady growth, not one jump).

Measures:

* ``"tensors"`` (default): bytes of the distinct tensor storages reachable from
  the engine (its model, KV cache, records, requests and plugins). Exact and
  deterministic, so a test on CPU can rely on it.
* ``"rss"``: the process's resident memory (psutil): sees every allocation, but
  noisy, so the default tolerance is 64 KiB per step.
* ``"tracemalloc"``: Python-heap bytes traced by :mod:`tracemalloc`.
* any ``callable(engine) -> int``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..plugins.base import SchedulerPlugin
from .errors import MonitoringError
from .memory import process_rss, tensor_bytes

if TYPE_CHECKING:
    from ..core.engine import Engine, StepRecord

_ATOMS = (str, bytes, int, float, complex, bool, type(None), types.ModuleType, types.FunctionType, type)
DEFAULT_TOLERANCE = {"tensors": 0.0, "rss": 64 * 1024.0, "tracemalloc": 16 * 1024.0}


def reachable_tensor_bytes(*roots, skip: tuple = ()) -> int:
    """Bytes of the distinct tensor storages reachable from ``roots`` through attributes and containers."""
    seen: set[int] = {id(s) for s in skip}
    storages: dict[tuple, int] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _ATOMS):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[(obj.device, storage.data_ptr())] = tensor_bytes(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s))
    return sum(storages.values())


def _tracemalloc_bytes() -> int:
    import tracemalloc

    if not tracemalloc.is_tracing():
        tracemalloc.start()
    return tracemalloc.get_traced_memory()[0]


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and R^2 of ``ys`` against ``xs`` (R^2 = 1 for a flat, noiseless line)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sxy / sxx if sxx else 0.0
    r2 = (sxy * sxy) / (sxx * syy) if sxx and syy else 1.0
    return slope, r2


@dataclass(frozen=True)
class LeakReport:
    leaking: bool
    slope_bytes_per_step: float
    growth_bytes: int  # last sample minus first, over the window
    r2: float
    samples: int  # samples in the window
    enough_samples: bool

    def __str__(self) -> str:
        verdict = "LEAK" if self.leaking else ("clean" if self.enough_samples else "not enough samples")
        return (
            f"{verdict}: {self.slope_bytes_per_step:,.0f} bytes/step over {self.samples} steps "
            f"(growth {self.growth_bytes:,} bytes, R^2 {self.r2:.2f})"
        )


class MemoryLeakDetector(SchedulerPlugin):
    """Samples memory after every step and says whether it grows without bound."""

    def __init__(
        self,
        window: int = 16,
        measure: str | Callable[[Engine], int] = "tensors",
        tolerance_bytes_per_step: float | None = None,
        min_r2: float = 0.8,
    ) -> None:
        if not isinstance(window, int) or window < 3:
            raise MonitoringError(f"window must be an int >= 3, got {window!r}")
        if isinstance(measure, str) and measure not in DEFAULT_TOLERANCE:
            raise MonitoringError(f"measure must be one of {sorted(DEFAULT_TOLERANCE)} or a callable, got {measure!r}")
        self.window = window
        self.measure = measure
        default = DEFAULT_TOLERANCE.get(measure, 0.0) if isinstance(measure, str) else 0.0
        self.tolerance = default if tolerance_bytes_per_step is None else tolerance_bytes_per_step
        self.min_r2 = min_r2
        self.samples: list[tuple[int, int]] = []  # (step, bytes)

    def sample(self, engine: Engine) -> int:
        if callable(self.measure):
            return int(self.measure(engine))
        if self.measure == "rss":
            rss = process_rss()
            if rss is None:  # pragma: no cover
                raise MonitoringError("measure='rss' needs psutil")
            return rss
        if self.measure == "tracemalloc":
            return _tracemalloc_bytes()
        return reachable_tensor_bytes(engine, skip=(self,))

    def after_step(self, engine: Engine, record: StepRecord) -> None:
        self.samples.append((record.step, self.sample(engine)))

    def report(self) -> LeakReport:
        recent = self.samples[-self.window :]
        if len(recent) < 2:
            return LeakReport(False, 0.0, 0, 1.0, len(recent), False)
        xs = [float(s) for s, _ in recent]
        ys = [float(b) for _, b in recent]
        slope, r2 = linear_fit(xs, ys)
        growth = recent[-1][1] - recent[0][1]
        enough = len(recent) >= self.window
        leaking = enough and slope > self.tolerance and r2 >= self.min_r2 and growth > self.tolerance * len(recent)
        return LeakReport(leaking, slope, growth, r2, len(recent), enough)

    @property
    def is_leaking(self) -> bool:
        return self.report().leaking
