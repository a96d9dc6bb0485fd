"""Where a step's time goes, path by path, against the matmul-only limit of the same steps.

The benchmark model serves 64 requests arriving together (the Hugging Face comparison's workload) three ways:

* ``ragged``: the definition, every query against every key of the step (``attention="ragged"``);
* ``flatten``: each request's blocks copied out first, then segmented einsum attention (``kv_read="flatten"``);
* ``default``: each group's keys read straight from the pool, ``scaled_dot_product_attention``.

For each: the wall time of the run (fastest of ``repeats``, interleaved), and one run under ``torch.profiler``
split into matmuls, attention, KV reads and writes, other model math, Python and bookkeeping
(:func:`cblab_teach.monitoring.step_profile.profile_breakdown`). The matmul-only limit of the default path's
steps (:func:`~cblab_teach.monitoring.step_profile.matmul_limit_s`) is measured in the same run, and so are the
same matmuls with q|k|v and gate|up fused (:func:`~cblab_teach.monitoring.step_profile.fused_matmul_s`): the
engine keeps separate projections unless fusing them pays here. Last, the layers' math outside attention at the
same steps' shapes, eager and under ``torch.compile`` (:func:`~cblab_teach.monitoring.step_profile.compiled_layers_s`),
with the compile time: what a compiled step would win here, and what it costs first.
"""

from __future__ import annotations

import time

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig
from cblab_teach.monitoring.step_profile import (
    CATEGORIES,
    compiled_layers_s,
    fused_matmul_s,
    matmul_limit_s,
    profile_breakdown,
    step_shapes,
)
from cblab_teach.workloads import make_workload

from .common import VOCAB, bench_model, timed_call

PATHS = {
    "ragged": dict(attention="ragged"),
    "flatten": dict(kv_read="flatten"),
    "default": {},
}


def sizes(quick: bool) -> dict:
    if quick:
        return dict(concurrency=4, prompt_len=(4, 12), new_tokens=(2, 8), repeats=1)
    return dict(concurrency=64, prompt_len=(8, 48), new_tokens=(4, 96), repeats=3)


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    model = bench_model(quick)
    c = s["concurrency"]
    w = make_workload(c, s["prompt_len"], s["new_tokens"], vocab_size=VOCAB, seed=1, long_tail=True)
    configs = {
        name: EngineConfig(max_tokens_per_step=256, prefill_chunk_size=64, max_running=c, **kw)
        for name, kw in PATHS.items()
    }
    Engine(model, configs["default"]).generate(w.prompts[:2], 2)
    wall: dict[str, list[float]] = {name: [] for name in PATHS}
    cpu: dict[str, list[float]] = {name: [] for name in PATHS}
    outputs = {}
    for _ in range(s["repeats"]):  # interleaved, so every path sees the same load
        for name, config in configs.items():
            engine = Engine(model, config)
            start_cpu = time.process_time()
            outputs[name], secs = timed_call(engine.generate, w.prompts, w.max_new_tokens)
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(secs)
            if name == "default":
                shapes = step_shapes(engine.records)
    limit = matmul_limit_s(model, shapes)
    limit_cpu = matmul_limit_s(model, shapes, clock=time.process_time)
    # fused q|k|v and gate|up, timed interleaved with the separate ones: does fusing pay on this CPU?
    separate = [matmul_limit_s(model, shapes, clock=time.process_time) for _ in range(s["repeats"])]
    fused = [fused_matmul_s(model, shapes, clock=time.process_time) for _ in range(s["repeats"])]
    metrics: dict = {"concurrency": c, "output_tokens": w.total_new_tokens, "steps": len(shapes)}
    metrics["matmul_limit_s"], metrics["matmul_limit_cpu_s"] = limit, limit_cpu
    metrics["fused_projections_over_separate"] = min(fused) / min(separate)
    metrics["fused_projections_spread_low"] = min(fused) / max(separate)
    metrics["fused_projections_spread_high"] = max(fused) / min(separate)
    if not quick:  # compiling takes seconds; the quick run stays quick
        compiled = compiled_layers_s(model, shapes, repeats=s["repeats"], clock=time.process_time)
        metrics["compiled_layers_over_eager"] = compiled["compiled_s"] / compiled["eager_s"]
        metrics["compiled_layers_saving_s"] = compiled["eager_s"] - compiled["compiled_s"]
        metrics["compile_s"] = compiled["compile_s"]
        metrics["compiled_layers_max_abs_diff"] = compiled["max_abs_diff"]
    metrics["outputs_identical_share"] = sum(outputs[n] == outputs["default"] for n in PATHS) / len(PATHS)
    table, fig = [], go.Figure()
    breakdowns = {}
    for name, config in configs.items():
        report = profile_breakdown(lambda config=config: Engine(model, config), w.prompts, w.max_new_tokens)
        breakdowns[name] = report
        best, best_cpu = min(wall[name]), min(cpu[name])
        metrics[f"{name}_s"] = best
        metrics[f"{name}_cpu_s"] = best_cpu
        metrics[f"{name}_over_matmul_limit"] = best / limit
        metrics[f"{name}_cpu_over_matmul_limit"] = best_cpu / limit_cpu
        profiled = sum(report["seconds"].values())
        for cat, sec in report["seconds"].items():
            metrics[f"{name}_{cat.replace(' ', '_')}_share"] = sec / profiled
        table.append(
            {
                "path": name,
                "wall s (runs)": " / ".join(f"{t:.3f}" for t in wall[name]),
                "CPU s (fastest)": round(best_cpu, 3),
                "wall / matmul limit": f"{best / limit:.2f}x",
                "CPU / matmul limit (CPU)": f"{best_cpu / limit_cpu:.2f}x",
                **{cat: f"{sec / profiled:.0%}" for cat, sec in report["seconds"].items()},
                "top ops (self s, profiled)": ", ".join(f"{op} {sec:.3f}" for op, sec in report["top_ops"][:4]),
            }
        )
    for cat in CATEGORIES:
        fig.add_bar(name=cat, x=list(PATHS), y=[breakdowns[n]["seconds"][cat] for n in PATHS])
    fig.add_scatter(name="matmul-only limit", x=list(PATHS), y=[limit] * len(PATHS), mode="lines")
    fig.update_layout(
        barmode="stack",
        title=f"{c} concurrent requests: profiled seconds by category, and the matmul-only limit",
        yaxis_title="seconds (under torch.profiler)",
    )
    return {"name": "profile", "metrics": metrics, "figures": [fig], "table": table}
