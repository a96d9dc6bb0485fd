"""Swap or recompute a preempted request: the cost of each, by sequence length, measured side by side.

A victim that held ``L`` tokens of K/V either

* **swaps**: its K/V is copied to the host pool (``HostKVPool.swap_out``) and, when it is admitted
  again, copied back (``swap_in``): ``2 x L x bytes per token`` moved; or
* **recomputes**: it is prefilled again, one forward over its ``L`` tokens (what the engine does with
  ``preemption="recompute"``).

For each ``L`` both are measured on the same request in the same process, interleaved, several
times; the ratio recompute / swap is reported with its spread over the repeats, and the crossover
is the shortest length from which swapping is the cheaper one (None if it never is, or is at every
length measured). Costs are CPU time (``time.process_time``, torch on one thread), so a pause of the
process by other load on the machine does not count as work.

On this machine the "device" pool and the host pool are the same RAM: a swap is a memory copy,
not a trip over PCIe. So the benchmark also reports the two rates that decide the question on any
machine: K/V bytes per token, and recompute tokens per second. Swapping (out and back) beats
recomputing when the link moves more than ``2 x bytes per token x recompute tokens/s`` bytes per
second: ``break_even_link_gbs`` below, for this model on this CPU.

Last, whole runs: one tight workload served with ``preemption="recompute"`` and ``"swap"``
(identical outputs asserted), tokens computed, bytes swapped and CPU time.
"""

from __future__ import annotations

import statistics
import time

import plotly.graph_objects as go
import torch

from cblab_teach import Engine, EngineConfig
from cblab_teach.core.batch_builder import build_batch
from cblab_teach.core.scheduler import ScheduledChunk, StepPlan
from cblab_teach.core.swap import HostKVPool
from cblab_teach.workloads import make_workload

from .common import VOCAB, bench_model

BLOCK = 16
DECODERS = 16  # the decode batch a recompute joins in the "batched" measurement
CONTEXT = 64  # tokens each of those decoders holds


def sizes(quick: bool) -> dict:
    if quick:
        return dict(lengths=(16, 64), repeats=3, requests=6, prompt=(16, 48), new=(8, 24), pool_blocks=8)
    return dict(lengths=(16, 32, 64, 128, 256, 512, 1024), repeats=9, requests=24, prompt=(16, 96), new=(16, 64),
                pool_blocks=24)  # fmt: skip


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


