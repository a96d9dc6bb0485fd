"""Disaggregated prefill/decode against one engine: decoders' TPOT while long prompts arrive, TTFT, KV bytes.

Workload: a group of short requests starts decoding at t = 0; long prompts then arrive one
after another while they decode. Served two ways, same model, same budgets:

* **colocated**: one :class:`Engine`; every long prompt's prefill chunks share steps with
  the decoders, so those steps take longer and every decoder's next token waits;
* **disaggregated**: :class:`DisaggregatedServer`, a prefill engine and a decode engine;
  the decode engine's steps carry decode tokens only.

Time. The two engines of a disaggregated server would run on two devices at once; this
benchmark runs them in one process, so it keeps one clock per engine. Each engine's clock
advances by the measured cost of its own steps (and of the K/V copies it makes: export on
the prefill side, import on the decode side); a hand-over reaches the decode engine no earlier
than the prefill clock at which it was exported. The colocated engine has one clock,
advanced the same way. Requests arrive at fixed times on these clocks. So every latency below
is made of measured step costs; what is modelled is only that the two engines overlap, and
that the link costs nothing beyond the copies (no network). The disaggregated server uses two
devices' worth of compute against one: ``busy_s`` reports each system's device-seconds.

A step's cost is the CPU time the process spent in it (``time.process_time``), not wall
time: on a shared machine the scheduler may pause the process for hundreds of milliseconds
in the middle of a step, and that pause is no property of the step. (torch runs on the
runner's threads; with ``--threads 1`` CPU time and compute time are the same thing.)

The whole comparison runs several times, interleaved; the median run is reported and the
spread of the TPOT ratio over the repeats is the noise.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig, TinyLM
from cblab_teach.advanced.disaggregated import DisaggregatedServer
from cblab_teach.workloads import make_workload

from .common import VOCAB, bench_model, percentile

INF = float("inf")


def sizes(quick: bool) -> dict:
    if quick:
        return dict(decoders=4, decode_len=24, long=3, long_prompt=96, long_new=4, gap_steps=5, repeats=1,
                    budget=64, chunk=32)  # fmt: skip
    return dict(decoders=16, decode_len=96, long=8, long_prompt=512, long_new=8, gap_steps=10, repeats=5,
                budget=256, chunk=128)  # fmt: skip


Job = tuple[float, list[int], int]  # (arrival time on the clock, prompt, max_new_tokens)


def workload(s: dict, step_s: float) -> list[Job]:
    """Short decoders (varied output lengths) at t = 0, then a long prompt every ``gap_steps`` decode steps
    (of ``step_s`` each)."""
    short = make_workload(s["decoders"], (8, 24), (s["decode_len"] // 2, s["decode_len"]), vocab_size=VOCAB, seed=11)
    long = make_workload(s["long"], (s["long_prompt"], s["long_prompt"]), (s["long_new"], s["long_new"]),
                         vocab_size=VOCAB, seed=12)  # fmt: skip
    jobs = [(0.0, p, n) for p, n in zip(short.prompts, short.max_new_tokens)]
    jobs += [
        ((k + 1) * s["gap_steps"] * step_s, p, n) for k, (p, n) in enumerate(zip(long.prompts, long.max_new_tokens))
    ]
    return jobs


def cpu_timed(fn):
    """``(fn(), CPU seconds it took)``: robust to the process being paused by other load."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def _arrived_by(ready_at: dict[int, float], now: float, handoff) -> bool:
    """Has this hand-over's K/V reached the decode engine by ``now`` on its clock?"""
    return ready_at[handoff.request_id] <= now


def _add_tokens(times: dict[int, list[float]], record, clock: float) -> None:
    for rid, toks in record.new_tokens.items():
        times.setdefault(rid, []).extend([clock] * len(toks))


