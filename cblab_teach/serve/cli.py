"""``python -m cblab_teach serve``: the flags, named after the vLLM flags a vLLM user already knows.

vLLM's names are from its ``EngineArgs`` (``vllm/engine/arg_utils.py``: ``max_num_batched_tokens``,
``max_num_seqs``, ``block_size``, ``num_gpu_blocks_override``, ``enable_prefix_caching``, ``preemption_mode``)
and ``SchedulerConfig.long_prefill_token_threshold`` (``vllm/config/scheduler.py``: the V1 scheduler cuts a
longer prefill to that many tokens per step). ``--max-waiting`` is SGLang's ``--max-queued-requests``
(``python/sglang/srt/server_args.py``). ``--static`` has no vLLM counterpart: vLLM's V1 scheduler
(``Scheduler.schedule`` in ``vllm/v1/core/sched/scheduler.py``) decides at every step which requests run and admits
waiting ones whenever the token budget and the KV pool allow, with no prefill or decode phase; nothing holds a
batch until its longest member ends. The flag serves the course's baseline so one HTTP load can be sent to both.
"""

from __future__ import annotations

import argparse

from ..core.config import EngineConfig
from ..core.engine import Engine
from ..core.static_batching import StaticServingEngine
from ..errors import ConfigError
from .text_model import MODELS, TextModel

PREEMPTION = {"off": False, "recompute": "recompute", "swap": "swap"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2",
                        help="smollm2: SmolLM2-135M-Instruct, a real chat model; tiny: the course's character "
                             "model (instant, reads as babble past ~64 characters; for tests and load)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    knobs = EngineConfig()
    parser.add_argument("--max-tokens-per-step", type=int, default=256,
                        help="token budget of one step (vLLM: --max-num-batched-tokens)")  # fmt: skip
    parser.add_argument("--prefill-chunk-size", type=int, default=64,
                        help="prompt tokens per request per step (vLLM: --long-prefill-token-threshold)")  # fmt: skip
    parser.add_argument("--max-running", type=int, default=knobs.max_running,
                        help="requests holding KV at once (vLLM: --max-num-seqs)")  # fmt: skip
    parser.add_argument("--num-blocks", type=int, default=knobs.num_blocks,
                        help="KV blocks in the pool (vLLM: --num-gpu-blocks-override)")  # fmt: skip
    parser.add_argument("--block-size", type=int, default=knobs.block_size,
                        help="tokens per KV block (vLLM: --block-size)")  # fmt: skip
    parser.add_argument("--enable-prefix-caching", action="store_true",
                        help="reuse KV blocks of identical prompt prefixes (vLLM: --enable-prefix-caching)")  # fmt: skip
    parser.add_argument("--preemption", choices=sorted(PREEMPTION), default="off",
                        help="admit optimistically and preempt when the pool runs out: recompute or swap "
                             "(vLLM V0: --preemption-mode; off reserves each request's worst case up front)")  # fmt: skip
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="waiting requests beyond which new ones get HTTP 429 (SGLang: --max-queued-requests)")  # fmt: skip
    parser.add_argument("--static", action="store_true",
                        help="serve with static batching instead of continuous batching, to compare the two under "
                             "the same load: a group of up to --max-running waiting requests is admitted only when "
                             "the previous group has entirely finished, prompts padded to the longest, every row "
                             "decoding until the group's longest finishes; --num-blocks x --block-size is its pool. "
                             "vLLM has no such mode (it always batches continuously)")  # fmt: skip


KEEP_RECORDS = 1024  # the server runs for days: it keeps its last steps' records, not all of them


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        max_tokens_per_step=args.max_tokens_per_step,
        prefill_chunk_size=args.prefill_chunk_size,
        max_running=args.max_running,
        num_blocks=args.num_blocks,
        block_size=args.block_size,
        enable_prefix_caching=args.enable_prefix_caching,
        preemption=PREEMPTION[args.preemption],
        keep_records=KEEP_RECORDS,
    )


def check_static(args: argparse.Namespace) -> None:
    """``--static`` with a flag only continuous batching has is a mistake worth naming, not a flag ignored."""
    if args.enable_prefix_caching or args.preemption != "off":
        flag = "--enable-prefix-caching" if args.enable_prefix_caching else f"--preemption {args.preemption}"
        raise ConfigError(f"--static serves static batching, which has no prefix caching or preemption; drop {flag}")


def build(args: argparse.Namespace):
    """The app the flags describe (the model loaded, the engine built)."""
    from .app import build_app

    config = engine_config(args)  # a bad knob fails here, before the model loads
    if args.static:
        check_static(args)
    text_model: TextModel = MODELS[args.model]()
    if args.static:
        engine = StaticServingEngine(text_model.model, batch_size=config.max_running, num_slots=config.num_slots,
                                     keep_records=KEEP_RECORDS)  # fmt: skip
    else:
        engine = Engine(text_model.model, config)
    return build_app(text_model, engine, max_waiting=args.max_waiting)


def require_server_packages() -> None:
    """FastAPI, uvicorn and prometheus-client are the ``serve`` extra: say how to install them, not a traceback."""
    import importlib.util
    import sys

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"the server needs {', '.join(missing)}; install them with: "
                         f"{sys.executable} -m pip install fastapi uvicorn prometheus-client")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    require_server_packages()
    import uvicorn

    from ..errors import CBLabError

    try:
        app = build(args)
    except CBLabError as e:  # a bad knob or a model that is not installed: the message says what to do
        raise SystemExit(f"error: {e}") from None
    mode = " with static batching" if args.static else ""
    print(f"serving {app.state.text_model.name}{mode} on http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
