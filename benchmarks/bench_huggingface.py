"""Against Hugging Face ``transformers``: identical weights, identical workload, identical tokens.

A ``LlamaForCausalLM`` with random weights is built from a small ``LlamaConfig``
and copied into a :class:`TinyLM` with ``TinyLM.from_hf``. Three ways to serve
the same greedy workload, timed side by side:

* ``Engine`` (this project's continuous batching);
* HF ``generate`` on left-padded static batches (each batch runs to its longest request);
* HF continuous batching (the manager behind ``generate_batch``), fed each request's own
  ``max_new_tokens``; its warm-up is left out of the timing.

Every request's generated ids are compared with the engine's.

A third part (:func:`real_model_sweep`, full runs only, skipped when the model is not installed) serves
SmolLM2-135M-Instruct (``cblab_teach.real.load_smollm2``) on chat prompts in its own template, the model the
course runs, against HF continuous batching on the same weights, at the same concurrency in both.

A second part sweeps the benchmark model at 16, 64 and 256 concurrent requests (engine vs HF continuous
batching, interleaved repeats, every run's time kept so the spread shows), and measures in the same run the
matmul-only limit of the engine's own steps: the engine's time as a multiple of it says how much is left.
"""

from __future__ import annotations

import logging
import time

import plotly.graph_objects as go
import torch

from cblab_teach import Engine, EngineConfig, TinyLM
from cblab_teach.errors import ModelNotInstalledError
from cblab_teach.monitoring.step_profile import matmul_limit_s, step_shapes
from cblab_teach.workloads import make_workload

from .common import VOCAB, hf_llama_config, timed_call

BUDGET = 256  # tokens per step, for the engine and for HF continuous batching alike


def sizes(quick: bool) -> dict:
    if quick:
        return dict(num_requests=6, prompt_len=(4, 12), new_tokens=(2, 12), batch_size=3, repeats=1)
    return dict(num_requests=48, prompt_len=(8, 48), new_tokens=(4, 96), batch_size=8, repeats=2)


