"""``python -m cblab_teach demo``: watch continuous batching in a terminal, step by step."""

from __future__ import annotations

import argparse

from .core.config import EngineConfig
from .core.engine import Engine, StepRecord
from .model import ModelConfig, TinyLM
from .workloads import make_workload


def format_step(record: StepRecord) -> str:
    """One table row: the budget bar, then who got which tokens."""
    bar = "".join("D" if c.kind == "decode" else "P" for c in record.plan.chunks for _ in range(c.length))
    bar += "." * record.plan.unused
    work = " ".join(f"{'d' if c.kind == 'decode' else 'p'}{c.request_id}:{c.length}" for c in record.plan.chunks)
    done = ",".join(map(str, record.finished)) or "-"
    return f"{record.step:>4} | {bar} | {record.used:>3}/{record.budget:<3} | {work:<40} | {done:<8} | {record.kv.reserved_slots:>5}"


def run_demo(num_requests: int = 6, budget: int = 16, chunk: int = 8, layout: str = "paged", seed: int = 0) -> str:
    model = TinyLM(ModelConfig(), seed=seed)
    engine = Engine(
        model, EngineConfig(max_tokens_per_step=budget, prefill_chunk_size=chunk, kv_layout=layout, block_size=8)
    )
    workload = make_workload(num_requests, (6, 30), (3, 12), seed=seed)
    for prompt, n in zip(workload.prompts, workload.max_new_tokens):
        engine.add_request(prompt, n)
    lines = [
        f"continuous batching: {num_requests} requests, max_tokens_per_step={budget}, prefill_chunk_size={chunk}, kv={layout}",
        "D = decode token, P = prefill token, . = unused budget; d3:1 = request 3 decoded 1 token",
        f"{'step':>4} | {'budget':<{budget}} | used    | {'work':<40} | finished | kv slots",
    ]
    for record in engine.run():
        lines.append(format_step(record))
    lines.append(f"{len(engine.records)} steps; outputs:")
    for rid, req in engine.requests.items():
        lines.append(f"  request {rid}: prompt {req.prompt_len} tokens -> {req.output_ids}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cblab_teach")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print a per-step table for a default workload")
    demo.add_argument("--requests", type=int, default=6)
    demo.add_argument("--budget", type=int, default=16, help="max_tokens_per_step")
    demo.add_argument("--chunk", type=int, default=8, help="prefill_chunk_size")
    demo.add_argument("--kv", choices=("dense", "paged"), default="paged")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        print(run_demo(args.requests, args.budget, args.chunk, args.kv, args.seed))
