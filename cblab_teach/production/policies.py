"""Scheduling policies side by side on the simulated clock: same workload, same arrivals, goodput under objectives.

Each policy is a :class:`~cblab_teach.core.scheduler.Scheduler` subclass with its own ``plan`` (or, for
disaggregation, two engines), run by :func:`~cblab_teach.production.simulate.simulate` with the course's own
engine, KV pool and preemption; only *which tokens run in a step* changes. Each step is timed by ``step_time``.

* ``decode_first`` -- this engine as it is: every decoder gets its token first, then running prefills, then
  newcomers, chunks of at most ``prefill_chunk_size``, all in one step (Sarathi-style mixed batches).
* ``prefill_first`` -- SGLang's default loop: each iteration first tries to build a *prefill* batch (the
  request being chunked, then waiting ones, in the token budget); only when there is none does it run a
  *decode* batch of every running request ("Run prefill first if possible", ``get_next_batch_to_run`` in
  https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/managers/scheduler.py). A step is never
  mixed here; SGLang mixes decodes into a prefill batch only with ``--enable-mixed-chunk`` ("Enabling mixing
  prefill and decode in a batch when using chunked prefill", ``python/sglang/srt/server_args.py``).
* ``vllm_v1`` -- vLLM V1's ``Scheduler.schedule``
  (https://github.com/vllm-project/vllm/blob/main/vllm/v1/core/sched/scheduler.py): one budget
  (``max_num_batched_tokens``), the RUNNING queue first *in its own order* (a request there wants
  ``num_tokens - num_computed_tokens``: one for a decoder, the rest of its prompt for an ongoing prefill),
  each capped by ``long_prefill_token_threshold`` when that is > 0, then the WAITING queue, and no
  newcomer at all in a step that preempted someone. The threshold is 0 (no cap) by default and set to 4 %
  of ``max_model_len`` only when ``max_num_partial_prefills > 1``
  (https://github.com/vllm-project/vllm/blob/main/vllm/config/scheduler.py). The difference from
  ``decode_first``: there, *every* decoder is served before *any* prefill; in vLLM a running prefill that
  sits earlier in the queue takes its tokens before the decoders behind it, so with a tight budget those
  decoders skip a step (``tests/test_policies.py`` shows such a step). Also, newcomers are limited only by
  ``max_running`` (``max_num_seqs``), not by ``min(max_running, budget)``.
* ``static`` -- static batching: a group of at most ``static_batch_size`` waiting requests starts only when
  the previous group has finished; its prompts are prefilled in one step, whatever the budget (as
  :class:`~cblab_teach.core.static_batching.StaticBatchingEngine` does). Rows that finish early leave the
  step here (no padding is timed), which flatters static batching a little.
* ``disaggregated`` -- prefill on one GPU, decode on another (:func:`simulate_disaggregated`): the prefill
  engine's steps carry prompts only, the decode engine's steps decodes only; the K/V of the prompt crosses a
  link of ``link_bytes_s``. TTFT counts the transfer. It uses two GPUs: compare ``goodput_per_gpu_s``.

Not modelled: SGLang's memory reservation for future decodes (``new_token_ratio``), prefix caching,
CUDA graphs, the host's work beyond ``Efficiency.launch_s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.config import EngineConfig
from ..core.engine import Engine
from ..core.kv_transfer import KVBlock, PrefilledRequest
from ..core.request import Request
from ..core.scheduler import BlockLedger, ScheduledChunk, Scheduler, StepPlan, is_decoding
from ..errors import ConfigError
from ..workloads import Workload
from ._lookup import as_gpu, as_shape, int_at_least
from .gpus import GPUSpec
from .memory import kv_bytes_per_token
from .models import ModelShape
from .simulate import (
    RequestResult,
    ShapeOnlyLM,
    SimResult,
    SimStep,
    check_sim_inputs,
    sim_engine_config,
    sim_step,
    simulate,
)
from .step_time import DEFAULT_EFFICIENCY, Efficiency, step_time_from_record

POLICIES = ("decode_first", "prefill_first", "vllm_v1", "static", "disaggregated")

# Link speeds for the K/V hand-over, in bytes per second one way.
# NVLink 4 (H100/H200 SXM): 900 GB/s *bidirectional* per GPU, so 450 GB/s each way
# (https://github.com/scaleway/docs-content/pull/5834: "up to 900 GB/s of bidirectional bandwidth";
# MLPerf Inference v4.1 H200 system description: "18x 4th Gen NVLink, 900GB/s",
# https://raw.githubusercontent.com/mlcommons/inference_results_v4.1/main/closed/NVIDIA/systems/H200-SXM-141GBx8_TRT_MaxQ.json).
NVLINK4_BYTES_S = 450e9
# A 400 Gb/s network port (the same MLPerf system lists "10x 400Gbe Infiniband"): 400e9 bits / 8 = 50 GB/s.
NET_400G_BYTES_S = 400e9 / 8


def check_bandwidth(link_bytes_s: object) -> float:
    """A link speed is a finite number of bytes per second > 0."""
    ok = isinstance(link_bytes_s, (int, float)) and not isinstance(link_bytes_s, bool)
    if not ok or not math.isfinite(link_bytes_s) or link_bytes_s <= 0:
        raise ConfigError(f"link_bytes_s must be a finite number of bytes per second > 0, got {link_bytes_s!r}")
    return float(link_bytes_s)


class _Planner:
    """One step's plan being built: the budget left, and (preemption mode) the blocks it spends.

    The same bookkeeping as :meth:`Scheduler.plan` (a :class:`BlockLedger` that preempts the newest request when
    the pool runs out), so that policies differ only in the order and size of the chunks they ask for."""

    def __init__(self, sched: Scheduler, running: Sequence[Request], kv, budget: int, preemption: bool) -> None:
        self.sched, self.kv = sched, kv
        self.plan = StepPlan(budget=budget)
        self.left = budget
        self.ledger = BlockLedger(kv, running, sched.order_key) if preemption else None
        self.reserved: list[int] = []
        self.n_running = sum(1 + len(r.forks) for r in running)

    def gone(self, r: Request) -> bool:
        return self.ledger is not None and r in self.ledger.preempted

    def run(self, r: Request, want: int) -> bool:
        """Schedule up to ``want`` tokens of running request ``r`` (fewer if the budget is short)."""
        length = min(want, self.left, r.num_pending)
        if length < 1 or self.gone(r):
            return False
        if self.ledger is not None:
            ok, refund = self.ledger.take(r, r.num_computed + length, self.plan)
            self.left += refund
            if not ok:
                return False
        kind = "decode" if is_decoding(r) else "prefill"
        end = r.num_computed + length
        self.plan.chunks.append(ScheduledChunk(r.request_id, r.num_computed, length, kind, end == r.num_tokens))
        self.left -= length
        return True

    def admit(self, r: Request, want: int) -> bool:
        """Admit waiting request ``r`` with a first chunk of up to ``want`` tokens, if its KV fits."""
        start = r.num_computed  # > 0 only for a request preempted by swap, which resumes where it stopped
        length = min(want, self.left, r.num_tokens - start)
        if length < 1:
            return False
        if self.ledger is not None:
            if not self.ledger.admit(self.kv.blocks_for(start + length)):
                return False
        elif self.kv is not None:
            need = [r.max_total_tokens] * r.group_size
            if not self.kv.fits([*self.reserved, *need]):
                return False
            self.reserved.extend(need)
        self.plan.admitted.append(r.request_id)
        end = start + length
        self.plan.chunks.append(ScheduledChunk(r.request_id, start, length, "prefill", end == r.num_tokens))
        self.left -= length
        self.n_running += r.group_size
        return True

    def done(self) -> StepPlan:
        if self.ledger is not None:
            self.plan.preempted = [v.request_id for v in self.ledger.preempted]
        self.plan.chunks.sort(key=lambda c: c.kind != "decode")  # batch layout only: decodes first, as the core
        return self.plan


class PrefillFirstScheduler(Scheduler):
    """SGLang's default: a prefill-only step whenever a prompt can make progress, else a decode-only step.

    SGLang builds its prefill batch with a ``PrefillAdder`` given ``max_prefill_tokens`` and
    ``chunked_prefill_size``, and keeps at most one request being chunked (``self.chunked_req``), which goes
    first next time. Here the budget plays both parts; with ``prefill_chunk_size`` equal to the budget (the
    simulator's default) a prompt is cut only where the budget runs out, so at most one is left half done."""

    def plan(self, running, waiting, kv=None, budget=None, preemption=False, drafts=None) -> StepPlan:
        budget = self.max_tokens_per_step if budget is None else budget
        p = _Planner(self, running, kv, budget, preemption)
        for r in sorted((r for r in running if not is_decoding(r)), key=self.order_key):
            p.run(r, self.prefill_chunk_size)  # the request being chunked goes first
        for r in sorted(waiting, key=self.order_key):
            if p.left == 0 or p.n_running + r.group_size > self.max_running:
                break
            if not p.admit(r, self.prefill_chunk_size):
                break
        if p.plan.chunks:
            return p.done()
        p = _Planner(self, running, kv, budget, preemption)  # nothing to prefill: decode every running request
        for r in sorted((r for r in running if is_decoding(r)), key=lambda r: (r.last_scheduled_step, r.arrival)):
            p.run(r, 1)
        return p.done()


class VllmV1Scheduler(Scheduler):
    """vLLM V1: the running queue in its order, then the waiting queue, one budget, a per-request prompt cap."""

    def __init__(self, *args, long_prefill_token_threshold: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.long_prefill_token_threshold = int_at_least(
            "long_prefill_token_threshold", long_prefill_token_threshold, 0
        )

    def cap(self, pending: int) -> int:
        t = self.long_prefill_token_threshold
        return min(pending, t) if 0 < t else pending

    def plan(self, running, waiting, kv=None, budget=None, preemption=False, drafts=None) -> StepPlan:
        budget = self.max_tokens_per_step if budget is None else budget
        p = _Planner(self, running, kv, budget, preemption)
        for r in running:  # the engine appends admitted requests, so this is the running queue's order
            if p.left == 0:
                break
            p.run(r, self.cap(r.num_pending))
        if p.ledger is None or not p.ledger.preempted:  # vLLM admits nobody in a step that preempted
            for r in sorted(waiting, key=self.order_key):
                if p.left == 0 or p.n_running + r.group_size > self.max_running:
                    break
                if not p.admit(r, self.cap(r.num_tokens - r.num_computed)):
                    break
        return p.done()


class StaticScheduler(Scheduler):
    """Static batching: a group of at most ``batch_size`` starts only when nothing runs; nobody joins it."""

    def __init__(self, *args, batch_size: int = 32, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size = int_at_least("static_batch_size", batch_size, 1)

    def plan(self, running, waiting, kv=None, budget=None, preemption=False, drafts=None) -> StepPlan:
        if running:  # the group runs on: every member, whole (a re-prefill after preemption in one go)
            p = _Planner(self, running, kv, sum(r.num_pending for r in running), preemption)
            for r in running:
                p.run(r, r.num_pending)
            return p.done()
        group = sorted(waiting, key=self.order_key)[: min(self.batch_size, self.max_running)]
        p = _Planner(self, running, kv, sum(r.num_tokens - r.num_computed for r in group), preemption)
        for r in group:  # the whole padded batch is one prefill step, whatever the engine's budget
            if not p.admit(r, r.num_tokens - r.num_computed):
                break
        return p.done()


def policy_scheduler(
    policy: str, long_prefill_token_threshold: int = 0, static_batch_size: int = 32
) -> Callable[[EngineConfig], Scheduler] | None:
    """The ``scheduler`` argument of :func:`simulate` for a one-engine policy (None: the engine's own)."""
    int_at_least("long_prefill_token_threshold", long_prefill_token_threshold, 0)
    int_at_least("static_batch_size", static_batch_size, 1)

    def args(c: EngineConfig) -> tuple:
        return c.max_tokens_per_step, c.prefill_chunk_size, c.max_running, c.policy

    if policy == "decode_first":
        return None
    if policy == "prefill_first":
        return lambda c: PrefillFirstScheduler(*args(c))
    if policy == "vllm_v1":
        return lambda c: VllmV1Scheduler(*args(c), long_prefill_token_threshold=long_prefill_token_threshold)
    if policy == "static":
        return lambda c: StaticScheduler(*args(c), batch_size=static_batch_size)
    raise ConfigError(f"policy must be one of {POLICIES[:-1]} here (disaggregated has two engines), got {policy!r}")


def transfer_seconds(model: ModelShape | str, tokens: int, link_bytes_s: float, kv_dtype: str = "bf16") -> float:
    """Seconds to move the K/V of ``tokens`` tokens (every layer) over a link of ``link_bytes_s``."""
    return tokens * kv_bytes_per_token(model, kv_dtype) / check_bandwidth(link_bytes_s)


@dataclass
class DisaggregatedResult(SimResult):
    """A disaggregated run: ``steps`` holds both GPUs' steps (by start time); each GPU's alone as well."""

    prefill_steps: list[SimStep] | None = None
    decode_steps: list[SimStep] | None = None
    transfer_s: list[float] | None = None  # per request, in request order: seconds its K/V spent on the link


def _hand_over(engine: Engine, request_id: int) -> PrefilledRequest:
    """What ``export_prefilled`` returns, with the stand-in model's (meaningless) K/V as one zero block: the same
    hand-over to ``import_prefilled``, without copying block by block what no step will read."""
    req = engine.remove_running(request_id)
    cfg = engine.model.config
    k = torch.zeros(cfg.num_layers, req.num_computed, cfg.kv_heads, cfg.head_dim, dtype=engine.kv.k.dtype)
    return PrefilledRequest(
        request_id=req.request_id, prompt_ids=list(req.prompt_ids), output_ids=list(req.output_ids),
        max_new_tokens=req.max_new_tokens, sampling=req.sampling, eos_token_id=req.eos_token_id,
        priority=req.priority, adapter=req.adapter, arrival_time=req.arrival_time,
        token_times=list(req.token_times), blocks=[KVBlock(0, k, k.clone())],
    )  # fmt: skip


def simulate_disaggregated(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    workload: Workload,
    arrivals: Sequence[float],
    link_bytes_s: float = NVLINK4_BYTES_S,
    stream_layers: bool = True,
    engine_config: EngineConfig | None = None,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
    memory_utilization: float = 0.9,
) -> DisaggregatedResult:
    """Prefill on one ``gpu``, decode on another, each an engine on its own clock, in one event loop.

    A request is prefilled (chunked, in the prefill engine's budget) until its first token, then its prompt's
    K/V (``prompt_len x kv_bytes_per_token``) crosses one shared link, one request after another. Whole: the
    transfer starts when the prefill ends. Streamed layer by layer (``stream_layers``): it may start when the
    prefill starts, but the last layer's share (``1 / layers`` of it) cannot leave before the prefill ends,
    so it ends at ``max(prefill_end + T / layers, link_free_or_prefill_start + T)``. The first token counts
    as delivered when the transfer is done; the request then decodes on the decode engine, whose steps carry
    decodes only (a request the decode GPU preempts by recompute is re-prefilled there, as its own engine would)."""
    shape, spec = as_shape(model), as_gpu(gpu)
    arrivals = check_sim_inputs(workload, arrivals)
    bandwidth = check_bandwidth(link_bytes_s)
    if not isinstance(stream_layers, bool):
        raise ConfigError(f"stream_layers must be True or False, got {stream_layers!r}")
    config = sim_engine_config(shape, spec, engine_config, dtype, kv_dtype, memory_utilization)
    pre, dec = Engine(ShapeOnlyLM(), config), Engine(ShapeOnlyLM(), config)
    per_token = kv_bytes_per_token(shape, kv_dtype or dtype)

    def timed(engine: Engine, now: float, into: list[SimStep]):
        record = engine.step()
        seconds = step_time_from_record(record, shape, spec, dtype, kv_dtype, efficiency).seconds
        into.append(sim_step(now, seconds, record))
        return record, now + seconds

    order = sorted(range(len(workload)), key=lambda i: arrivals[i])
    results: dict[int, RequestResult] = {}
    began: dict[int, float] = {}  # request id -> start of its first prefill step
    transfer: dict[int, float] = {}
    in_flight: list[tuple[float, int, object]] = []  # (done, request id, hand-over), by done time
    pre_steps: list[SimStep] = []
    dec_steps: list[SimStep] = []
    t_pre = t_dec = link_free = 0.0
    nxt = 0
    while nxt < len(order) or pre.has_unfinished() or in_flight or dec.has_unfinished():
        next_pre = t_pre if pre.has_unfinished() else arrivals[order[nxt]] if nxt < len(order) else math.inf
        next_dec = t_dec if dec.has_unfinished() else max(t_dec, in_flight[0][0]) if in_flight else math.inf
        if next_pre <= next_dec:
            t_pre = max(t_pre, next_pre)
            while nxt < len(order) and arrivals[order[nxt]] <= t_pre:
                i = order[nxt]
                rid = pre.add_request(workload.prompts[i], workload.max_new_tokens[i])
                results[rid] = RequestResult(rid, float(arrivals[i]), len(workload.prompts[i]))
                nxt += 1
            start = t_pre
            record, t_pre = timed(pre, t_pre, pre_steps)
            for c in record.plan.chunks:
                began.setdefault(c.request_id, start)
            for rid, tokens in record.new_tokens.items():  # a first token: hand the request over
                req = pre.request(rid)
                if req.is_finished:  # max_new_tokens == 1: nothing to decode, nothing to move
                    results[rid].token_times.extend([t_pre] * len(tokens))
                    continue
                seconds = req.num_computed * per_token / bandwidth
                if stream_layers:
                    done = max(t_pre + seconds / shape.layers, max(link_free, began[rid]) + seconds)
                else:
                    done = max(link_free, t_pre) + seconds
                link_free, transfer[rid] = done, seconds
                results[rid].token_times.extend([done] * len(tokens))
                in_flight.append((done, rid, _hand_over(pre, rid)))
            in_flight.sort(key=lambda x: (x[0], x[1]))
        else:
            t_dec = max(t_dec, next_dec)
            while in_flight and in_flight[0][0] <= t_dec and dec.can_import(in_flight[0][2]):
                dec.import_prefilled(in_flight.pop(0)[2])
            if not dec.has_unfinished():  # the pool is full and nothing runs: cannot happen with a sane pool
                raise ConfigError(f"the decode GPU cannot hold request {in_flight[0][1]}'s K/V")
            record, t_dec = timed(dec, t_dec, dec_steps)
            for rid, tokens in record.new_tokens.items():
                results[rid].token_times.extend([t_dec] * len(tokens))
    steps = sorted(pre_steps + dec_steps, key=lambda s: s.start_s)
    ids = sorted(results)
    return DisaggregatedResult([results[r] for r in ids], steps, pre_steps, dec_steps,
                               [transfer.get(r, 0.0) for r in ids])  # fmt: skip


def run_policy(
    policy: str,
    model: ModelShape | str,
    gpu: GPUSpec | str,
    workload: Workload,
    arrivals: Sequence[float],
    engine_config: EngineConfig | None = None,
    long_prefill_token_threshold: int = 0,
    static_batch_size: int = 32,
    link_bytes_s: float = NVLINK4_BYTES_S,
    stream_layers: bool = True,
    **options,
) -> SimResult:
    """One policy's run; ``options`` (``dtype``, ``kv_dtype``, ``efficiency``, ``memory_utilization``) go to
    :func:`simulate` or :func:`simulate_disaggregated`."""
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
    if policy == "disaggregated":
        return simulate_disaggregated(model, gpu, workload, arrivals, link_bytes_s, stream_layers, engine_config,
                                      **options)  # fmt: skip
    check_bandwidth(link_bytes_s)  # a typo fails whichever policies are asked for
    scheduler = policy_scheduler(policy, long_prefill_token_threshold, static_batch_size)
    return simulate(model, gpu, workload, arrivals, engine_config, scheduler=scheduler, **options)


def compare_policies(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    workload: Workload,
    arrivals: Sequence[float],
    policies: Sequence[str] = POLICIES,
    ttft_slo_s: float = 0.5,
    tpot_slo_s: float = 0.05,
    **options,
) -> list[dict[str, float | str]]:
    """One :meth:`SimResult.summary` row per policy, same workload and arrivals, plus ``policy``, ``gpus`` and
    ``goodput_per_gpu_s`` (disaggregation uses two GPUs). ``options`` go to :func:`run_policy`."""
    if isinstance(policies, str) or not policies:
        raise ConfigError(f"policies must be a non-empty list of names from {POLICIES}, got {policies!r}")
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {p!r}")
    for name, v in (("ttft_slo_s", ttft_slo_s), ("tpot_slo_s", tpot_slo_s)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ConfigError(f"{name} must be a number > 0, got {v!r}")
    rows = []
    for p in policies:
        result = run_policy(p, model, gpu, workload, arrivals, **options)
        gpus = 2 if p == "disaggregated" else 1
        row = {"policy": p, "gpus": gpus, **result.summary(ttft_slo_s, tpot_slo_s)}
        row["goodput_per_gpu_s"] = row["goodput_requests_s"] / gpus
        rows.append(row)
    return rows
