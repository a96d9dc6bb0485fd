"""The HTTP layer's cost: the load generator against the server, next to the engine in-process, same workload.

For each model (the tiny character model, and SmolLM2-135M-Instruct when it is installed) a server is started in
its own process (``python -m cblab_teach serve``, 127.0.0.1, a free port) and ``python -m cblab_teach.loadgen``
(its ``main``, the very command line) sends it one fixed workload, greedy, streamed:

* **in-process**: the same prompts, tokenized as the server tokenizes them, served by an :class:`Engine` with
  the server's knobs in this process, all at once (offline throughput);
* **HTTP, all at once** (``--request-rate inf``): the same work through the server. Its output tokens/s over
  the in-process run's is the price of HTTP, JSON, detokenizing and streaming on this machine;
* **HTTP, busy**: Poisson arrivals at 80% of the request throughput the server reached with everything at once,
  a rate where the engine is busy but not drowning: TTFT, TPOT and goodput under SLOs (``SLO_MS``) as
  ``vllm bench serve`` defines them;
* for the tiny model, **HTTP static** (``serve --static``), all at once: what continuous batching buys over HTTP.

Each is run three times (``--quick``: once, tiny model only, few prompts), interleaved, so a slow spell of a
shared machine touches all of them; the median and the range are reported. Client and server share the machine's
cores: these are one machine's numbers, not a deployment's.

::

    python -m benchmarks.run --only http
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import plotly.graph_objects as go
import torch

from cblab_teach import Engine, EngineConfig, SamplingParams
from cblab_teach.serve.loadgen_cli import main as loadgen
from cblab_teach.serve.loadgen_prompts import random_prompts
from cblab_teach.serve.text_model import MODELS

from .bench_soak import ServerProcess

KNOBS = {"max_tokens_per_step": 256, "prefill_chunk_size": 64, "max_running": 32}
# goodput counts the requests within both SLOs; SmolLM2's step is ~20x the tiny model's on a CPU, so are its SLOs
SLO_MS = {"tiny": {"ttft": 1000.0, "tpot": 200.0}, "smollm2": {"ttft": 5000.0, "tpot": 2000.0}}
BUSY_SHARE = 0.8  # the busy rate, as a share of the request throughput the server reached with everything at once


def sizes(quick: bool) -> dict:
    if quick:
        return {"tiny": dict(num_prompts=8, input_len=8, output_len=8)}, 1
    return {"tiny": dict(num_prompts=48, input_len=16, output_len=24),
            "smollm2": dict(num_prompts=16, input_len=16, output_len=12)}, 3  # fmt: skip


def server_flags(model: str, static: bool = False) -> list[str]:
    flags = ["--model", model, "--max-tokens-per-step", str(KNOBS["max_tokens_per_step"]),
             "--prefill-chunk-size", str(KNOBS["prefill_chunk_size"]), "--max-running", str(KNOBS["max_running"])]  # fmt: skip
    return flags + ["--static"] if static else flags


def loadgen_args(w: dict) -> list[str]:
    return ["--num-prompts", str(w["num_prompts"]), "--input-len", str(w["input_len"]), "--output-len",
            str(w["output_len"]), "--range-ratio", "0.5", "--temperature", "0", "--seed", "0"]  # fmt: skip


def in_process(text_model, w: dict) -> dict:
    """The workload's prompts served all at once by an engine in this process: output tokens per second."""
    specs = random_prompts(w["num_prompts"], w["input_len"], w["output_len"], 0.5, 0)
    prompts = [text_model.encode(s.prompt) for s in specs]
    config = EngineConfig(**KNOBS, eos_token_id=text_model.eos_token_id)
    engine = Engine(text_model.model, config)
    start = time.perf_counter()
    out = engine.generate(prompts, [s.max_tokens for s in specs], SamplingParams())
    seconds = time.perf_counter() - start
    tokens = sum(len(o) for o in out)
    return {"output_throughput": tokens / seconds, "request_throughput": len(out) / seconds, "tokens": tokens}


