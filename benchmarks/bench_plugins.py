"""Plugins, measured: priority TTFT, adaptive batch sizing, int8 KV compression, leak detection.

* priority -- urgent requests arrive while long low-priority prompts are being
  served: their TTFT with FCFS, with the priority policy alone, and with
  PriorityPlugin (priority order + a reserved budget slice), next to the total throughput;
* adaptive -- AdaptiveBatchSizePlugin steering the budget toward a step-time
  (TPOT) target on the real clock: where the budget settles, and the step time it gets;
* int8 KV -- bytes of the K/V pool, greedy token agreement and teacher-forced
  logit error against the float run;
* sliding window -- KV blocks held with attention-sink + window eviction, freed or not;
* leak -- the leak detector on a plugin that keeps every K/V tensor and on a
  clean run of the same length, by live tensor bytes and by process RSS.
"""

from __future__ import annotations

import statistics

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from cblab_teach import Engine, EngineConfig, TinyLM
from cblab_teach.monitoring import MemoryLeakDetector, MetricsCollector
from cblab_teach.plugins import (
    AdaptiveBatchSizePlugin,
    CachePlugin,
    KVQuantizationPlugin,
    PriorityPlugin,
    SlidingWindowPlugin,
)
from cblab_teach.plugins.kv_quant import teacher_forced_logits
from cblab_teach.workloads import make_workload, serve_with_urgent_arrivals

from .common import VOCAB, bench_model


def priority(model: TinyLM, quick: bool) -> tuple[dict, go.Figure, list[dict]]:
    low = make_workload(8 if quick else 32, (48, 128), (8, 32), vocab_size=VOCAB, seed=21)
    high = make_workload(4 if quick else 10, (8, 24), (4, 12), vocab_size=VOCAB, seed=22)
    rows, outputs = [], []
    setups = (
        ("fcfs", [], "fcfs"),
        ("priority policy", [], "priority"),
        ("PriorityPlugin", [PriorityPlugin(0.5)], "fcfs"),
    )
    for name, plugins, policy in tqdm(setups, desc="priority"):
        engine = Engine(
            model, EngineConfig(max_tokens_per_step=64, prefill_chunk_size=32, policy=policy), plugins=plugins
        )
        urgent = serve_with_urgent_arrivals(engine, low, high, every=3)
        collector = MetricsCollector.from_engine(engine)
        per = {m.request_id: m for m in collector.request_metrics()}
        summary = collector.summary()
        urgent_ttft = [per[i].ttft_s for i in urgent]
        rows.append(
            dict(
                setup=name,
                urgent_ttft_ms=1e3 * statistics.mean(urgent_ttft),
                urgent_ttft_steps=statistics.mean(per[i].ttft_steps for i in urgent),
                other_ttft_ms=1e3 * statistics.mean(m.ttft_s for rid, m in per.items() if rid not in urgent),
                throughput_tok_s=summary["throughput_tok_s"],
                tokens_per_step=summary["tokens_per_step"],
                steps=summary["steps"],
            )
        )
        outputs.append({i: engine.output(i) for i in engine.requests})
    assert all(o == outputs[0] for o in outputs), "priority changed an output"
    base, plug = rows[0], rows[2]
    metrics = {
        "priority_urgent_ttft_ms_fcfs": base["urgent_ttft_ms"],
        "priority_urgent_ttft_ms_policy": rows[1]["urgent_ttft_ms"],
        "priority_urgent_ttft_ms_plugin": plug["urgent_ttft_ms"],
        "priority_urgent_ttft_reduction": base["urgent_ttft_ms"] / plug["urgent_ttft_ms"],
        "priority_throughput_ratio": plug["throughput_tok_s"] / base["throughput_tok_s"],
        "priority_urgent_ttft_steps_fcfs": base["urgent_ttft_steps"],
        "priority_urgent_ttft_steps_plugin": plug["urgent_ttft_steps"],
        "priority_tokens_per_step_ratio": plug["tokens_per_step"] / base["tokens_per_step"],
    }
    fig = make_subplots(rows=1, cols=2, subplot_titles=("TTFT of urgent requests (ms)", "throughput (tokens / s)"))
    names = [r["setup"] for r in rows]
    fig.add_bar(x=names, y=[r["urgent_ttft_ms"] for r in rows], name="urgent TTFT", row=1, col=1)
    fig.add_bar(x=names, y=[r["throughput_tok_s"] for r in rows], name="throughput", row=1, col=2)
    fig.update_layout(title="Priority: urgent requests jump the queue, total throughput barely moves", showlegend=False)
    return metrics, fig, rows


