"""Serving metrics from the engine's own records: per step, per request, and run summaries.

Definitions (as vLLM documents them), for a request with ``N`` output tokens:

* TTFT  -- time to first token: first token time - arrival time;
* E2E   -- end-to-end latency: last token time - arrival time;
* TPOT  -- time per output token after the first: ``(E2E - TTFT) / (N - 1)``;
* ITL   -- inter-token latencies: the gaps between consecutive tokens.

Everything is read from timestamps the engine already keeps
(``Request.arrival_time``, ``Request.token_times``, ``StepRecord``), so the
collector adds no timing of its own and also works after the fact
(:meth:`MetricsCollector.from_engine`) and on the static baseline
(:meth:`MetricsCollector.from_static`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..plugins.base import SchedulerPlugin
from .errors import MonitoringError

if TYPE_CHECKING:
    from ..core.engine import Engine, StepRecord
    from ..core.request import Request


@dataclass(frozen=True)
class StepMetrics:
    step: int
    decode_tokens: int
    prefill_tokens: int
    duration_s: float
    kv_used_blocks: int  # paged: blocks taken from the pool; dense: reserved slots (a "block" of one slot)
    kv_bytes: int  # bytes of the pool taken by requests (reserved), at the end of the step
    memory_bytes: int | None  # process RSS after the step, when sampled (None after the fact)


@dataclass(frozen=True)
class RequestMetrics:
    request_id: int
    ttft_s: float | None
    tpot_s: float | None  # None with fewer than two output tokens
    itl_s: list[float]
    e2e_s: float | None
    num_output_tokens: int
    ttft_steps: int | None  # steps from arrival to the first token, that step included
    arrival_time: float = 0.0
    priority: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def request_metrics_from_times(
    request_id: int,
    arrival_time: float,
    token_times: Sequence[float],
    arrival_step: int | None = None,
    first_token_step: int | None = None,
    priority: int = 0,
) -> RequestMetrics:
    n = len(token_times)
    if n == 0:
        return RequestMetrics(request_id, None, None, [], None, 0, None, arrival_time, priority)
    ttft = token_times[0] - arrival_time
    e2e = token_times[-1] - arrival_time
    tpot = (e2e - ttft) / (n - 1) if n > 1 else None
    itl = [b - a for a, b in zip(token_times, token_times[1:])]
    steps = None
    if arrival_step is not None and first_token_step is not None:
        steps = first_token_step - arrival_step + 1
    return RequestMetrics(request_id, ttft, tpot, itl, e2e, n, steps, arrival_time, priority)


class RunSummary(dict):
    """``MetricsCollector.summary()``: a plain ``dict`` of numbers that prints as a short table.

    Keys as before (``summary()["ttft_p50_s"]``); only the printed form changed: a few lines a person can read.
    """

    LATENCIES = (("TTFT", "ttft"), ("TPOT", "tpot"), ("E2E", "e2e"), ("ITL", "itl"))

    def __repr__(self) -> str:
        def ms(key: str) -> str:
            value = self.get(key, math.nan)
            return f"{value * 1e3:9.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else f"{'-':>9}"

        def num(key: str, fmt: str = ".1f") -> str:
            value = self.get(key, math.nan)
            return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "-"

        lines = [
            f"{self.get('requests', 0)} requests, {self.get('steps', 0)} steps, {self.get('output_tokens', 0)} output "
            f"tokens ({num('tokens_per_step', '.2f')} per step), {num('wall_s', '.3f')} s wall",
            f"throughput: {num('throughput_tok_s')} output tok/s, {num('computed_tok_s')} computed tok/s",
            f"{'latency (ms)':<12}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}",
        ]
        for label, key in self.LATENCIES:
            lines.append(f"{label:<12}" + "".join(ms(f"{key}_{q}_s") for q in ("mean", "p50", "p90", "p99")))
        lines.append(f"TTFT in steps: mean {num('ttft_steps_mean')}")
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's display
        printer.text(repr(self))


class MetricsCollector(SchedulerPlugin):
    """Collects step and request metrics while the engine runs (add it as a plugin)."""

    def __init__(self, sample_memory: bool = True) -> None:
        self.sample_memory = sample_memory
        self.records: list[StepRecord] = []
        self.block_size: int | None = None
        self.memory: dict[int, int] = {}  # step -> RSS bytes
        self.requests: dict[int, Request] = {}
        self.first_token_step: dict[int, int] = {}
        self.token_times: dict[int, list[float]] = {}  # only for runs without Request objects (static)
        self.arrival_times: dict[int, float] = {}

    # -- plugin hooks ---------------------------------------------------------------
    def after_step(self, engine: Engine, record: StepRecord) -> None:
        self.block_size = getattr(engine.kv, "block_size", None)
        self.records.append(record)
        for rid in record.sampled:
            self.first_token_step.setdefault(rid, record.step)
            self.requests.setdefault(rid, engine.requests[rid])
        if self.sample_memory:
            from .memory import process_rss

            rss = process_rss()
            if rss is not None:
                self.memory[record.step] = rss

    def on_request_completion(self, engine: Engine, request: Request) -> None:
        self.requests[request.request_id] = request

    # -- other sources --------------------------------------------------------------
    @classmethod
    def from_engine(cls, engine: Engine) -> MetricsCollector:
        """Metrics of a run that had no collector attached (no memory samples)."""
        c = cls(sample_memory=False)
        c.block_size = getattr(engine.kv, "block_size", None)
        c.records = list(engine.records)
        for record in c.records:
            for rid in record.sampled:
                c.first_token_step.setdefault(rid, record.step)
        c.requests = {rid: r for rid, r in engine.requests.items() if r.token_times}
        return c

    @classmethod
    def from_static(cls, static) -> MetricsCollector:
        """Metrics of a :class:`StaticBatchingEngine` run: every request arrives at ``static.arrival_time``,
        a token exists when its step ends."""
        c = cls(sample_memory=False)
        c.records = list(static.records)
        for record in c.records:
            end = record.start_time + record.duration_s
            for rid in record.sampled:
                c.first_token_step.setdefault(rid, record.step)
                c.token_times.setdefault(rid, []).append(end)
                c.arrival_times[rid] = static.arrival_time
        return c

    # -- results ----------------------------------------------------------------------
    def step_metrics(self) -> list[StepMetrics]:
        out = []
        for r in self.records:
            blocks = r.kv.reserved_slots // self.block_size if self.block_size else r.kv.reserved_slots
            out.append(
                StepMetrics(
                    step=r.step,
                    decode_tokens=r.plan.decode_tokens,
                    prefill_tokens=r.plan.prefill_tokens,
                    duration_s=r.duration_s,
                    kv_used_blocks=blocks,
                    kv_bytes=r.kv.reserved_bytes,
                    memory_bytes=self.memory.get(r.step),
                )
            )
        return out

    def request_metrics(self) -> list[RequestMetrics]:
        out = []
        for rid, req in sorted(self.requests.items()):
            out.append(
                request_metrics_from_times(
                    rid,
                    req.arrival_time,
                    req.token_times,
                    req.arrival_step,
                    self.first_token_step.get(rid),
                    req.priority,
                )  # fmt: skip
            )
        for rid, times in sorted(self.token_times.items()):
            out.append(request_metrics_from_times(rid, self.arrival_times[rid], times, 0, self.first_token_step[rid]))
        return out

    def summary(self) -> RunSummary:
        """Throughput and latency percentiles of the whole run (seconds; NaN where undefined); prints as a table."""
        reqs = self.request_metrics()
        steps = self.step_metrics()
        output_tokens = sum(r.num_output_tokens for r in reqs)
        computed = sum(s.decode_tokens + s.prefill_tokens for s in steps)
        if self.records:
            start = min(r.start_time for r in self.records)
            end = max(r.start_time + r.duration_s for r in self.records)
            wall = end - start
        else:
            wall = 0.0
        ttft = [r.ttft_s for r in reqs if r.ttft_s is not None]
        tpot = [r.tpot_s for r in reqs if r.tpot_s is not None]
        e2e = [r.e2e_s for r in reqs if r.e2e_s is not None]
        itl = [x for r in reqs for x in r.itl_s]
        out = {
            "requests": len(reqs),
            "steps": len(steps),
            "output_tokens": output_tokens,
            "computed_tokens": computed,
            "wall_s": wall,
            "throughput_tok_s": output_tokens / wall if wall > 0 else math.nan,
            "computed_tok_s": computed / wall if wall > 0 else math.nan,
            "tokens_per_step": output_tokens / len(steps) if steps else math.nan,
        }
        for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e), ("itl", itl)):
            out[f"{name}_mean_s"] = sum(values) / len(values) if values else math.nan
            for q in (50, 90, 99):
                out[f"{name}_p{q}_s"] = percentile(values, q)
        ttft_steps = [r.ttft_steps for r in reqs if r.ttft_steps is not None]
        out["ttft_steps_mean"] = sum(ttft_steps) / len(ttft_steps) if ttft_steps else math.nan
        return RunSummary(out)

    def compare(self, other) -> dict[str, dict[str, float]]:
        """This run's summary next to another's (a collector, an Engine or a StaticBatchingEngine).

        Returns ``{"this": ..., "other": ..., "ratio": this / other}`` per summary key.
        """
        other = as_collector(other)
        a, b = self.summary(), other.summary()
        ratio = {k: (a[k] / b[k] if b[k] not in (0, 0.0) and not math.isnan(b[k]) else math.nan) for k in a}
        return {"this": a, "other": b, "ratio": ratio}


def as_collector(source) -> MetricsCollector:
    if isinstance(source, MetricsCollector):
        return source
    if hasattr(source, "requests") and hasattr(source, "records"):
        return MetricsCollector.from_engine(source)
    if hasattr(source, "arrival_time") and hasattr(source, "records"):
        return MetricsCollector.from_static(source)
    raise MonitoringError(
        f"cannot read metrics from {source!r}: give a MetricsCollector, Engine or StaticBatchingEngine"
    )
