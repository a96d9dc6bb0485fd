"""``python -m cblab_teach.loadgen``: load any OpenAI-compatible server and report what it did.

Flags are named after ``vllm bench serve``'s where it has one (``--base-url``, ``--model``, ``--num-prompts``,
``--request-rate``, ``--burstiness``, ``--max-concurrency``, ``--input-len``, ``--output-len``, ``--ignore-eos``,
``--seed``). The rest say what they do: ``--endpoint completions|chat`` is vLLM's ``--backend openai|openai-chat``,
``--range-ratio`` its ``--random-range-ratio``, ``--result-file`` its ``--save-result --result-filename``, and
``--slo-ttft-ms 100 --slo-tpot-ms 50`` its ``--goodput ttft:100 tpot:50``; ``--request-rates 1,2,4`` sweeps
several rates in one call.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .loadgen_prompts import chat_prompts, random_prompts
from .loadgen_report import run_table, sweep_table, write_json
from .loadgen_run import MAX_PROMPTS, LoadSettings, run_blocking, run_sweep


def rate(text: str) -> float:
    """A request rate: a positive number or ``inf``."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a request rate must be > 0 or inf, got {text}")
    return value


def rates(text: str) -> list[float]:
    return [rate(t) for t in text.split(",") if t.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cblab_teach.loadgen", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (a /v1 suffix is fine)")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions",
                   help="/v1/completions or /v1/chat/completions (vLLM: --backend openai | openai-chat)")  # fmt: skip
    p.add_argument("--model", default=None, help="model id to send (default: the first of GET /v1/models)")
    p.add_argument("--dataset", choices=["random", "chat"], default="random",
                   help="random: --input-len common words; chat: a built-in list of real questions")  # fmt: skip
    p.add_argument("--num-prompts", type=int, default=100, help=f"requests per rate (at most {MAX_PROMPTS})")
    p.add_argument("--input-len", type=int, default=32, help="words per random prompt (~1 BPE token each)")
    p.add_argument("--output-len", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--range-ratio", type=float, default=0.0,
                   help="sample lengths uniformly from [L*(1-r), L*(1+r)], 0 <= r < 1 (0: fixed lengths)")  # fmt: skip
    p.add_argument("--request-rate", type=rate, default=float("inf"), help="Poisson arrivals, req/s; inf: all at once")
    p.add_argument(
        "--request-rates", type=rates, default=None, help="a sweep, e.g. 1,2,4,inf (overrides --request-rate)"
    )
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the gaps (1: Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most (default: no cap)")
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="send ignore_eos: true (vLLM/SGLang generate exactly max_tokens; others may ignore it)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=None, help="sent only if given (default: the server's)")
    p.add_argument("--slo-ttft-ms", type=float, default=None, help="goodput SLO on time to first token")
    p.add_argument("--slo-tpot-ms", type=float, default=None, help="goodput SLO on time per output token")
    p.add_argument("--slo-e2el-ms", type=float, default=None, help="goodput SLO on end-to-end latency")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds one request may take in all")
    p.add_argument("--result-file", default=None, help="write the results as JSON here")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompts and the arrival times")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load; print a table per rate (and a sweep summary); 0 if every request completed, else 1."""
    a = parser().parse_args(argv)
    if not 1 <= a.num_prompts <= MAX_PROMPTS:
        raise SystemExit(f"error: --num-prompts must be 1 to {MAX_PROMPTS}")
    if a.input_len < 1 or a.output_len < 1 or not 0 <= a.range_ratio < 1 or a.request_timeout <= 0:
        raise SystemExit("error: --input-len and --output-len must be >= 1, --range-ratio in [0, 1), timeout > 0")
    if a.max_concurrency is not None and a.max_concurrency < 1:
        raise SystemExit("error: --max-concurrency must be >= 1")
    if a.dataset == "chat":
        prompts = chat_prompts(a.num_prompts, a.output_len, a.range_ratio, a.seed)
    else:
        prompts = random_prompts(a.num_prompts, a.input_len, a.output_len, a.range_ratio, a.seed)
    slo = {"ttft": a.slo_ttft_ms, "tpot": a.slo_tpot_ms, "e2el": a.slo_e2el_ms}
    settings = LoadSettings(
        base_url=a.base_url, endpoint=a.endpoint, model=a.model, burstiness=a.burstiness,
        max_concurrency=a.max_concurrency, request_timeout_s=a.request_timeout, ignore_eos=a.ignore_eos,
        temperature=a.temperature, seed=a.seed, slo_ms={k: v for k, v in slo.items() if v is not None},
        api_key=os.environ.get("OPENAI_API_KEY"), progress=not a.no_progress,
    )  # fmt: skip
    runs = run_blocking(run_sweep(prompts, a.request_rates or [a.request_rate], settings))
    for run in runs:
        print(run_table(run))
    if len(runs) > 1:
        print(sweep_table(runs))
    if a.result_file:
        config = {k: v for k, v in vars(a).items() if k not in ("request_rate", "request_rates")}
        config["request_rates"] = [run["request_rate"] for run in runs]
        print(f"results: {write_json(a.result_file, config, runs)}", file=sys.stderr)
    return 0 if all(run["failed"] == 0 for run in runs) else 1
