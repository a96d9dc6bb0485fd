"""KV memory: paged blocks against dense preallocation, on the same workload and the same pool.

Waste = slots taken from the pool that hold no token's K/V. Three layouts:

* ``paged`` (measured): a request takes a block when its last one is full, so it
  wastes less than one block;
* ``dense`` (measured): the engine's dense cache reserves ``prompt + max_new_tokens``
  contiguous slots per request at admission;
* ``dense, padded to the longest`` (computed from the same steps): every running request
  reserves the workload's longest ``prompt + max_new_tokens``, as a static KV cache does.

Both engines must produce identical tokens: memory layout may not change a result.
"""

from __future__ import annotations

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig
from cblab_teach.workloads import make_workload

from .common import VOCAB, bench_model


def sizes(quick: bool) -> dict:
    if quick:
        return dict(num_requests=12, prompt_len=(4, 24), new_tokens=(2, 40), max_running=6, block_size=16)
    return dict(num_requests=48, prompt_len=(8, 64), new_tokens=(4, 192), max_running=24, block_size=16)


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    model = bench_model(quick)
    w = make_workload(s["num_requests"], s["prompt_len"], s["new_tokens"], vocab_size=VOCAB, seed=3, long_tail=True)
    bs = s["block_size"]
    runs = {}
    for layout in ("paged", "dense"):
        config = EngineConfig(
            max_tokens_per_step=128,
            prefill_chunk_size=32,
            max_running=s["max_running"],
            kv_layout=layout,
            block_size=bs,
            num_blocks=4096,
        )
        engine = Engine(model, config)
        ids = [engine.add_request(p, n) for p, n in zip(w.prompts, w.max_new_tokens)]
        records = engine.run()
        runs[layout] = (records, [engine.output(i) for i in ids])
    paged, dense = runs["paged"][0], runs["dense"][0]
    longest = max(len(p) + n - 1 for p, n in zip(w.prompts, w.max_new_tokens))
    bytes_per_slot = paged[0].kv.bytes_per_slot

    # per step, after the step: requests holding KV, and their waste under each layout
    def waste_per_request(records) -> list[float]:
        return [r.kv.waste_slots / len(r.running) for r in records if r.running]

    paged_wpr = waste_per_request(paged)
    padded_waste = [len(r.running) * longest - r.kv.used_slots for r in paged]
    metrics = {
        "requests": len(w),
        "block_size": bs,
        "bytes_per_slot": bytes_per_slot,
        "paged_peak_reserved_slots": max(r.kv.reserved_slots for r in paged),
        "dense_peak_reserved_slots": max(r.kv.reserved_slots for r in dense),
        "padded_peak_reserved_slots": max(len(r.running) * longest for r in paged),
        "peak_used_slots": max(r.kv.used_slots for r in paged),
        "paged_mean_waste_share": _mean_share(paged),
        "dense_mean_waste_share": _mean_share(dense),
        "padded_mean_waste_share": sum(padded_waste) / max(1, sum(len(r.running) * longest for r in paged)),
        "paged_max_waste_per_request_slots": max(paged_wpr, default=0.0),
        "paged_mean_waste_per_request_slots": sum(paged_wpr) / max(1, len(paged_wpr)),
        "paged_worst_step_waste_over_bound": max(
            (r.kv.waste_slots / (len(r.running) * (bs - 1)) for r in paged if r.running), default=0.0
        ),
        "dense_max_waste_per_request_slots": max(waste_per_request(dense), default=0.0),
        "outputs_identical_share": sum(a == b for a, b in zip(runs["paged"][1], runs["dense"][1])) / len(w),
    }
    table = [
        {
            "layout": name,
            "peak reserved slots": metrics[f"{key}_peak_reserved_slots"],
            "peak reserved MiB": round(metrics[f"{key}_peak_reserved_slots"] * bytes_per_slot / 2**20, 2),
            "mean waste share": f"{metrics[f'{key}_mean_waste_share']:.1%}",
        }
        for name, key in (
            ("paged (measured)", "paged"),
            ("dense (measured)", "dense"),
            ("dense, padded to longest", "padded"),
        )
    ]
    table[0]["max waste per request (slots)"] = round(metrics["paged_max_waste_per_request_slots"], 2)
    table[0]["bound: one partial block"] = bs - 1
    table[1]["max waste per request (slots)"] = round(metrics["dense_max_waste_per_request_slots"], 2)
    return {"name": "kv_memory", "metrics": metrics, "figures": [_figure(paged, dense, longest, bs)], "table": table}


def _mean_share(records) -> float:
    reserved = sum(r.kv.reserved_slots for r in records)
    return sum(r.kv.waste_slots for r in records) / reserved if reserved else 0.0


def _figure(paged, dense, longest: int, bs: int) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(y=[r.kv.used_slots for r in paged], name="used (tokens stored)", line_color="#2ca02c")
    fig.add_scatter(y=[r.kv.reserved_slots for r in paged], name=f"paged reserved (block {bs})", line_color="#1f77b4")
    fig.add_scatter(
        y=[r.kv.reserved_slots for r in dense], name="dense reserved (prompt + max_new)", line_color="#ff7f0e"
    )
    fig.add_scatter(
        y=[len(r.running) * longest for r in paged], name="dense padded to longest", line_color="#999", line_dash="dot"
    )
    fig.update_layout(title="KV slots per step: used vs reserved", xaxis_title="step", yaxis_title="slots")
    return fig
