"""Does the step-time model predict this CPU? Measured peak and bandwidth in, the engine's own step times out.

1. Micro-benchmarks measure this CPU (one torch thread): the FLOP/s of the model's float32 linear layers at a
   decode batch's rows, of a decode attention as the engine runs it (pool gather + SDPA), and the bandwidth of a
   tensor copy (bytes read plus bytes written) the size of the model's weights.
2. Those two numbers become a :class:`GPUSpec` for "this CPU" (``fp32_tflops`` from the matmul).
3. The host's cost (``Efficiency.launch_s`` per step and ``per_request_s`` per request: Python, dispatch,
   scheduling, sampling) is calibrated on separate decode-only runs of 1 and of 16 requests: the median of each
   run's step times less the roofline's prediction, a straight line through the two.
4. The engine serves a mixed workload (chunked prefills and decodes together) on the benchmark model; every step's
   time is compared with ``step_time_from_record`` on the same spec. Matmul and bandwidth efficiencies are 1 (the
   measured rates are what this CPU reaches, not a spec sheet); attention's is its measured rate over the matmul's.

Every time is CPU time of the one thread torch runs on (``time.thread_time``), the fastest of a few identical runs
per step: on a shared machine wall time also counts the moments the OS gave the core to another process.
Reported: the median and worst relative error per step, ``|predicted - measured| / measured``, and the p90.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from cblab_teach import Engine, EngineConfig
from cblab_teach.production import Efficiency, GPUSpec, engine_model_shape, step_time_from_record
from cblab_teach.workloads import make_workload

from .common import VOCAB, bench_model, model_config


def sizes(quick: bool) -> dict:
    if quick:
        return dict(
            requests=4, prompt_len=(8, 24), new_tokens=(2, 6), budget=32, chunk=16, repeats=2, calib=4, rows=4, runs=2
        )
    return dict(
        requests=48,
        prompt_len=(16, 160),
        new_tokens=(8, 64),
        budget=192,
        chunk=64,
        repeats=15,
        calib=40,
        rows=32,
        runs=3,
    )


def _fastest_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls in CPU time of this thread (see :func:`serve`)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return min(times)


def matmul_flops(n: int, k: int, m: int, repeats: int) -> float:
    """FLOP/s of a float32 linear layer, ``[n, k]`` rows through a ``[m, k]`` weight (2 n k m FLOPs)."""
    x, weight = torch.randn(n, k), torch.randn(m, k)
    return 2 * n * k * m / _fastest_seconds(lambda: F.linear(x, weight), repeats)


def copy_bandwidth(num_bytes: int, repeats: int) -> float:
    """Bytes per second a tensor copy moves (each byte read once and written once)."""
    src = torch.randn(max(1, num_bytes // 4))
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _fastest_seconds(lambda: dst.copy_(src), repeats)


def attention_flops(batch: int, keys: int, heads: int, kv_heads: int, head_dim: int, repeats: int) -> float:
    """FLOP/s of a decode attention as the engine runs it (``attention/fast.py``): keys and values gathered from a
    pool by slot, then SDPA with an additive mask (4 H d FLOPs per key; every key counted as used)."""
    pool_k, pool_v = torch.randn(2, batch * keys * 2, kv_heads, head_dim)
    slots = torch.randperm(pool_k.shape[0])[: batch * keys]
    q = torch.randn(batch, heads, 1, head_dim)
    mask = torch.zeros(batch, 1, 1, keys)

    def attend():
        k = pool_k.index_select(0, slots).view(batch, keys, kv_heads, head_dim).transpose(1, 2)
        v = pool_v.index_select(0, slots).view(batch, keys, kv_heads, head_dim).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    return 4 * heads * head_dim * batch * keys / _fastest_seconds(attend, repeats)


def measure_cpu(cfg, weight_bytes: int, rows: int, repeats: int) -> dict:
    """Matmul FLOP/s at the model's linear shapes (``rows`` tokens), decode attention FLOP/s, weights-sized copy."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes = [(rows, h, i), (rows, i, h), (rows, h, h)]
    return {
        "matmul_gflops": statistics.median(matmul_flops(n, k, m, repeats) for n, k, m in shapes) / 1e9,
        "attention_gflops": attention_flops(rows, 128, cfg.num_heads, cfg.kv_heads, cfg.head_dim, repeats) / 1e9,
        "copy_gbs": copy_bandwidth(weight_bytes, repeats) / 1e9,
    }


def cpu_spec(measured: dict) -> tuple[GPUSpec, Efficiency]:
    """This CPU as a GPUSpec (its matmul rate as the fp32 peak) and attention's measured share of that rate."""
    flops = measured["matmul_gflops"] / 1e3
    spec = GPUSpec(
        "this CPU", memory_gib=1.0, bandwidth_gbs=measured["copy_gbs"], bf16_tflops=flops, fp8_tflops=None,
        int8_tops=flops, fp32_tflops=flops, source="measured by benchmarks/bench_step_time.py",
        checked_via="matmul, attention and copy micro-benchmarks", note="float32; weights-sized copy",
    )  # fmt: skip
    return spec, Efficiency(1.0, min(1.0, measured["attention_gflops"] / measured["matmul_gflops"]), 1.0, 0.0)


