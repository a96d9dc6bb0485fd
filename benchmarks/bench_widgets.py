"""Widget update cost: how long a step-slider move takes in Python, for 64 requests x ~200 steps.

A move rewrites the view's traces inside one ``batch_update``; we time the
whole Python side (frame data, validation, state serialisation, and the JSON
encoding a kernel would do before sending) for random slider moves, per view.
Target: under 50 ms per move. Also timed: building the offline animated
figure of the same run, and one Playground re-run.
"""

from __future__ import annotations

import json
import random
import statistics
import time

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.viz import Playground, StepPlayer, block_map_figure, budget_figure, mask_figure
from cblab_teach.workloads import make_workload

TARGET_MS = 50.0


def make_run(quick: bool):
    """64 requests decoding side by side for about 200 steps (16 x ~50 when quick)."""
    n, new = (16, (30, 45)) if quick else (64, (100, 120))
    model = TinyLM(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0)
    work = make_workload(n, (8, 32), new, seed=0)
    config = EngineConfig(max_tokens_per_step=n, prefill_chunk_size=32, block_size=16, num_blocks=1024)
    engine = Engine(model, config)
    engine.generate(work.prompts, work.max_new_tokens)
    return engine.records, n


def time_moves(player: StepPlayer, moves: int, seed: int = 0) -> tuple[list[float], list[int]]:
    """Milliseconds per slider move, and bytes each move would send to the browser."""
    sent: list[int] = []

    def encode(msg, buffers=None):  # what the kernel would serialise; the comm itself is absent here
        sent.append(len(json.dumps(msg, default=str)) + sum(len(memoryview(b)) for b in buffers or ()))

    player.figure._send = encode
    rng = random.Random(seed)
    last = len(player.records) - 1
    times = []
    for _ in range(moves):
        step = rng.randint(0, last)
        while step == player.step:
            step = rng.randint(0, last)
        start = time.perf_counter()
        player.slider.value = step
        times.append(1e3 * (time.perf_counter() - start))
    return times, sent


def run(quick: bool = False) -> dict:
    records, n = make_run(quick)
    moves = 10 if quick else 40
    metrics: dict[str, float] = {"requests": n, "steps": len(records), "target_ms": TARGET_MS}
    table = []
    for view in ("budget", "mask", "blocks"):
        player = StepPlayer(records, view=view)
        times, sent = time_moves(player, moves)
        p50, p90 = statistics.median(times), statistics.quantiles(times, n=10)[-1]
        metrics[f"{view}_move_p50_ms"] = p50
        metrics[f"{view}_move_p90_ms"] = p90
        metrics[f"{view}_move_kib"] = sum(sent) / moves / 1024  # every message of a move, together
        table.append({"view": view, "p50 ms": round(p50, 2), "p90 ms": round(p90, 2),
                      "KiB per move": round(metrics[f"{view}_move_kib"], 1), "under target": p90 < TARGET_MS})  # fmt: skip
    for name, build in (("budget", budget_figure), ("mask", mask_figure), ("blocks", block_map_figure)):
        start = time.perf_counter()
        build(records)
        metrics[f"{name}_animated_build_s"] = time.perf_counter() - start
    playground = Playground()
    start = time.perf_counter()
    playground.controls["max_tokens_per_step"].value = 24
    metrics["playground_rerun_ms"] = 1e3 * (time.perf_counter() - start)
    fig = go.Figure(
        [
            go.Bar(name="p50", x=[r["view"] for r in table], y=[r["p50 ms"] for r in table]),
            go.Bar(name="p90", x=[r["view"] for r in table], y=[r["p90 ms"] for r in table]),
        ]
    )
    fig.add_hline(y=TARGET_MS, line_dash="dot", annotation_text="target 50 ms")
    fig.update_layout(
        title=f"slider move, Python time: {n} requests x {len(records)} steps", yaxis_title="ms", barmode="group"
    )
    return {"name": "widgets", "metrics": metrics, "figures": [fig], "table": table}


if __name__ == "__main__":
    import sys

    result = run(quick="--quick" in sys.argv)
    for row in result["table"]:
        print(row)
    print(json.dumps(result["metrics"], indent=1))