def colocated(model: TinyLM, cfg: EngineConfig, jobs: Sequence[Job]) -> dict:
    engine = Engine(model, cfg)
    clock, busy, nxt = 0.0, 0.0, 0
    times: dict[int, list[float]] = {}
    while nxt < len(jobs) or engine.has_unfinished():
        while nxt < len(jobs) and jobs[nxt][0] <= clock:
            engine.add_request(jobs[nxt][1], jobs[nxt][2], request_id=nxt)
            nxt += 1
        if not engine.has_unfinished():
            clock = jobs[nxt][0]
            continue
        record, cost = cpu_timed(engine.step)
        clock += cost
        busy += cost
        _add_tokens(times, record, clock)
    return dict(times=times, outputs=[engine.output(i) for i in range(len(jobs))], busy=busy, bytes=0,
                records=engine.records)  # fmt: skip


def disaggregated(model: TinyLM, cfg: EngineConfig, jobs: Sequence[Job]) -> dict:
    server = DisaggregatedServer(model, cfg, cfg)
    pre, dec = server.prefill, server.decode
    t_pre = t_dec = busy = 0.0
    nxt = 0
    ready_at: dict[int, float] = {}  # request id -> prefill clock when its K/V left the prefill pool
    times: dict[int, list[float]] = {}
    while nxt < len(jobs) or server.has_unfinished():
        pre_next = t_pre if pre.has_unfinished() else (max(t_pre, jobs[nxt][0]) if nxt < len(jobs) else INF)
        if dec.has_unfinished():
            dec_next = t_dec
        elif server.in_flight:
            dec_next = max(t_dec, ready_at[server.in_flight[0].request_id])
        else:
            dec_next = INF
        if pre_next <= dec_next:  # the prefill engine acts next
            t_pre = pre_next
            while nxt < len(jobs) and jobs[nxt][0] <= t_pre:
                server.add_request(jobs[nxt][1], jobs[nxt][2], request_id=nxt)
                nxt += 1
            record, step_cost = cpu_timed(pre.step)
            handed, copy_cost = cpu_timed(server.export_ready)
            spent = step_cost + copy_cost
            t_pre += spent
            busy += spent
            _add_tokens(times, record, t_pre)
            ready_at.update({h.request_id: t_pre for h in handed})
        else:  # the decode engine acts next
            t_dec = dec_next
            arrived = functools.partial(_arrived_by, ready_at, t_dec)
            _, copy_cost = cpu_timed(functools.partial(server.import_in_flight, arrived=arrived))
            record, step_cost = cpu_timed(dec.step)
            t_dec += copy_cost + step_cost
            busy += copy_cost + step_cost
            _add_tokens(times, record, t_dec)
    return dict(times=times, outputs=[server.output(i) for i in range(len(jobs))], busy=busy,
                bytes=server.bytes_transferred, blocks=server.blocks_transferred, server=server)  # fmt: skip


def summarize(run: dict, jobs: Sequence[Job], decoders: int) -> dict:
    tpot, ttft_long, itl = [], [], []
    for rid, (arrival, _, _) in enumerate(jobs):
        t = run["times"][rid]
        if rid < decoders:
            tpot.append((t[-1] - t[0]) / (len(t) - 1))
            itl += [b - a for a, b in zip(t, t[1:])]
        else:
            ttft_long.append(t[0] - arrival)
    return {
        "tpot_p50_ms": 1e3 * percentile(tpot, 50),
        "tpot_p90_ms": 1e3 * percentile(tpot, 90),
        "itl_p99_ms": 1e3 * percentile(itl, 99),
        "itl_max_ms": 1e3 * max(itl),
        "ttft_long_p50_ms": 1e3 * percentile(ttft_long, 50),
        "ttft_long_p90_ms": 1e3 * percentile(ttft_long, 90),
        "busy_s": run["busy"],
        "kv_bytes": run["bytes"],
    }