class Victim:
    """One request holding ``length`` tokens of K/V in a paged pool, next to ``decoders`` decoding requests
    (the batch a recompute would join), and a host pool with room for it."""

    def __init__(self, model, length: int, decoders: int = DECODERS) -> None:
        self.model, self.length = model, length
        cfg = EngineConfig(max_tokens_per_step=length + CONTEXT * decoders, prefill_chunk_size=max(length, CONTEXT),
                           block_size=BLOCK, num_blocks=length // BLOCK + 2 + decoders * (CONTEXT // BLOCK + 1))  # fmt: skip
        self.engine = Engine(model, cfg)
        self.rid = self.engine.add_request([(7 * i + 3) % VOCAB for i in range(length)], 2)
        others = [self.engine.add_request([(5 * i + j) % VOCAB for i in range(CONTEXT)], 2) for j in range(decoders)]
        self.engine.step()  # every prompt's K/V is in the pool now, and each request has sampled a token
        self.kv = self.engine.kv
        self.requests = {rid: self.engine.request(rid) for rid in [self.rid, *others]}
        for rid in others:
            self.kv.ensure(rid, CONTEXT + 1)  # room for the decode token each measured step writes
        c = model.config
        self.host = HostKVPool(c.num_layers, c.kv_heads, c.head_dim, length // BLOCK + 1, BLOCK, model.dtype)
        decode = [ScheduledChunk(rid, CONTEXT, 1, "decode", True) for rid in others]
        prefill = ScheduledChunk(self.rid, 0, length, "prefill", True)
        self.alone = StepPlan(budget=length, chunks=[prefill])
        self.base = StepPlan(budget=decoders, chunks=decode)
        self.joined = StepPlan(budget=decoders + length, chunks=[*decode, prefill])
        self.bytes = 0

    def held(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The victim's K/V, every layer, in token order (wherever its blocks are now)."""
        slots = self.kv.slots([self.rid], torch.zeros(self.length, dtype=torch.long), torch.arange(self.length))
        return self.kv.k[:, slots].clone(), self.kv.v[:, slots].clone()

    def swap_out_and_back(self) -> None:
        self.bytes = self.host.swap_out(self.kv, self.rid, self.length)
        self.kv.free(self.rid)  # the victim's blocks go to someone else ...
        self.kv.admit(self.rid, self.length + 1, reserve=False)  # ... and it is admitted again later
        self.bytes += self.host.swap_in(self.kv, self.rid)[1]

    @torch.no_grad()
    def forward(self, plan: StepPlan) -> None:
        self.model(build_batch(plan, self.requests, self.model.device), self.kv)


def per_length(model, length: int, repeats: int) -> dict:
    v = Victim(model, length)
    inner = max(1, 512 // length)  # short ops are repeated inside one timing, so the clock's grain does not matter
    before = v.held()
    ops = {
        "swap": v.swap_out_and_back,
        "alone": lambda: v.forward(v.alone),
        "base": lambda: v.forward(v.base),
        "joined": lambda: v.forward(v.joined),
    }
    times: dict[str, list[float]] = {name: [] for name in ops}
    for i in range(repeats + 1):
        names = list(ops)
        names = names[i % len(names) :] + names[: i % len(names)]  # rotate which goes first
        for name in names:
            seconds = cpu(lambda fn=ops[name]: [fn() for _ in range(inner)]) / inner
            if i:  # the first round warms up
                times[name].append(seconds)
    assert all(torch.equal(a, b) for a, b in zip(v.held(), before)), "a swap or a recompute changed the K/V"
    marginal = [j - b for j, b in zip(times["joined"], times["base"])]  # the victim's tokens riding in a batch
    ratios = [r / s for r, s in zip(times["alone"], times["swap"])]
    batched = [m / s for m, s in zip(marginal, times["swap"])]
    swap_med, rec_med = statistics.median(times["swap"]), statistics.median(times["alone"])
    return {
        "tokens": length,
        "kv_bytes_out_and_back": v.bytes,
        "swap_ms": 1e3 * swap_med,
        "recompute_ms": 1e3 * rec_med,
        "recompute_batched_ms": 1e3 * statistics.median(marginal),
        "recompute_over_swap": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "batched_over_swap": statistics.median(batched),
        "batched_ratio_min": min(batched),
        "batched_ratio_max": max(batched),
        "copy_gbs": v.bytes / swap_med / 1e9,
        "recompute_tok_s": length / rec_med,
    }


def whole_runs(model, s: dict) -> list[dict]:
    """The same tight workload, recompute against swap: work done, bytes moved, CPU time."""
    w = make_workload(s["requests"], s["prompt"], s["new"], vocab_size=VOCAB, seed=21)  # as in run()
    rows, outputs = [], {}
    for mode in ("recompute", "swap", "recompute", "swap"):  # twice, interleaved; the faster of each is kept
        cfg = EngineConfig(max_tokens_per_step=128, prefill_chunk_size=64, block_size=BLOCK,
                           num_blocks=s["pool_blocks"], preemption=mode, num_host_blocks=4 * s["pool_blocks"])  # fmt: skip
        engine = Engine(model, cfg)
        seconds = cpu(lambda e=engine: e.generate(w.prompts, w.max_new_tokens))
        out = [engine.output(i) for i in range(len(w.prompts))]
        outputs.setdefault("ref", out)
        assert out == outputs["ref"], f"preemption={mode!r} changed an output"
        st = engine.stats
        rows.append(dict(mode=mode, preemptions=st.preemptions, swapped_out=st.swap_outs,
                         recomputed_tokens=st.recomputed_tokens, tokens_computed=sum(r.plan.used for r in engine.records),
                         swapped_mib=(st.swapped_out_bytes + st.swapped_in_bytes) / 2**20, cpu_s=seconds))  # fmt: skip
    best = {}
    for row in rows:
        if row["mode"] not in best or row["cpu_s"] < best[row["mode"]]["cpu_s"]:
            best[row["mode"]] = row
    return [best["recompute"], best["swap"]]


def crossover(rows: list[dict], key: str = "recompute_over_swap") -> int | None:
    """The shortest length from which swapping is cheaper at every longer length measured, if it is not
    cheaper everywhere or nowhere (then None; see ``swap_cheaper_share``)."""
    wins = [r[key] > 1 for r in rows]
    if all(wins) or not any(wins):
        return None
    for i in range(len(rows)):
        if all(wins[i:]):
            return rows[i]["tokens"]
    return None


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    model = bench_model(quick)
    rows = [per_length(model, n, s["repeats"]) for n in s["lengths"]]
    runs = whole_runs(model, s)
    rec, swap = runs
    bytes_per_token = Victim(model, BLOCK).kv.bytes_per_slot  # K and V, every layer, for one token
    longest = rows[-1]
    fastest = max(r["recompute_tok_s"] for r in rows)  # the rate most favourable to recomputing
    w = make_workload(s["requests"], s["prompt"], s["new"], vocab_size=VOCAB, seed=21)
    needed = sum(len(p) + n - 1 for p, n in zip(w.prompts, w.max_new_tokens))  # each token computed once
    metrics = {
        "kv_bytes_per_token": bytes_per_token,
        **{f"L{r['tokens']}_recompute_over_swap": r["recompute_over_swap"] for r in rows},
        **{f"L{r['tokens']}_ratio_min": r["ratio_min"] for r in rows},
        **{f"L{r['tokens']}_ratio_max": r["ratio_max"] for r in rows},
        **{f"L{r['tokens']}_swap_ms": r["swap_ms"] for r in rows},
        **{f"L{r['tokens']}_recompute_ms": r["recompute_ms"] for r in rows},
        **{f"L{r['tokens']}_batched_over_swap": r["batched_over_swap"] for r in rows},
        **{f"L{r['tokens']}_batched_ratio_min": r["batched_ratio_min"] for r in rows},
        **{f"L{r['tokens']}_batched_ratio_max": r["batched_ratio_max"] for r in rows},
        "swap_cheaper_share": sum(r["recompute_over_swap"] > 1 for r in rows) / len(rows),
        "swap_cheaper_than_batched_share": sum(r["batched_over_swap"] > 1 for r in rows) / len(rows),
        "crossover_tokens": crossover(rows) or 0,  # 0: no crossover inside the lengths measured
        "crossover_batched_tokens": crossover(rows, "batched_over_swap") or 0,
        "copy_gbs_longest": longest["copy_gbs"],
        "recompute_tok_s_best": fastest,
        "break_even_link_gbs": 2 * bytes_per_token * fastest / 1e9,
        "run_tokens_needed": needed,
        "run_recompute_tokens_computed": rec["tokens_computed"],
        "run_swap_tokens_computed": swap["tokens_computed"],
        "run_recomputed_tokens": rec["recomputed_tokens"],
        "run_swap_recomputed_tokens": swap["recomputed_tokens"],
        "run_recompute_preemptions": rec["preemptions"],
        "run_swap_preemptions": swap["preemptions"],
        "run_swap_outs": swap["swapped_out"],
        "run_swapped_mib": swap["swapped_mib"],
        "run_cpu_ratio_recompute_over_swap": rec["cpu_s"] / swap["cpu_s"],
        "outputs_identical_share": 1.0,  # asserted in whole_runs
    }
    for r in rows:
        assert r["kv_bytes_out_and_back"] == 2 * r["tokens"] * bytes_per_token
    lengths = [r["tokens"] for r in rows]
    fig = go.Figure(
        [
            go.Scatter(name="recompute (prefill forward)", x=lengths, y=[r["recompute_ms"] for r in rows], mode="lines+markers"),
            go.Scatter(name=f"recompute riding in a batch of {DECODERS} decodes (added cost)", x=lengths,
                       y=[r["recompute_batched_ms"] for r in rows], mode="lines+markers"),
            go.Scatter(name="swap out + back (host pool)", x=lengths, y=[r["swap_ms"] for r in rows], mode="lines+markers"),
        ],
        layout=dict(title="Cost of bringing a preempted request back, by the tokens it held (median CPU ms)",
                    xaxis=dict(title="tokens of K/V the victim held", type="log"), yaxis=dict(title="ms", type="log")),
    )  # fmt: skip
    ratio_fig = go.Figure(
        [go.Scatter(name=name, x=lengths, y=[r[key] for r in rows], mode="lines+markers",
                    error_y=dict(type="data", symmetric=False, array=[r[hi] - r[key] for r in rows],
                                 arrayminus=[r[key] - r[lo] for r in rows]))
         for name, key, lo, hi in (("recompute alone / swap", "recompute_over_swap", "ratio_min", "ratio_max"),
                                   ("recompute in a batch / swap", "batched_over_swap", "batched_ratio_min",
                                    "batched_ratio_max"))],
        layout=dict(title="recompute / swap (above 1: swap is cheaper); bars: min-max over repeats",
                    xaxis=dict(title="tokens", type="log"), yaxis_title="ratio"),
    )  # fmt: skip
    table = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    table += [{"tokens": f"whole run ({r['mode']})", **{k: round(v, 3) if isinstance(v, float) else v
                                                      for k, v in r.items() if k != "mode"}} for r in runs]  # fmt: skip
    return {"name": "swap", "metrics": metrics, "figures": [fig, ratio_fig], "table": table}
