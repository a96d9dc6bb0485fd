"""Scaling: throughput and step time as concurrency grows, and what planning costs.

* Decode throughput: ``c`` requests decode together (1 -> 256); a step computes
  ``c`` tokens, so tokens/s grows while the forward amortises its fixed cost,
  until the matrix math itself is the limit.
* Planning cost: ``Scheduler.plan`` alone, on ``n`` decoding requests plus ``n``
  waiting ones, against a paged KV cache: the Python cost of one scheduling decision.
"""

from __future__ import annotations

from plotly.subplots import make_subplots

from cblab_teach import Engine, EngineConfig, PagedAllocator, Request, RequestState, Scheduler
from cblab_teach.workloads import make_workload

from .common import VOCAB, bench_model, median_time


def sizes(quick: bool) -> dict:
    if quick:
        return dict(concurrency=(1, 4, 16), new_tokens=4, plan_sizes=(1, 16, 64), plan_repeats=5, repeats=1)
    return dict(
        concurrency=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        new_tokens=16,
        plan_sizes=(1, 4, 16, 64, 256, 1024),
        plan_repeats=20,
        repeats=3,
    )


def decode_throughput(model, concurrency: int, new_tokens: int) -> dict:
    """Prefill ``concurrency`` prompts, then time the decode-only steps."""
    w = make_workload(concurrency, (16, 16), (new_tokens, new_tokens), vocab_size=VOCAB, seed=4)
    config = EngineConfig(
        max_tokens_per_step=max(256, 16 * concurrency), prefill_chunk_size=16, max_running=256, num_blocks=2048
    )
    engine = Engine(model, config)
    for p, n in zip(w.prompts, w.max_new_tokens):
        engine.add_request(p, n)
    records = engine.run()
    decode = [r for r in records if r.plan.prefill_tokens == 0]
    seconds = sum(r.duration_s for r in decode)
    tokens = sum(r.plan.decode_tokens for r in decode)
    return {
        "tok_s": tokens / seconds,
        "step_ms": 1e3 * seconds / len(decode),
        "forward_ms": 1e3 * sum(r.forward_s for r in decode) / len(decode),
    }


def planning_cost(n: int, repeats: int) -> float:
    """Median seconds of one ``Scheduler.plan`` over ``n`` decoding and ``n`` waiting requests."""
    kv = PagedAllocator(1, 1, 8, num_blocks=4 * n + 16, block_size=16)
    running, waiting = [], []
    for i in range(n):
        r = Request(i, [1] * 8, max_new_tokens=32, arrival=i)
        kv.admit(i, r.max_total_tokens)
        kv.ensure(i, 8)
        r.output_ids, r.num_computed, r.state = [1], 8, RequestState.DECODE
        running.append(r)
        waiting.append(Request(n + i, [1] * 8, max_new_tokens=32, arrival=n + i))
    scheduler = Scheduler(max_tokens_per_step=n + 64, prefill_chunk_size=32, max_running=2 * n)
    return median_time(lambda: scheduler.plan(running, waiting, kv), repeats)


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    model = bench_model(quick)
    decode_throughput(model, 2, 2)  # warm-up
    # each size measured `repeats` times, in rotation, fastest kept: other load on a shared machine only adds time
    runs: dict[int, list[dict]] = {c: [] for c in s["concurrency"]}
    for _ in range(s["repeats"]):
        for c in s["concurrency"]:
            runs[c].append(decode_throughput(model, c, s["new_tokens"]))
    scaling = {c: min(rs, key=lambda r: r["step_ms"]) for c, rs in runs.items()}
    plans = {n: planning_cost(n, s["plan_repeats"]) for n in s["plan_sizes"]}
    metrics = {}
    for c, r in scaling.items():
        metrics[f"c{c}_tok_s"] = r["tok_s"]
        metrics[f"c{c}_step_ms"] = r["step_ms"]
    for n, secs in plans.items():
        metrics[f"plan_{n}_requests_us"] = 1e6 * secs
    first, last = min(scaling), max(scaling)
    metrics["throughput_gain_max_vs_1"] = scaling[last]["tok_s"] / scaling[first]["tok_s"]
    table = [
        {
            "concurrent requests": c,
            "decode tok/s": round(r["tok_s"], 1),
            "step ms": round(r["step_ms"], 2),
            "forward ms": round(r["forward_ms"], 2),
        }
        for c, r in scaling.items()
    ]
    table += [
        {"plan: running + waiting requests": f"{n} + {n}", "plan us": round(1e6 * t, 1)} for n, t in plans.items()
    ]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("decode tokens/s", "step time (ms)", "Scheduler.plan (us)"))
    xs = list(scaling)
    fig.add_scatter(x=xs, y=[r["tok_s"] for r in scaling.values()], name="tok/s", row=1, col=1)
    fig.add_scatter(x=xs, y=[r["step_ms"] for r in scaling.values()], name="step ms", row=1, col=2)
    fig.add_scatter(x=list(plans), y=[1e6 * t for t in plans.values()], name="plan us", row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(type="log", title_text="requests", row=1, col=col)
    fig.update_layout(title="scaling with concurrency", showlegend=False)
    return {"name": "scaling", "metrics": metrics, "figures": [fig], "table": table}