def serve(model, workload, config: EngineConfig) -> tuple[list, list[float]]:
    """Every step's record and its CPU time on this thread. On a shared machine wall time also counts the time
    the OS gave the core to someone else; CPU time does not (torch runs on this one thread here)."""
    engine = Engine(model, config)
    for p, n in zip(workload.prompts, workload.max_new_tokens):
        engine.add_request(p, n)
    records, cpu = [], []
    while engine.has_unfinished():
        start = time.thread_time()
        records.append(engine.step())
        cpu.append(time.thread_time() - start)
    return records, cpu


def serve_fastest(model, workload, config: EngineConfig, runs: int) -> tuple[list, list[float]]:
    """The records of one run and, per step, the fastest CPU time over ``runs`` identical runs (greedy and seeded:
    every run plans the very same steps, checked here)."""
    runs_done = [serve(model, workload, config) for _ in range(runs)]
    first = runs_done[0][0]
    for other, _ in runs_done[1:]:
        if [r.plan.chunks for r in other] != [r.plan.chunks for r in first]:
            raise RuntimeError("two runs of the same workload planned different steps")
    return first, [min(cpu[i] for _, cpu in runs_done) for i in range(len(first))]


def calibrate_host(model, shape, spec, efficiency, steps: int, runs: int) -> tuple[float, float]:
    """The host's fixed cost per step and per request, from decode-only runs of 1 and of 16 requests (not the
    workload checked below): the median of measured minus predicted at each size, a line through the two."""
    residuals = []
    for n in (1, 16):
        w = make_workload(n, (8, 8), (steps, steps), vocab_size=VOCAB, seed=11)
        config = EngineConfig(max_tokens_per_step=64, max_running=n)
        serve(model, w, config)  # warm-up
        records, fastest = serve_fastest(model, w, config, runs)
        residuals.append(statistics.median(
            t - step_time_from_record(r, shape, spec, "fp32", efficiency=efficiency).seconds
            for r, t in zip(records, fastest) if r.plan.prefill_tokens == 0 and r.plan.decode_tokens == n
        ))  # fmt: skip
    per_request = max(0.0, (residuals[1] - residuals[0]) / 15)
    return max(0.0, residuals[0] - per_request), per_request


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    cfg = model_config(quick)
    model = bench_model(quick)
    shape = engine_model_shape(cfg, "benchmark model")
    w = make_workload(s["requests"], s["prompt_len"], s["new_tokens"], vocab_size=VOCAB, seed=5)
    config = EngineConfig(max_tokens_per_step=s["budget"], prefill_chunk_size=s["chunk"], max_running=s["requests"])
    serve(model, w, config)  # warm-up
    # the machine's speed drifts (it is shared): measure it just before and just after the runs
    before = measure_cpu(cfg, 4 * shape.matmul_params, s["rows"], s["repeats"])
    records, actual = serve_fastest(model, w, config, s["runs"])
    after = measure_cpu(cfg, 4 * shape.matmul_params, s["rows"], s["repeats"])
    measured = {k: max(before[k], after[k]) for k in before}  # the fastest seen, as the step times are
    spec, efficiency = cpu_spec(measured)
    launch, per_request = calibrate_host(model, shape, spec, efficiency, s["calib"], s["runs"])
    efficiency = dataclasses.replace(efficiency, launch_s=launch, per_request_s=per_request)
    predicted = [step_time_from_record(r, shape, spec, "fp32", efficiency=efficiency).seconds for r in records]
    errors = sorted(abs(p - a) / a for p, a in zip(predicted, actual))
    p90 = errors[min(len(errors) - 1, int(0.9 * len(errors)))]
    kinds = ["mixed" if r.plan.prefill_tokens and r.plan.decode_tokens else
             "prefill" if r.plan.prefill_tokens else "decode" for r in records]  # fmt: skip
    by_kind = {}
    for kind in ("decode", "prefill", "mixed"):
        errs = [abs(p - a) / a for p, a, k in zip(predicted, actual, kinds) if k == kind]
        if errs:
            by_kind[kind] = (len(errs), statistics.median(errs))
    metrics = {
        **measured,
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in after.items()},
        "attention_efficiency": efficiency.attention,
        "launch_ms": 1e3 * launch,
        "per_request_ms": 1e3 * per_request,
        "steps": len(records),
        "median_rel_error": statistics.median(errors),
        "p90_rel_error": p90,
        "worst_rel_error": errors[-1],
        "measured_total_s": sum(actual),
        "predicted_total_s": sum(predicted),
        **{f"{k}_median_rel_error": v for k, (_, v) in by_kind.items()},
    }
    table = [
        {"steps": kind, "count": n, "median relative error": f"{err:.1%}"} for kind, (n, err) in by_kind.items()
    ] + [{"steps": "all", "count": len(records), "median relative error": f"{metrics['median_rel_error']:.1%}"}]
    fig = go.Figure()
    fig.add_scatter(x=[1e3 * a for a in actual], y=[1e3 * p for p in predicted], mode="markers", text=kinds,
                    name="steps")  # fmt: skip
    top = 1e3 * max(actual + predicted)
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", name="predicted = measured")
    fig.update_layout(title="step time on this CPU: predicted vs measured", xaxis_title="measured ms",
                      yaxis_title="predicted ms")  # fmt: skip
    return {"name": "step_time", "metrics": metrics, "figures": [fig], "table": table}
