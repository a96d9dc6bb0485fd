"""A simulated clock: the real scheduler and KV bookkeeping, timed as if a real model ran on a real GPU.

One scheduler, two clocks. :func:`simulate` runs the course's own :class:`Engine` (its scheduler, admission, paged
block pool, preemption, all unchanged) with a stand-in model, :class:`ShapeOnlyLM`, that skips the math: it returns
logits of the right shape, all zero, so every request decodes until its ``max_new_tokens``, drawn from the workload.
Time does not come from the wall clock: each step advances the clock by
:func:`~cblab_teach.production.step_time.step_time_from_record` of that very step on the chosen ``ModelShape`` and
``GPUSpec``. The KV pool has the blocks the GPU's memory leaves for KV (:func:`~.memory.max_kv_tokens`), so
admission and preemption happen where they would on that GPU.

Requests arrive as a Poisson process (exponential gaps at ``rate`` per second, as ``vllm bench serve`` sends them
with burstiness 1); one that arrives while a step runs joins at the next step. Per request: TTFT (arrival to first
token), TPOT ((E2E - TTFT) / (tokens - 1), vLLM's definition), E2E (arrival to last token). Goodput counts only the
requests that meet both a TTFT and a TPOT objective, per second (the measure DistServe optimises).

Not timed: the host's work between steps beyond ``Efficiency.launch_s``, and the copies of swap preemption (the
default preempts by recompute, whose re-prefill *is* timed, as the steps that redo it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..core.batch_builder import RaggedBatch
from ..core.config import EngineConfig
from ..core.engine import Engine
from ..core.scheduler import Scheduler
from ..errors import ConfigError
from ..model.config import ModelConfig
from ..model.tiny_lm import TinyLM
from ..workloads import Workload, make_workload
from ._lookup import as_gpu, as_shape
from .gpus import GPUSpec
from .memory import max_kv_tokens
from .models import ModelShape
from .step_time import DEFAULT_EFFICIENCY, Efficiency, step_time_from_record

STAND_IN_VOCAB = 256  # prompts are random ids below this: identical prefixes (and cache hits) stay negligible


class ShapeOnlyLM(TinyLM):
    """A model that does no math: zero logits for every sampled row, so greedy decoding picks token 0 and a
    request runs to its ``max_new_tokens``. Its KV is one layer of one head of width 2: the pool keeps its blocks,
    block tables and free list exact while holding almost no memory."""

    def __init__(self, max_position: int = 1 << 22) -> None:
        config = ModelConfig(
            vocab_size=STAND_IN_VOCAB, hidden_size=2, num_layers=1, num_heads=1, intermediate_size=1,
            max_position=max_position,
        )  # fmt: skip
        super().__init__(config, seed=0)

    @torch.no_grad()
    def forward(self, batch: RaggedBatch, cache, impl="segmented", via_flatten=False, all_logits=False):
        rows = batch.num_tokens if all_logits else len(batch.sample_rows)
        return torch.zeros(rows, self.config.vocab_size)

    def build_batch(self, plan, requests, device) -> RaggedBatch:
        """Only what :meth:`forward` and sampling read, the sampled rows and their owners: no token ids, positions
        or keys (building those over every context is most of a simulated step's cost and changes no decision)."""
        owners = [c.request_id for c in plan.chunks for _ in range(c.num_logits)]
        none = torch.empty(0, dtype=torch.long)
        tokens = torch.empty(plan.used, dtype=torch.long)
        return RaggedBatch([c.request_id for c in plan.chunks], tokens, none, none, none, none, none, none, none,
                           torch.arange(len(owners)), owners)  # fmt: skip


@dataclass
class RequestResult:
    """When one simulated request arrived and got each token (seconds on the simulated clock)."""

    request_id: int
    arrival_s: float
    prompt_len: int
    token_times: list[float] = field(default_factory=list)

    @property
    def output_len(self) -> int:
        return len(self.token_times)

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.token_times[-1] - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first; None for a one-token request."""
        n = self.output_len
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else None

    def meets(self, ttft_slo_s: float, tpot_slo_s: float) -> bool:
        tpot = self.tpot_s
        return self.ttft_s <= ttft_slo_s and (tpot is None or tpot <= tpot_slo_s)


@dataclass(frozen=True)
class SimStep:
    """One engine step on the simulated clock."""

    start_s: float
    seconds: float
    decode_tokens: int
    prefill_tokens: int
    running: int
    waiting: int
    preempted: int


@dataclass
class SimResult:
    """Every request's times and every step of one simulated run."""

    requests: list[RequestResult]
    steps: list[SimStep]

    @property
    def duration_s(self) -> float:
        """From the first arrival to the last token."""
        return max(r.token_times[-1] for r in self.requests) - min(r.arrival_s for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_len for r in self.requests)

    @property
    def throughput_tokens_s(self) -> float:
        return self.output_tokens / self.duration_s

    def goodput(self, ttft_slo_s: float, tpot_slo_s: float) -> float:
        """Requests per second that met both objectives."""
        return sum(r.meets(ttft_slo_s, tpot_slo_s) for r in self.requests) / self.duration_s

    def attainment(self, ttft_slo_s: float, tpot_slo_s: float) -> float:
        """Share of requests that met both objectives."""
        return sum(r.meets(ttft_slo_s, tpot_slo_s) for r in self.requests) / len(self.requests)

    def summary(self, ttft_slo_s: float = 0.5, tpot_slo_s: float = 0.05) -> dict[str, float]:
        """Medians and p90s of TTFT, TPOT and E2E, throughput, goodput and attainment under the objectives."""
        out: dict[str, float] = {"requests": len(self.requests), "steps": len(self.steps)}
        for name in ("ttft_s", "tpot_s", "e2e_s"):
            values = sorted(v for v in (getattr(r, name) for r in self.requests) if v is not None)
            out[f"{name[:-2]}_p50_s"] = statistics.median(values) if values else math.nan
            out[f"{name[:-2]}_p90_s"] = values[min(len(values) - 1, int(0.9 * len(values)))] if values else math.nan
        out["throughput_tokens_s"] = self.throughput_tokens_s
        out["request_throughput_s"] = len(self.requests) / self.duration_s
        out["goodput_requests_s"] = self.goodput(ttft_slo_s, tpot_slo_s)
        out["slo_attainment"] = self.attainment(ttft_slo_s, tpot_slo_s)
        out["preemptions"] = sum(s.preempted for s in self.steps)
        return out


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """Arrival times of ``n`` requests at ``rate`` per second (exponential gaps); ``inf``: all at time 0."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the number of requests must be an int >= 1, got {n!r}")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
        raise ConfigError(f"the request rate must be a number > 0 (inf: all at once), got {rate!r}")
    if math.isinf(rate):
        return [0.0] * n
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, size=n)).tolist()


def sim_engine_config(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    base: EngineConfig | None = None,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    memory_utilization: float = 0.9,
) -> EngineConfig:
    """``base`` (default: a 2048-token budget, 256 running, preemption on) with the KV pool the GPU's memory leaves:
    ``max_kv_tokens`` rounded down to whole blocks."""
    base = base or EngineConfig(max_tokens_per_step=2048, prefill_chunk_size=2048, max_running=256, preemption=True)
    if not isinstance(base, EngineConfig):
        raise ConfigError(f"engine_config must be an EngineConfig, got {base!r}")
    blocks = max_kv_tokens(model, gpu, dtype, kv_dtype, memory_utilization) // base.block_size
    if blocks < 1:
        raise ConfigError(f"{as_shape(model).name} leaves no KV memory on {as_gpu(gpu).name} in {dtype}")
    return replace(base, num_blocks=blocks, kv_layout="paged", device="cpu", speculative=None, keep_records=1)


def check_sim_inputs(workload: Workload, arrivals: Sequence[float]) -> list[float]:
    """The arrival times as a list, once ``workload`` and ``arrivals`` are known to pair up (one finite time >= 0
    per request); a ConfigError naming the bad value otherwise."""
    if not isinstance(workload, Workload):
        raise ConfigError(f"workload must be a cblab_teach.workloads.Workload, got {workload!r}")
    arrivals = list(arrivals)
    if len(arrivals) != len(workload) or not arrivals:
        raise ConfigError(f"need one arrival time per request: {len(workload)} requests, {len(arrivals)} arrivals")
    if any(not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0 for t in arrivals):
        raise ConfigError(f"arrival times must be finite numbers >= 0, got {arrivals[:5]!r}...")
    return arrivals


def sim_step(now: float, seconds: float, record) -> SimStep:
    """The :class:`SimStep` of an engine step that started at ``now`` and took ``seconds``."""
    plan = record.plan
    return SimStep(now, seconds, plan.decode_tokens, plan.prefill_tokens, len(record.running), len(record.waiting),
                   len(plan.preempted))  # fmt: skip


def simulate(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    workload: Workload,
    arrivals: Sequence[float],
    engine_config: EngineConfig | None = None,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
    memory_utilization: float = 0.9,
    scheduler: Callable[[EngineConfig], Scheduler] | None = None,
) -> SimResult:
    """Serve ``workload`` (prompt lengths and ``max_new_tokens``) arriving at ``arrivals`` on the engine's own
    scheduler, each step timed by the step-time model of ``model`` on ``gpu``.

    ``scheduler``: a function of the engine's config returning another :class:`Scheduler` (a subclass with its
    own ``plan``) to run in its place; :mod:`~cblab_teach.production.policies` uses it to compare policies."""
    shape, spec = as_shape(model), as_gpu(gpu)
    arrivals = check_sim_inputs(workload, arrivals)
    config = sim_engine_config(shape, spec, engine_config, dtype, kv_dtype, memory_utilization)
    engine = Engine(ShapeOnlyLM(), config)
    if scheduler is not None:
        engine.scheduler = scheduler(config)
    order = sorted(range(len(workload)), key=lambda i: arrivals[i])
    results: dict[int, RequestResult] = {}
    steps: list[SimStep] = []
    now, nxt = 0.0, 0
    while nxt < len(order) or engine.has_unfinished():
        if not engine.has_unfinished():
            now = max(now, arrivals[order[nxt]])  # idle: jump to the next arrival
        while nxt < len(order) and arrivals[order[nxt]] <= now:
            i = order[nxt]
            rid = engine.add_request(workload.prompts[i], workload.max_new_tokens[i])
            results[rid] = RequestResult(rid, float(arrivals[i]), len(workload.prompts[i]))
            nxt += 1
        record = engine.step()
        seconds = step_time_from_record(record, shape, spec, dtype, kv_dtype, efficiency).seconds
        steps.append(sim_step(now, seconds, record))
        now += seconds
        for rid, tokens in record.new_tokens.items():
            results[rid].token_times.extend([now] * len(tokens))
    return SimResult([results[r] for r in sorted(results)], steps)


def poisson_workload(
    num_requests: int,
    rate: float,
    prompt_len: tuple[int, int] = (128, 1024),
    output_len: tuple[int, int] = (16, 512),
    long_tail: bool = True,
    seed: int = 0,
) -> tuple[Workload, list[float]]:
    """Lengths from :func:`cblab_teach.workloads.make_workload` (uniform prompts; outputs long-tailed by default)
    and Poisson arrivals at ``rate``: synthetic ranges, not a recorded dataset."""
    w = make_workload(num_requests, prompt_len, output_len, vocab_size=STAND_IN_VOCAB, seed=seed, long_tail=long_tail)
    return w, poisson_arrivals(num_requests, rate, seed)


def rate_sweep(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    rates: Sequence[float],
    num_requests: int = 200,
    ttft_slo_s: float = 0.5,
    tpot_slo_s: float = 0.05,
    seed: int = 0,
    **options,
) -> list[dict[str, float]]:
    """One :meth:`SimResult.summary` per request rate (same lengths, same seed): where latency turns up is the knee.
    ``options`` go to :func:`poisson_workload` (``prompt_len``, ``output_len``, ``long_tail``) or to :func:`simulate`."""
    workload_keys = {"prompt_len", "output_len", "long_tail"}
    shaping = {k: v for k, v in options.items() if k in workload_keys}
    rest = {k: v for k, v in options.items() if k not in workload_keys}
    rows = []
    for rate in rates:
        w, arrivals = poisson_workload(num_requests, rate, seed=seed, **shaping)
        result = simulate(model, gpu, w, arrivals, **rest)
        rows.append({"rate": rate, **result.summary(ttft_slo_s, tpot_slo_s)})
    return rows