def _fill(engine: Engine, w) -> None:
    for p, n in zip(w.prompts, w.max_new_tokens):
        engine.add_request(p, n)


def adaptive(model: TinyLM, quick: bool) -> tuple[dict, go.Figure]:
    """Fit step time = a + b * tokens from two probes, then steer toward a target twice: on that time model
    (deterministic, shows the controller) and on the real clock (shows it on this machine, noise included)."""
    w = make_workload(24 if quick else 96, (16, 96), (16, 48), vocab_size=VOCAB, seed=23)
    probe = {}
    for budget in (16, 128):
        engine = Engine(model, EngineConfig(max_tokens_per_step=budget, prefill_chunk_size=64))
        _fill(engine, w)
        probe[budget] = statistics.median(engine.step().duration_s for _ in range(6))
    b = max((probe[128] - probe[16]) / 112, 1e-9)
    a = max(probe[16] - 16 * b, 0.0)
    target = a + 48 * b  # the step time of a 48-token budget on this machine
    ideal = (target - a) / b

    def model_time(record) -> float:
        return a + b * record.plan.used

    runs = {}
    for name, kwargs in (("time model", dict(step_time=model_time)), ("real clock", dict(gain=0.5))):
        plugin = AdaptiveBatchSizePlugin(target, max_budget=1024, **kwargs)
        engine = Engine(model, EngineConfig(max_tokens_per_step=512, prefill_chunk_size=64), plugins=[plugin])
        _fill(engine, w)
        engine.run()
        loaded = [(bud, t) for (bud, t), r in zip(plugin.history, engine.records) if r.waiting]
        runs[name] = (plugin.history, loaded)
    metrics = {"adaptive_target_ms": 1e3 * target, "adaptive_ideal_budget": ideal}
    for name, (_, loaded) in runs.items():
        key = name.replace(" ", "_")
        settled = loaded[len(loaded) // 2 :] or loaded
        metrics[f"adaptive_{key}_median_budget"] = statistics.median(bud for bud, _ in settled)
        metrics[f"adaptive_{key}_step_time_over_target"] = statistics.median(t for _, t in settled) / target
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, (history, _) in runs.items():
        fig.add_scatter(y=[bud for bud, _ in history], name=f"budget ({name})", mode="lines")
        fig.add_scatter(y=[1e3 * t for _, t in history], name=f"step ms ({name})", mode="lines", secondary_y=True)
    fig.add_hline(y=1e3 * target, line_dash="dash", annotation_text="target step time", secondary_y=True)
    fig.update_layout(title="Adaptive batch size: from a 512-token budget to the one whose step takes the target")
    fig.update_xaxes(title_text="step")
    return metrics, fig


def int8_kv(model: TinyLM, quick: bool) -> tuple[dict, list[dict]]:
    w = make_workload(8 if quick else 32, (16, 128), (16, 48), vocab_size=VOCAB, seed=24)
    cfg = EngineConfig(max_tokens_per_step=128, prefill_chunk_size=64, num_blocks=256 if quick else 1024)
    plain = Engine(model, cfg).generate(w.prompts, w.max_new_tokens)
    plugin = KVQuantizationPlugin()
    quant = Engine(model, cfg, plugins=[plugin]).generate(w.prompts, w.max_new_tokens)
    total = sum(map(len, plain))
    agree = sum(a == b for p, q in zip(plain, quant) for a, b in zip(p, q))
    same_prefix = sum(next((i for i, (a, b) in enumerate(zip(p, q)) if a != b), len(p)) for p, q in zip(plain, quant))
    forced = EngineConfig(max_tokens_per_step=4096, prefill_chunk_size=256, num_blocks=256)
    logits = [teacher_forced_logits(model, forced, w.prompts[:8], quantized) for quantized in (False, True)]
    diff = logits[1] - logits[0]
    metrics = {
        "int8_kv_float_bytes": plugin.float_bytes,
        "int8_kv_int8_bytes": plugin.int8_bytes,
        "int8_kv_compression": plugin.compression,
        "int8_kv_token_agreement": agree / total,
        "int8_kv_prefix_agreement": same_prefix / total,
        "int8_kv_logit_rel_error": float(diff.norm() / logits[0].norm()),
        "int8_kv_logit_max_abs_error": float(diff.abs().max()),
        "int8_kv_top1_agreement_teacher_forced": float((logits[1].argmax(-1) == logits[0].argmax(-1)).double().mean()),
    }
    return metrics, [
        dict(kv="float32", bytes=plugin.float_bytes),
        dict(kv="int8 + fp16 scales", bytes=plugin.int8_bytes),
    ]


class _KeepsEveryKV(CachePlugin):
    def __init__(self) -> None:
        self.kept: list = []

    def after_append(self, layer, k, v, batch):
        self.kept.append((k, v))


def leak(model: TinyLM, quick: bool) -> tuple[dict, go.Figure]:
    w = make_workload(64, (8, 32), (8, 24), vocab_size=VOCAB, seed=25)
    steps = 32 if quick else 120
    metrics, fig = {}, go.Figure()
    for name, plugin in (("leaky", _KeepsEveryKV()), ("clean", CachePlugin())):
        detectors = {m: MemoryLeakDetector(window=16, measure=m) for m in ("tensors", "rss")}
        engine = Engine(model, EngineConfig(max_tokens_per_step=64), plugins=[plugin, *detectors.values()])
        for p, n in zip(w.prompts, w.max_new_tokens):
            engine.add_request(p, n)
        for _ in range(min(steps, 10_000)):
            if not engine.has_unfinished():
                break
            engine.step()
        for m, d in detectors.items():
            report = d.report()
            metrics[f"leak_{name}_{m}_detected"] = float(report.leaking)
            metrics[f"leak_{name}_{m}_slope_kib_per_step"] = report.slope_bytes_per_step / 1024
        samples = detectors["tensors"].samples
        fig.add_scatter(x=[s for s, _ in samples], y=[b / 2**20 for _, b in samples], name=f"{name} run", mode="lines")
    fig.update_layout(
        title="Live tensor memory per step: a plugin that keeps every K/V grows without bound",
        xaxis_title="step",
        yaxis_title="MiB of reachable tensors",
    )
    return metrics, fig


def sliding_window(model: TinyLM, quick: bool) -> dict:
    """Long generations: peak KV blocks when evicted blocks stay allocated vs go back to the pool."""
    w = make_workload(4 if quick else 16, (32, 64), (96, 160) if quick else (256, 384), vocab_size=VOCAB, seed=26)
    out = {}
    for release in (False, True):
        plugin = SlidingWindowPlugin(window=64, sink=4, release=release)
        engine = Engine(model, EngineConfig(max_tokens_per_step=128, prefill_chunk_size=64), plugins=[plugin])
        engine.generate(w.prompts, w.max_new_tokens)
        out[release] = (max(r.kv.reserved_slots for r in engine.records) // engine.kv.block_size, plugin)
    return {
        "window_peak_blocks_kept": out[False][0],
        "window_peak_blocks_released": out[True][0],
        "window_released_blocks": out[True][1].released_blocks,
    }


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    model = bench_model(quick)
    Engine(model, EngineConfig()).generate([[1, 2, 3, 4]] * 4, 8)  # warm-up: the first timed run is not penalised
    prio_metrics, prio_fig, rows = priority(model, quick)
    ada_metrics, ada_fig = adaptive(model, quick)
    kv_metrics, kv_rows = int8_kv(model, quick)
    leak_metrics, leak_fig = leak(model, quick)
    window_metrics = sliding_window(model, quick)
    return {
        "name": "plugins",
        "metrics": prio_metrics | ada_metrics | kv_metrics | leak_metrics | window_metrics,
        "figures": [prio_fig, ada_fig, leak_fig],
        "table": rows + kv_rows,
    }
