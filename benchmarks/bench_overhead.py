"""Overhead: how much of a step is not the model's math, at 8, 64 and 256 concurrent requests.

Every phase of ``Engine.step`` is timed by wrapping it for the run:

* ``plan`` (scheduler), ``build_batch`` (ragged batch), ``step_context`` (KV slots
  and attention layout, built once per forward), ``sample`` (argmax and token
  bookkeeping), ``commit`` (append tokens, finish requests, free KV);
* ``attention``: reading each request's K/V from the cache and attending (``TinyLM.attend_cached``);
* ``model_math``: the rest of the forward (embeddings, projections, RoPE, norms, MLP, LM head);
* ``other``: the rest of the step (admission, KV growth, the StepRecord and its KV usage).

Overhead share = 1 - (attention + model_math) / step time: what is spent outside the forward. The engine's own
``StepRecord.overhead_s`` (time outside ``forward + sample``) is reported too.
"""

from __future__ import annotations

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig
from cblab_teach.core import engine as engine_module
from cblab_teach.model import tiny_lm
from cblab_teach.workloads import make_workload

from .common import VOCAB, PhaseTimer, bench_model, patched

PHASES = ("plan", "build_batch", "step_context", "sample", "commit", "other", "attention", "model_math")


def sizes(quick: bool) -> dict:
    if quick:
        return dict(concurrency=(2, 8), prompt_len=(8, 16), new_tokens=4)
    return dict(concurrency=(8, 64, 256), prompt_len=(16, 32), new_tokens=24)


def measure(model, concurrency: int, prompt_len, new_tokens: int) -> dict:
    """Serve ``concurrency`` requests at once and split the time of every step into phases."""
    w = make_workload(concurrency, prompt_len, (new_tokens, new_tokens), vocab_size=VOCAB, seed=2)
    config = EngineConfig(
        max_tokens_per_step=max(256, concurrency), prefill_chunk_size=64, max_running=concurrency, num_blocks=2048
    )
    engine = Engine(model, config)
    for p, n in zip(w.prompts, w.max_new_tokens):
        engine.add_request(p, n)
    timer = PhaseTimer()
    with (
        patched(engine.scheduler, "plan", timer.wrap("plan")),
        patched(engine_module, "build_batch", timer.wrap("build_batch")),
        patched(tiny_lm.StepContext, "__init__", timer.wrap("step_context")),
        patched(engine.model, "forward", timer.wrap("forward")),
        patched(engine.model, "attend_cached", timer.wrap("attention")),
        patched(engine_module, "sample_step", timer.wrap("sample")),
        patched(engine, "_commit", timer.wrap("commit")),
    ):
        records = engine.run()
    step_s = sum(r.duration_s for r in records)
    sec = timer.seconds
    phases = {name: sec.get(name, 0.0) for name in ("plan", "build_batch", "step_context", "sample", "commit")}
    phases["attention"] = sec.get("attention", 0.0)
    phases["model_math"] = sec["forward"] - phases["step_context"] - phases["attention"]
    phases["other"] = step_s - sum(phases.values())
    return {
        "steps": len(records),
        "step_s": step_s,
        "mean_step_ms": 1e3 * step_s / len(records),
        "overhead_share": 1 - (phases["model_math"] + phases["attention"]) / step_s,
        "record_overhead_share": sum(r.overhead_s for r in records) / step_s,
        "decode_overhead_share": _decode_share(records),
        **{f"{k}_share": v / step_s for k, v in phases.items()},
    }


def _decode_share(records) -> float:
    """The engine's own overhead share over decode-only steps (the steady state)."""
    decode = [r for r in records if r.plan.prefill_tokens == 0]
    total = sum(r.duration_s for r in decode)
    return sum(r.overhead_s for r in decode) / total if total else float("nan")


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    model = bench_model(quick)
    measure(model, 2, s["prompt_len"], 2)  # warm-up
    results = {c: measure(model, c, s["prompt_len"], s["new_tokens"]) for c in s["concurrency"]}
    metrics = {}
    for c, r in results.items():
        for k in ("overhead_share", "record_overhead_share", "mean_step_ms", *(f"{p}_share" for p in PHASES)):
            metrics[f"c{c}_{k}"] = r[k]
    table = [
        {
            "concurrent requests": c,
            "steps": r["steps"],
            "mean step ms": round(r["mean_step_ms"], 2),
            "overhead share": f"{r['overhead_share']:.1%}",
            "StepRecord.overhead_s share": f"{r['record_overhead_share']:.1%}",
            **{p: f"{r[f'{p}_share']:.1%}" for p in PHASES},
        }
        for c, r in results.items()
    ]
    fig = go.Figure()
    labels = [str(c) for c in results]
    for p in PHASES:
        fig.add_bar(name=p, x=labels, y=[100 * r[f"{p}_share"] for r in results.values()])
    fig.update_layout(
        barmode="stack",
        title="where a step's time goes (share of step time, %)",
        xaxis_title="concurrent requests",
        yaxis_title="% of step time",
    )
    return {"name": "overhead", "metrics": metrics, "figures": [fig], "table": table}