def decode_step_seconds(model: TinyLM, cfg: EngineConfig, s: dict) -> float:
    """Median step time of the decoders alone: the unit the arrival gaps are measured in."""
    w = make_workload(s["decoders"], (8, 24), (12, 12), vocab_size=VOCAB, seed=11)
    engine = Engine(model, cfg)
    for p, n in zip(w.prompts, w.max_new_tokens):
        engine.add_request(p, n)
    costs = []
    while engine.has_unfinished():
        costs.append(cpu_timed(engine.step)[1])
    return statistics.median(costs[2:])


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    model = bench_model(quick)
    cfg = EngineConfig(max_tokens_per_step=s["budget"], prefill_chunk_size=s["chunk"])
    jobs = workload(s, decode_step_seconds(model, cfg, s))
    runs = []
    for _ in range(s["repeats"]):
        co, dis = colocated(model, cfg, jobs), disaggregated(model, cfg, jobs)
        assert co["outputs"] == dis["outputs"], "disaggregation changed an output"
        runs.append((summarize(co, jobs, s["decoders"]), summarize(dis, jobs, s["decoders"]), co, dis))
    ratios = [c["tpot_p90_ms"] / d["tpot_p90_ms"] for c, d, _, _ in runs]
    median = sorted(range(len(runs)), key=lambda i: ratios[i])[len(runs) // 2]
    co_m, dis_m, co, dis = runs[median]
    metrics = {f"colocated_{k}": v for k, v in co_m.items()} | {f"disaggregated_{k}": v for k, v in dis_m.items()}
    metrics |= {
        "tpot_p90_ratio_colocated_over_disaggregated": ratios[median],
        "tpot_p90_ratio_min_over_repeats": min(ratios),
        "tpot_p90_ratio_max_over_repeats": max(ratios),
        "kv_bytes_transferred": dis["bytes"],
        "kv_blocks_transferred": dis["blocks"],
        "kv_bytes_per_prompt_token": dis["bytes"] / sum(len(p) for _, p, n in jobs if n > 1),
        "outputs_identical_share": 1.0,  # asserted above for every repeat
        "decoders": s["decoders"],
        "long_prompts": s["long"],
        "long_prompt_tokens": s["long_prompt"],
    }
    del metrics["colocated_kv_bytes"]
    rows = [
        {"system": name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}}
        for name, m in (("colocated (one engine)", co_m), ("disaggregated (prefill + decode engines)", dis_m))
    ]
    fig = go.Figure(
        [
            go.Bar(name="colocated", x=["TPOT p50", "TPOT p90", "ITL p99", "TTFT long p50"],
                   y=[co_m["tpot_p50_ms"], co_m["tpot_p90_ms"], co_m["itl_p99_ms"], co_m["ttft_long_p50_ms"]]),
            go.Bar(name="disaggregated", x=["TPOT p50", "TPOT p90", "ITL p99", "TTFT long p50"],
                   y=[dis_m["tpot_p50_ms"], dis_m["tpot_p90_ms"], dis_m["itl_p99_ms"], dis_m["ttft_long_p50_ms"]]),
        ],
        layout=dict(
            title=f"{s['decoders']} decoders while {s['long']} prompts of {s['long_prompt']} tokens arrive "
            f"(KV moved: {dis['bytes'] / 2**20:.1f} MiB)",
            yaxis_title="milliseconds (per-engine clocks of measured steps)",
            barmode="group",
        ),
    )  # fmt: skip
    itl_fig = go.Figure(
        [
            go.Scatter(name=name, mode="markers", x=[t for rid in range(s["decoders"]) for t in r["times"][rid][1:]],
                       y=[1e3 * (b - a) for rid in range(s["decoders"])
                          for a, b in zip(r["times"][rid], r["times"][rid][1:])])
            for name, r in (("colocated", co), ("disaggregated", dis))
        ],
        layout=dict(title="decoders' inter-token latency over time: long prompts make the colocated spikes",
                    xaxis_title="clock (s)", yaxis_title="ITL (ms)"),
    )  # fmt: skip
    return {"name": "disaggregated", "metrics": metrics, "figures": [fig, itl_fig], "table": rows}
