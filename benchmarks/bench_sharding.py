"""KV sharding: what splitting the keys over P shards costs, and what the log-sum-exp merge saves on the wire.

Two questions, answered side by side in one run:

* **compute**: sharded attention on one CPU runs the P partials one after another
  (``serial``); on P devices they run at once, so the time a request waits is the
  slowest partial plus the merge (``critical path``). Both against full attention.
* **communication**: to combine shards, each device sends its ``(out, lse)`` --
  ``Q * H * (D + 1)`` numbers -- instead of its K/V shard, ``2 * K/P * Hkv * D``
  numbers. For decode (Q = 1) and long contexts that is orders of magnitude less;
  for a 64-token prefill chunk against a short context it is *more* (ratio < 1).

The full run also spawns 2 real gloo processes (:func:`run_distributed`) and reports
the bytes they actually exchanged.
"""

from __future__ import annotations

import time

import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from cblab_teach.advanced.distributed import causal_example, run_distributed
from cblab_teach.advanced.sharding import merge_partials, partial_attention, shard_bounds, shard_sizes
from cblab_teach.attention import masked_attention


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls after one warm-up: the least noisy estimate on a shared machine."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sizes(quick: bool) -> dict:
    if quick:
        return dict(num_keys=512, shards=(1, 2, 4, 8), repeats=9, contexts=(256, 1024, 4096), heads=4, kv_heads=2)
    return dict(
        num_keys=8192,
        shards=(1, 2, 4, 8, 16, 32),
        repeats=9,
        contexts=(256, 1024, 4096, 16384, 65536),
        heads=8,
        kv_heads=4,
    )


def _split(q, k, v, mask, num_shards):
    return [
        (q, k[:, a:b].contiguous(), v[:, a:b].contiguous(), mask[:, :, a:b].contiguous())
        for a, b in shard_bounds(shard_sizes(k.shape[1], num_shards))
    ]


def _compute_costs(s: dict, num_queries: int, label: str) -> list[dict]:
    """Time full vs sharded attention (serial and critical path) for every P in ``s['shards']``."""
    q, k, v, mask = causal_example(
        num_queries, s["num_keys"], s["heads"], s["kv_heads"], head_dim=64, seed=0, dtype=torch.float32
    )
    reference = masked_attention(q, k, v, mask)
    rows = []
    for p in tqdm(s["shards"], desc=f"shards ({label})", leave=False):
        shards = _split(q, k, v, mask, p)
        parts = [partial_attention(*a) for a in shards]
        outs, lses = [o for o, _ in parts], [x for _, x in parts]
        merged = merge_partials(outs, lses)
        # full attention is timed again next to every P, so each ratio compares numbers taken together
        full_s = best_time(lambda: masked_attention(q, k, v, mask), s["repeats"])
        partial_s = [best_time(lambda a=a: partial_attention(*a), s["repeats"]) for a in shards]
        merge_s = best_time(lambda o=outs, x=lses: merge_partials(o, x), s["repeats"])
        rows.append(
            {
                "case": label,
                "shards": p,
                "full_ms": 1e3 * full_s,
                "serial_ms": 1e3 * (sum(partial_s) + merge_s),
                "critical_path_ms": 1e3 * (max(partial_s) + merge_s),
                "merge_ms": 1e3 * merge_s,
                "max_abs_error": (merged - reference).abs().max().item(),
            }
        )
    return rows


def _communication(s: dict, head_dim: int = 64, itemsize: int = 2) -> list[dict]:
    """Bytes one device sends to combine, per layer: its (out, lse) vs its K/V shard (bf16), P = 8."""
    p, rows = 8, []
    for num_queries, label in ((1, "decode"), (64, "prefill chunk of 64")):
        for ctx in s["contexts"]:
            partial = num_queries * s["heads"] * (head_dim + 1) * itemsize  # out [Q, H, D] and lse [Q, H]
            kv = 2 * (ctx // p) * s["kv_heads"] * head_dim * itemsize
            rows.append({"case": label, "context": ctx, "merge_bytes": partial, "kv_bytes": kv, "ratio": kv / partial})
    return rows


def _compute_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for case, dash in (("decode", "solid"), ("prefill", "dash")):
        rs = [r for r in rows if r["case"] == case]
        x = [r["shards"] for r in rs]
        fig.add_scatter(x=x, y=[r["full_ms"] for r in rs], name=f"{case}: full", line=dict(color="#999", dash=dash))
        fig.add_scatter(x=x, y=[r["serial_ms"] for r in rs], name=f"{case}: sharded, one device", line=dict(dash=dash))
        fig.add_scatter(
            x=x, y=[r["critical_path_ms"] for r in rs], name=f"{case}: sharded, P devices", line=dict(dash=dash)
        )
    fig.update_layout(
        title="sharded attention: serial cost vs critical path as shards grow",
        xaxis=dict(title="shards P", type="log"),
        yaxis_title="ms",
    )
    return fig


def _communication_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for case in ("decode", "prefill chunk of 64"):
        rs = [r for r in rows if r["case"] == case]
        x = [r["context"] for r in rs]
        fig.add_scatter(x=x, y=[r["merge_bytes"] for r in rs], name=f"{case}: send (out, lse)")
    fig.add_scatter(x=x, y=[r["kv_bytes"] for r in rs], name="send the K/V shard", line=dict(color="#d62728"))
    fig.update_layout(
        title="bytes one of 8 devices sends per layer to combine attention",
        xaxis=dict(title="context length (keys)", type="log"),
        yaxis=dict(title="bytes", type="log"),
    )
    return fig


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one "device" per partial; also keeps OpenMP barriers out of a shared machine's numbers
    try:
        compute = _compute_costs(s, 1, "decode") + _compute_costs(s, 64, "prefill")
    finally:
        torch.set_num_threads(threads)
    comm = _communication(s)
    metrics: dict[str, float] = {"max_abs_error": max(r["max_abs_error"] for r in compute)}
    for r in compute:
        key = f"{r['case']}_p{r['shards']}"
        metrics[f"{key}_serial_over_full"] = r["serial_ms"] / r["full_ms"]
        metrics[f"{key}_critical_path_over_full"] = r["critical_path_ms"] / r["full_ms"]
    for r in comm:
        if r["context"] == max(s["contexts"]):
            metrics[f"comm_ratio_{r['case'].split()[0]}_ctx{r['context']}"] = r["ratio"]
    if not quick:
        start = time.perf_counter()
        res = run_distributed(2, num_queries=1, num_keys=4096, num_heads=8, num_kv_heads=4, head_dim=64)
        metrics.update(
            distributed_max_abs_error=res.max_abs_error,
            distributed_bytes_communicated=res.bytes_communicated,
            distributed_kv_gather_bytes=res.kv_gather_bytes,
            distributed_comm_ratio=res.communication_ratio,
            distributed_wall_s=time.perf_counter() - start,
            distributed_rank_compute_s=max(res.per_rank_seconds),
        )
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in compute]
    table += [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in comm]
    return {
        "name": "sharding",
        "metrics": metrics,
        "figures": [_compute_figure(compute), _communication_figure(comm)],
        "table": table,
    }


if __name__ == "__main__":
    import json

    result = run(quick=True)
    print(json.dumps(result["metrics"], indent=1))
