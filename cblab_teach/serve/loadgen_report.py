"""A run's numbers as text (vLLM's result block, and one line per rate for a sweep) and as a JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .loadgen_metrics import PERCENTILES

LATENCIES = (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
             ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency"))  # fmt: skip


def run_table(run: dict) -> str:
    """One rate's result, laid out like ``vllm bench serve``'s."""
    width = 50
    lines = [f" Serving Benchmark Result (rate {run['request_rate']} req/s) ".center(width, "=")]

    def row(label: str, value) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<40}{text:>10}")

    row("Successful requests:", run["completed"])
    row("Failed requests:", run["failed"])
    if run["max_concurrency"]:
        row("Maximum request concurrency:", run["max_concurrency"])
    row("Benchmark duration (s):", run["duration"])
    row("Total input tokens:", run["total_input_tokens"])
    row("Total generated tokens:", run["total_output_tokens"])
    row("Request throughput (req/s):", run["request_throughput"])
    if run["request_goodput"] is not None:
        row("Request goodput (req/s):", run["request_goodput"])
        lines.append("  (requests meeting " + ", ".join(f"{k} <= {v:g} ms" for k, v in run["slo_ms"].items()) + ")")
    row("Output token throughput (tok/s):", run["output_throughput"])
    row("Total token throughput (tok/s):", run["total_token_throughput"])
    for key, title in LATENCIES:
        lines.append(f" {title} ".center(width, "-"))
        row(f"Mean {key.upper()} (ms):", run[f"mean_{key}_ms"])
        row(f"Median {key.upper()} (ms):", run[f"median_{key}_ms"])
        for p in PERCENTILES[1:]:  # p50 is the median (the JSON file keeps both names)
            row(f"P{p} {key.upper()} (ms):", run[f"p{p}_{key}_ms"])
    if not run["usage_reported"]:
        lines.append("(the server sent no usage: output tokens are counted as text chunks)")
    if errors := sorted({r["error"] for r in run["requests"] if r["error"]}):
        lines.append(f"errors ({len(errors)} kind(s)), first: {errors[0][:200]}")
    lines.append("=" * width)
    return "\n".join(lines)


def sweep_table(runs: Sequence[dict]) -> str:
    """One line per rate: where latency turns up and goodput falls (the latency-throughput knee)."""
    head = (f"{'rate':>8} {'ok':>5} {'fail':>5} {'req/s':>7} {'good/s':>7} {'out tok/s':>10} "
            f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'E2E p99':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in runs:
        good = "-" if r["request_goodput"] is None else f"{r['request_goodput']:.2f}"
        lines.append(f"{r['request_rate']!s:>8} {r['completed']:>5} {r['failed']:>5} {r['request_throughput']:>7.2f} "
                     f"{good:>7} {r['output_throughput']:>10.1f} {r['median_ttft_ms']:>9.1f} {r['p99_ttft_ms']:>9.1f} "
                     f"{r['median_tpot_ms']:>9.1f} {r['p99_tpot_ms']:>9.1f} {r['p99_e2el_ms']:>9.1f}")  # fmt: skip
    return "\n".join(lines) + "\n(latencies in ms)"


def write_json(path: str | Path, config: dict, runs: Sequence[dict]) -> Path:
    """``{"config": ..., "runs": [one object per rate]}``; the metric keys are vLLM's result-file keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config, "runs": list(runs)}, indent=1) + "\n", encoding="utf-8")
    return path