def hf_generate_static(hf, prompts, max_new, batch_size: int) -> list[list[int]]:
    """HF ``generate`` on left-padded batches; each row keeps only its own ``max_new_tokens``."""
    outputs = []
    for s in range(0, len(prompts), batch_size):
        batch, lengths = prompts[s : s + batch_size], max_new[s : s + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(lengths),
            min_new_tokens=max(lengths),
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        outputs += [row[width : width + n].tolist() for row, n in zip(out, lengths)]
    return outputs


def hf_continuous(
    hf, prompts, max_new, budget: int, tuned: bool = True, max_requests: int | None = None
) -> tuple[list[list[int]], float]:
    """HF continuous batching with per-request lengths and the engine's token budget; returns outputs and seconds.

    The KV pool is sized to the workload (the default sizes it from free memory, and its warm-up then
    takes tens of seconds on CPU); CUDA graphs and warm-up are off: there is nothing to capture on CPU.
    ``tuned=False`` keeps every default, as ``generate_batch`` runs, and times its warm-up too.
    """
    from transformers import ContinuousBatchingConfig, GenerationConfig

    config = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=max(max_new))
    page = 16
    cb_config = ContinuousBatchingConfig(
        page_size=page,
        num_blocks=sum(-(-(len(p) + n) // page) for p, n in zip(prompts, max_new)),
        max_batch_tokens=budget,
        max_requests_per_batch=max_requests or len(prompts),
        use_cuda_graph=False,
        allow_block_sharing=False,
    )
    results = {}
    entered = time.perf_counter()
    with hf.continuous_batching_context_manager(
        generation_config=config,
        block=True,
        timeout=30,
        continuous_batching_config=cb_config if tuned else None,
        warmup=not tuned,
    ) as manager:
        start = time.perf_counter() if tuned else entered
        for i, (p, n) in enumerate(zip(prompts, max_new)):
            manager.add_request(p, request_id=f"r{i}", max_new_tokens=n)
        while len(results) < len(prompts):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                results[result.request_id] = result
            elif result is None and not manager.is_running():
                raise RuntimeError("Hugging Face continuous batching stopped before finishing")
        seconds = time.perf_counter() - start
    return [list(results[f"r{i}"].generated_tokens) for i in range(len(prompts))], seconds


def compare(hf, workload, batch_size: int, budget: int, repeats: int, defaults: bool) -> dict:
    """Time the three systems on one model and workload; compare every output with the engine's."""
    model = TinyLM.from_hf(hf).eval()
    w = workload
    config = EngineConfig(max_tokens_per_step=budget, prefill_chunk_size=64, max_running=len(w))
    Engine(model, config).generate(w.prompts[:2], 2)  # first-call costs stay out of every timing
    hf_generate_static(hf, w.prompts[:2], [2, 2], 2)
    # interleaved repeats, fastest of each kept: other load on a shared machine only adds time
    times: dict[str, list[float]] = {"ours": [], "static": [], "cb": []}
    for _ in range(repeats):
        ours, secs = timed_call(Engine(model, config).generate, w.prompts, w.max_new_tokens)
        times["ours"].append(secs)
        static, secs = timed_call(hf_generate_static, hf, w.prompts, w.max_new_tokens, batch_size)
        times["static"].append(secs)
        cb, secs = hf_continuous(hf, w.prompts, w.max_new_tokens, budget)
        times["cb"].append(secs)
    ours_s, static_s, cb_s = (min(times[k]) for k in ("ours", "static", "cb"))
    default, default_s = (cb, float("nan"))
    if defaults:
        default, default_s = hf_continuous(hf, w.prompts, w.max_new_tokens, budget, tuned=False)

    def same_requests(other: list[list[int]]) -> float:
        return sum(a == b for a, b in zip(ours, other)) / len(w)

    def same_tokens(other: list[list[int]]) -> float:
        return sum(x == y for a, b in zip(ours, other) for x, y in zip(a, b)) / w.total_new_tokens

    return {
        "engine_s": ours_s,
        "generate_static_s": static_s,
        "generate_batch_s": cb_s,
        "generate_batch_defaults_s": default_s,
        "identical_requests_defaults": same_requests(default),
        "identical_tokens_defaults": same_tokens(default),
        "identical_requests_static": same_requests(static),
        "identical_requests_batch": same_requests(cb),
        "identical_tokens_static": same_tokens(static),
        "identical_tokens_batch": same_tokens(cb),
    }


def sweep_sizes(quick: bool) -> dict:
    """Concurrency sweep on the benchmark model: ``c`` requests arrive together, at most ``c`` run at once."""
    if quick:
        return dict(concurrency=(4,), prompt_len=(4, 12), new_tokens=(2, 12), repeats=1)
    return dict(concurrency=(16, 64, 256), prompt_len=(8, 48), new_tokens=(4, 96), repeats=3)


def concurrency_sweep(quick: bool) -> tuple[dict, list[dict], go.Figure]:
    """Engine vs HF continuous batching (pool sized, no warm-up) at each concurrency, interleaved, plus the
    matmul-only limit of the engine's own steps (:func:`matmul_limit_s`) measured in the same run."""
    from transformers import LlamaForCausalLM

    s = sweep_sizes(quick)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_llama_config(quick)).eval()
    model = TinyLM.from_hf(hf).eval()
    metrics: dict = {}
    table: list[dict] = []
    fig = go.Figure()
    for c in s["concurrency"]:
        w = make_workload(c, s["prompt_len"], s["new_tokens"], vocab_size=VOCAB, seed=1, long_tail=True)
        config = EngineConfig(max_tokens_per_step=BUDGET, prefill_chunk_size=64, max_running=c)
        Engine(model, config).generate(w.prompts[:2], 2)
        ours_t, cb_t, ours_cpu = [], [], []
        for _ in range(s["repeats"]):  # interleaved: both see the same load
            engine = Engine(model, config)
            start = time.process_time()
            ours, secs = timed_call(engine.generate, w.prompts, w.max_new_tokens)
            ours_cpu.append(time.process_time() - start)
            ours_t.append(secs)
            cb, secs = hf_continuous(hf, w.prompts, w.max_new_tokens, BUDGET)
            cb_t.append(secs)
        limit = matmul_limit_s(model, step_shapes(engine.records))
        # CPU time of this process only: steadier than wall time when other jobs share the cores
        limit_cpu = matmul_limit_s(model, step_shapes(engine.records), clock=time.process_time)
        same = sum(x == y for a, b in zip(ours, cb) for x, y in zip(a, b)) / w.total_new_tokens
        ours_s, cb_s = min(ours_t), min(cb_t)
        metrics.update(
            {
                f"c{c}_output_tokens": w.total_new_tokens,
                f"c{c}_engine_throughput_tok_s": w.total_new_tokens / ours_s,
                f"c{c}_hf_generate_batch_throughput_tok_s": w.total_new_tokens / cb_s,
                f"c{c}_speedup_vs_generate_batch": cb_s / ours_s,
                f"c{c}_speedup_spread_low": min(cb_t) / max(ours_t),
                f"c{c}_speedup_spread_high": max(cb_t) / min(ours_t),
                f"c{c}_identical_tokens_vs_generate_batch": same,
                f"c{c}_matmul_limit_s": limit,
                f"c{c}_engine_over_matmul_limit": ours_s / limit,
                f"c{c}_engine_cpu_over_matmul_limit_cpu": min(ours_cpu) / limit_cpu,
            }
        )
        table.append(
            {
                "concurrent requests": c,
                "output tokens": w.total_new_tokens,
                "Engine s (runs)": " / ".join(f"{t:.3f}" for t in ours_t),
                "HF generate_batch s (runs)": " / ".join(f"{t:.3f}" for t in cb_t),
                "Engine speedup (fastest runs)": f"{cb_s / ours_s:.2f}x",
                "speedup range over runs": f"{min(cb_t) / max(ours_t):.2f}-{max(cb_t) / min(ours_t):.2f}x",
                "tokens identical": f"{same:.1%}",
                "matmul-only limit s": round(limit, 3),
                "Engine / limit": f"{ours_s / limit:.2f}x",
                "Engine CPU / limit CPU": f"{min(ours_cpu) / limit_cpu:.2f}x",
            }
        )
    xs = [str(c) for c in s["concurrency"]]
    fig.add_bar(name="Engine", x=xs, y=[metrics[f"c{c}_engine_throughput_tok_s"] for c in s["concurrency"]])
    hf_tok_s = [metrics[f"c{c}_hf_generate_batch_throughput_tok_s"] for c in s["concurrency"]]
    fig.add_bar(name="HF generate_batch", x=xs, y=hf_tok_s)
    limit_tok_s = [metrics[f"c{c}_output_tokens"] / metrics[f"c{c}_matmul_limit_s"] for c in s["concurrency"]]
    fig.add_scatter(name="matmul-only limit", x=xs, y=limit_tok_s, mode="lines+markers")
    fig.update_layout(
        title="benchmark model: throughput by concurrency, and the matmul-only limit (tok/s)",
        xaxis_title="concurrent requests",
        yaxis_title="tok/s",
        barmode="group",
    )
    return metrics, table, fig


def real_model_sweep(
    concurrency=(16, 64, 256), num_prompts: int = 96, output_len: int = 48, repeats: int = 2
) -> tuple[dict, list[dict]]:
    """SmolLM2-135M-Instruct: ``num_prompts`` chat questions (``max_tokens`` drawn around ``output_len``, EOS
    ignored so both sides produce every token), at most ``c`` running at once in both systems, pool sized to the
    workload, interleaved repeats; CPU time of this process (steadier than wall time on a shared machine)."""
    from cblab_teach.real import load_smollm2
    from cblab_teach.serve.loadgen_prompts import chat_prompts

    chat = load_smollm2()
    hf = chat.hf_model()
    specs = chat_prompts(num_prompts, output_len, 0.5, seed=0)
    prompts = [chat.encode_chat([{"role": "user", "content": p.prompt}]) for p in specs]
    max_new = [p.max_tokens for p in specs]
    tokens = sum(max_new)
    blocks = sum(-(-(len(p) + n) // 16) for p, n in zip(prompts, max_new))
    metrics: dict = {"real_prompts": num_prompts, "real_output_tokens": tokens}
    table = []
    for c in concurrency:
        config = EngineConfig(max_tokens_per_step=BUDGET, prefill_chunk_size=64, max_running=c, num_blocks=blocks)
        Engine(chat.model, config).generate(prompts[:2], 2)
        ours_t, cb_t = [], []
        for _ in range(repeats):
            engine = Engine(chat.model, config)
            start = time.process_time()
            ours = engine.generate(prompts, max_new)
            ours_t.append(time.process_time() - start)
            start = time.process_time()
            cb, _ = hf_continuous(hf, prompts, max_new, BUDGET, max_requests=c)
            cb_t.append(time.process_time() - start)
        limit = matmul_limit_s(chat.model, step_shapes(engine.records), clock=time.process_time)
        same = sum(x == y for a, b in zip(ours, cb) for x, y in zip(a, b)) / tokens
        ours_s, cb_s = min(ours_t), min(cb_t)
        metrics.update(
            {
                f"real_c{c}_engine_tok_per_cpu_s": tokens / ours_s,
                f"real_c{c}_hf_generate_batch_tok_per_cpu_s": tokens / cb_s,
                f"real_c{c}_speedup_vs_generate_batch": cb_s / ours_s,
                f"real_c{c}_identical_tokens_vs_generate_batch": same,
                f"real_c{c}_engine_over_matmul_limit_cpu": ours_s / limit,
            }
        )
        table.append(
            {
                "model": "SmolLM2-135M-Instruct",
                "concurrent requests": c,
                "output tokens": tokens,
                "Engine CPU s (runs)": " / ".join(f"{t:.2f}" for t in ours_t),
                "HF generate_batch CPU s (runs)": " / ".join(f"{t:.2f}" for t in cb_t),
                "Engine speedup (fastest runs)": f"{cb_s / ours_s:.2f}x",
                "tokens identical": f"{same:.1%}",
                "Engine CPU / matmul limit CPU": f"{ours_s / limit:.2f}x",
            }
        )
    return metrics, table


def run(quick: bool = False) -> dict:
    """Two model sizes: a tiny one where per-step framework cost dominates, and the benchmark model."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    s = sizes(quick)
    w = make_workload(s["num_requests"], s["prompt_len"], s["new_tokens"], vocab_size=VOCAB, seed=1, long_tail=True)
    tokens = w.total_new_tokens
    models = [("hidden 64, 2 layers", True)] + ([] if quick else [("hidden 256, 4 layers", False)])
    metrics: dict = {"requests": len(w), "output_tokens": tokens, "token_budget": BUDGET, "repeats": s["repeats"]}
    table, fig = [], go.Figure()
    for label, tiny in models:
        torch.manual_seed(0)
        hf = LlamaForCausalLM(hf_llama_config(tiny)).eval()
        r = compare(hf, w, s["batch_size"], BUDGET, s["repeats"], defaults=not quick)
        key = "tiny_" if tiny and not quick else ""
        metrics.update(
            {
                f"{key}engine_throughput_tok_s": tokens / r["engine_s"],
                f"{key}hf_generate_static_throughput_tok_s": tokens / r["generate_static_s"],
                f"{key}hf_generate_batch_throughput_tok_s": tokens / r["generate_batch_s"],
                f"{key}speedup_vs_generate_batch": r["generate_batch_s"] / r["engine_s"],
                f"{key}speedup_vs_generate_static": r["generate_static_s"] / r["engine_s"],
                f"{key}identical_requests_vs_generate_static": r["identical_requests_static"],
                f"{key}identical_requests_vs_generate_batch": r["identical_requests_batch"],
                f"{key}identical_tokens_vs_generate_static": r["identical_tokens_static"],
                f"{key}identical_tokens_vs_generate_batch": r["identical_tokens_batch"],
            }
        )
        if not quick:
            metrics[f"{key}speedup_vs_generate_batch_defaults_with_warmup"] = (
                r["generate_batch_defaults_s"] / r["engine_s"]
            )
            metrics[f"{key}identical_requests_vs_generate_batch_defaults"] = r["identical_requests_defaults"]
        rows = (
            ("cblab_teach Engine (continuous)", r["engine_s"], 1.0, 1.0),
            (
                f"HF generate, static batches of {s['batch_size']}",
                r["generate_static_s"],
                r["identical_requests_static"],
                r["identical_tokens_static"],
            ),
            (
                "HF generate_batch (continuous, pool sized, no warm-up)",
                r["generate_batch_s"],
                r["identical_requests_batch"],
                r["identical_tokens_batch"],
            ),
        ) + (
            ()
            if quick
            else (
                (
                    "HF generate_batch (continuous, defaults, warm-up timed)",
                    r["generate_batch_defaults_s"],
                    r["identical_requests_defaults"],
                    r["identical_tokens_defaults"],
                ),
            )
        )
        for name, secs, req, tok in rows:
            table.append(
                {
                    "model": label,
                    "system": name,
                    "seconds": round(secs, 3),
                    "throughput tok/s": round(tokens / secs, 1),
                    "Engine speedup": f"{secs / r['engine_s']:.2f}x",
                    "requests identical to Engine": f"{req:.0%}",
                    "tokens identical": f"{tok:.1%}",
                }
            )
        fig.add_bar(
            name=label,
            x=[row[0] for row in rows],
            y=[tokens / row[1] for row in rows],
            text=[f"{tokens / row[1]:.0f}" for row in rows],
        )
    fig.update_layout(
        title=f"same weights, same {len(w)} requests: throughput (tok/s); greedy outputs compared token by token",
        yaxis_title="tok/s",
        barmode="group",
    )
    sweep_metrics, sweep_table, sweep_fig = concurrency_sweep(quick)
    metrics.update(sweep_metrics)
    real_table: list[dict] = []
    if not quick:  # minutes on two cores, and a model CI need not have
        try:
            real_metrics, real_table = real_model_sweep()
            metrics.update(real_metrics)
        except ModelNotInstalledError as e:
            metrics["real_model_skipped"] = str(e)
    return {
        "name": "huggingface",
        "metrics": metrics,
        "figures": [fig, sweep_fig],
        "table": table + sweep_table + real_table,
    }