def http(url: str, w: dict, rate: float, slo: dict, folder: Path, tag: str) -> dict:
    """One loadgen run (its CLI, in this process); its result file's numbers."""
    path = folder / f"{tag}.json"
    args = ["--base-url", url, *loadgen_args(w), "--request-rate", "inf" if rate == float("inf") else f"{rate:.3f}",
            "--slo-ttft-ms", str(slo["ttft"]), "--slo-tpot-ms", str(slo["tpot"]), "--no-progress",
            "--result-file", str(path)]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # its tables; the numbers are read from its result file
        code = loadgen(args)
    run = json.loads(path.read_text())["runs"][0]
    if code != 0 or run["failed"]:
        raise RuntimeError(f"{tag}: {run['failed']} request(s) failed")
    return run


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(quick: bool = False) -> dict:
    workloads, repeats = sizes(quick)
    torch.set_num_threads(1)
    metrics, table, bars = {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model, w in workloads.items():
            try:
                text_model = MODELS[model]()
            except Exception as e:  # noqa: BLE001 - SmolLM2 not installed: the tiny model's rows still stand
                table.append({"model": model, "run": f"skipped: {type(e).__name__}: {e}"[:200]})
                continue
            samples: dict[str, list[dict]] = {"in-process": [], "HTTP all at once": [], "HTTP busy": []}
            servers = {"continuous": ServerProcess(server_flags(model))}
            if model == "tiny":
                servers["static"] = ServerProcess(server_flags(model, static=True))
                samples["HTTP static, all at once"] = []
            try:
                in_process(text_model, w | {"num_prompts": 2})  # warm-up: first forwards, lazy imports
                slo = SLO_MS[model]
                for server in servers.values():
                    http(server.url, w | {"num_prompts": 2}, float("inf"), slo, folder, f"{model}-warm-up")
                for i in range(repeats):
                    samples["in-process"].append(in_process(text_model, w))
                    url = servers["continuous"].url
                    at_once = http(url, w, float("inf"), slo, folder, f"{model}-inf-{i}")
                    samples["HTTP all at once"].append(at_once)
                    busy = BUSY_SHARE * at_once["request_throughput"]
                    samples["HTTP busy"].append(http(url, w, busy, slo, folder, f"{model}-busy-{i}") | {"rate": busy})
                    if "static" in servers:
                        samples["HTTP static, all at once"].append(
                            http(servers["static"].url, w, float("inf"), slo, folder, f"{model}-static-{i}"))  # fmt: skip
            finally:
                for server in servers.values():
                    server.stop()
            local_tps = [s["output_throughput"] for s in samples["in-process"]]
            for kind, runs in samples.items():
                tps = [r["output_throughput"] for r in runs]
                row = {"model": model, "run": kind, "out tok/s": spread(tps)["median"],
                       "tok/s min-max": f"{min(tps):.0f}-{max(tps):.0f}"}  # fmt: skip
                key = f"{model}_{kind.replace(',', '').replace(' ', '_').replace('-', '_').lower()}"
                metrics[f"{key}_tok_s"] = row["out tok/s"]
                if kind.endswith("all at once"):  # the same work as in-process (a busy run's is its offered load)
                    ratios = [t / lt for t, lt in zip(tps, local_tps)]
                    row["vs in-process"] = spread(ratios)["median"]
                    row["ratio min-max"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
                    metrics[f"{key}_over_in_process"] = row["vs in-process"]
                if kind != "in-process":
                    for stat in ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms"):
                        row[stat] = spread([r[stat] for r in runs])["median"]
                        metrics[f"{key}_{stat}"] = row[stat]
                    good = [r["request_goodput"] / r["request_throughput"] for r in runs]
                    row["goodput share"] = spread(good)["median"]
                    metrics[f"{key}_goodput_share"] = row["goodput share"]
                    row["SLO ms (TTFT, TPOT)"] = f"{SLO_MS[model]['ttft']:g}, {SLO_MS[model]['tpot']:g}"
                if kind == "HTTP busy":
                    row["rate req/s"] = spread([r["rate"] for r in runs])["median"]
                    metrics[f"{key}_rate"] = row["rate req/s"]
                table.append(row)
                bars.append((f"{model}: {kind}", row["out tok/s"], min(tps), max(tps)))
            metrics[f"{model}_output_tokens"] = samples["in-process"][0]["tokens"]
            if static := samples.get("HTTP static, all at once"):  # what continuous batching buys over HTTP
                gains = [c["output_throughput"] / s["output_throughput"]
                         for c, s in zip(samples["HTTP all at once"], static)]  # fmt: skip
                metrics[f"{model}_continuous_over_static_http"] = spread(gains)["median"]
                table.append({"model": model, "run": "continuous / static over HTTP, all at once",
                              "out tok/s": spread(gains)["median"], "tok/s min-max": f"{min(gains):.2f}-{max(gains):.2f}"})  # fmt: skip
    fig = go.Figure(go.Bar(x=[b[0] for b in bars], y=[b[1] for b in bars],
                           error_y={"type": "data", "symmetric": False, "array": [b[3] - b[1] for b in bars],
                                    "arrayminus": [b[1] - b[2] for b in bars]}))  # fmt: skip
    fig.update_layout(title=f"output tokens/s, median of {repeats} (bars: min-max)", yaxis_title="tokens/s")
    return {"name": "http", "metrics": metrics, "figures": [fig], "table": table}
