"""Many LoRA adapters: one engine batching every adapter together, against one engine per adapter in turn.

The same workload (requests spread over several adapters and the base model) is served

* **mixed**: one :class:`Engine` with every adapter added; each step batches requests of all
  adapters, the base projection once for all rows plus each adapter's low-rank delta
  (the S-LoRA / Punica idea, :mod:`cblab_teach.advanced.lora`);
* **separate**: one engine per adapter on a model with that adapter merged into its weights
  (no LoRA cost per step at all), run one after another, as a server that keeps one model
  per adapter must when it has one device.

Both run in the same process, interleaved, three times; the fastest of each is kept and the
spread of the ratio over the repeats is the noise. Outputs of the two are compared. Time is
the CPU time of the process (``time.process_time``; torch on the runner's single thread), so
pauses imposed by other load on a shared machine do not count; throughput is output tokens
per CPU second. A third run, one engine with no adapters at all, is the floor: the gap to it
is what the low-rank deltas cost.
"""

from __future__ import annotations

import time

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig
from cblab_teach.advanced.lora import LoRAAdapter
from cblab_teach.workloads import make_workload

from .common import VOCAB, bench_model


def sizes(quick: bool) -> dict:
    if quick:
        return dict(adapters=3, per_adapter=3, base=2, prompt=(8, 24), new=(8, 16), rank=4, repeats=1)
    return dict(adapters=4, per_adapter=12, base=8, prompt=(16, 64), new=(32, 64), rank=8, repeats=3)


def _serve(engine: Engine, jobs: list[tuple[list[int], int, str | None]]) -> tuple[list[list[int]], int]:
    ids = [engine.add_request(p, n, adapter=a) for p, n, a in jobs]
    engine.run()
    return [engine.output(i) for i in ids], len(engine.records)


def run(quick: bool = False) -> dict:
    s = sizes(quick)
    model = bench_model(quick)
    names = [f"lora{i}" for i in range(s["adapters"])]
    adapters = {
        n: LoRAAdapter.random(model, rank=s["rank"], targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=i)
        for i, n in enumerate(names)
    }
    merged = {n: a.merged_into(model) for n, a in adapters.items()} | {None: model}
    route = [n for n in names for _ in range(s["per_adapter"])] + [None] * s["base"]
    w = make_workload(len(route), s["prompt"], s["new"], vocab_size=VOCAB, seed=7)
    order = sorted(range(len(route)), key=lambda i: (i * 7) % len(route))  # adapters interleaved in arrival order
    jobs = [(w.prompts[i], w.max_new_tokens[i], route[i]) for i in order]
    cfg = EngineConfig(max_tokens_per_step=256, prefill_chunk_size=64, max_running=64)
    tokens = sum(n for _, n, _ in jobs)

    def mixed() -> tuple[list[list[int]], int]:
        engine = Engine(model, cfg)
        for n, a in adapters.items():
            engine.add_adapter(n, a)
        return _serve(engine, jobs)

    def separate() -> tuple[list[list[int]], int]:
        outputs: dict[int, list[int]] = {}
        steps = 0
        for name in [*names, None]:
            mine = [k for k, job in enumerate(jobs) if job[2] == name]
            out, n = _serve(Engine(merged[name], cfg), [(jobs[k][0], jobs[k][1], None) for k in mine])
            outputs.update(zip(mine, out))
            steps += n
        return [outputs[k] for k in range(len(jobs))], steps

    def base_only() -> tuple[list[list[int]], int]:
        return _serve(Engine(model, cfg), [(p, n, None) for p, n, _ in jobs])

    times: dict[str, list[float]] = {"mixed": [], "separate": [], "base_only": []}
    results = {}
    mixed()  # warm-up
    for _ in range(s["repeats"]):
        for name, fn in (("mixed", mixed), ("separate", separate), ("base_only", base_only)):
            start = time.process_time()
            results[name] = fn()
            times[name].append(time.process_time() - start)
    ratios = [sep / mix for sep, mix in zip(times["separate"], times["mixed"])]
    best = {k: min(v) for k, v in times.items()}
    (mixed_out, mixed_steps), (sep_out, sep_steps) = results["mixed"], results["separate"]
    identical = sum(a == b for a, b in zip(mixed_out, sep_out)) / len(jobs)
    lora_params = sum(a.num_parameters for a in adapters.values())
    model_params = sum(p.numel() for p in model.parameters())
    metrics = {
        "requests": len(jobs),
        "adapters": len(names),
        "output_tokens": tokens,
        "mixed_tok_s": tokens / best["mixed"],
        "separate_tok_s": tokens / best["separate"],
        "base_only_tok_s": tokens / best["base_only"],
        "throughput_ratio_mixed_over_separate": best["separate"] / best["mixed"],
        "ratio_min_over_repeats": min(ratios),
        "ratio_max_over_repeats": max(ratios),
        "lora_overhead_share": best["mixed"] / best["base_only"] - 1,
        "mixed_steps": mixed_steps,
        "separate_steps": sep_steps,
        "outputs_identical_share": identical,
        "adapter_params_share_of_model": lora_params / len(names) / model_params,
    }
    rows = [
        {"system": "one engine, all adapters batched", "seconds": best["mixed"], "tok/s": metrics["mixed_tok_s"],
         "steps": mixed_steps},
        {"system": "one engine per adapter (merged), in turn", "seconds": best["separate"],
         "tok/s": metrics["separate_tok_s"], "steps": sep_steps},
        {"system": "one engine, no adapters (the floor)", "seconds": best["base_only"],
         "tok/s": metrics["base_only_tok_s"], "steps": results["base_only"][1]},
    ]  # fmt: skip
    fig = go.Figure(
        go.Bar(x=[r["system"] for r in rows], y=[r["tok/s"] for r in rows]),
        layout=dict(
            title=f"{len(names)} LoRA adapters + base, {len(jobs)} requests: throughput "
            f"(mixed / separate = {metrics['throughput_ratio_mixed_over_separate']:.2f}x)",
            yaxis_title="output tokens / s",
        ),
    )
    return {"name": "lora", "metrics": metrics, "figures": [fig], "table": rows}
