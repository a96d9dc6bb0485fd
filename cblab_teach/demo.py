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


DEMO_QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Give one tip for learning Python.",
    "用一句话解释什么是机器学习。",
    "What does a CPU do?",
    "Translate 'good morning' into Spanish.",
)


def run_real_demo(num_requests: int = 4, budget: int = 64, chunk: int = 32, layout: str = "paged",
                  max_new_tokens: int = 24) -> str:  # fmt: skip
    """The same table on SmolLM2-135M-Instruct answering real questions; the answers are decoded at the end."""
    from .real import load_smollm2

    chat = load_smollm2()
    engine = Engine(chat.model, EngineConfig(max_tokens_per_step=budget, prefill_chunk_size=chunk, kv_layout=layout))
    questions = [DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)] for i in range(num_requests)]
    for q in questions:
        engine.add_request(chat.encode_chat([{"role": "user", "content": q}]), max_new_tokens,
                           eos_token_id=chat.eos_token_id)  # fmt: skip
    lines = [
        f"continuous batching on {chat.name}: {num_requests} questions, max_tokens_per_step={budget}, "
        f"prefill_chunk_size={chunk}, kv={layout}",
        "D = decode token, P = prefill token, . = unused budget; d3:1 = request 3 decoded 1 token",
    ]
    lines += [format_step(record) for record in engine.run()]
    lines.append(f"{len(engine.records)} steps; answers (a 135M model: expect some wrong ones):")
    for q, (rid, req) in zip(questions, engine.requests.items()):
        lines.append(f"  request {rid} [{req.finish_reason}]: {q} -> {chat.decode(req.output_ids)!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cblab_teach")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print a per-step table for a default workload")
    demo.add_argument(
        "--model",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: random weights, instant; smollm2: the real SmolLM2-135M-Instruct answering questions",
    )
    demo.add_argument("--requests", type=int, default=6)
    demo.add_argument("--budget", type=int, default=16, help="max_tokens_per_step")
    demo.add_argument("--chunk", type=int, default=8, help="prefill_chunk_size")
    demo.add_argument("--kv", choices=("dense", "paged"), default="paged")
    demo.add_argument("--seed", type=int, default=0)
    chat = sub.add_parser("chat", help="chat with SmolLM2-135M-Instruct through the engine, streaming")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--system", default=None, help="a system prompt (default: the model's own)")
    sub.add_parser("prepare", help="convert the real model's GGUF file to float weights once (~45 s)")
    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn)")
    from .serve.cli import add_arguments  # the flags only: the server's own imports wait until it runs

    add_arguments(serve)
    args = parser.parse_args(argv)
    if args.command == "demo" and args.model == "smollm2":
        print(run_real_demo(args.requests, max(args.budget, 64), args.chunk, args.kv))
    elif args.command == "demo":
        print(run_demo(args.requests, args.budget, args.chunk, args.kv, args.seed))
    elif args.command == "chat":
        from .real import load_smollm2
        from .real.chat_cli import chat_loop

        chat_loop(load_smollm2(), max_new_tokens=args.max_new_tokens, system=args.system)
    elif args.command == "prepare":
        from .real.loader import prepared_dir

        print(f"SmolLM2-135M-Instruct float weights in {prepared_dir()}")
    elif args.command == "serve":
        from .serve.cli import run

        run(args)
