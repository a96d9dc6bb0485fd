"""Advanced serving, measured: prefix caching, speculative decode, preemption under a small pool.

Each comparison runs the same workload twice in one process, with and without
the feature, checks the outputs are identical, and reports the saving.
"""

from __future__ import annotations

import time

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.workloads import make_workload


def _timed(engine: Engine, prompts, n) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    out = engine.generate(prompts, n)
    return out, time.perf_counter() - start


def prefix_caching(model: TinyLM, quick: bool) -> dict:
    """A shared system prompt: prefill tokens saved and time, cache on vs off."""
    w = make_workload(8 if quick else 48, (4, 24), (4, 16), seed=1)
    system = [3 + i % 250 for i in range(64 if quick else 256)]  # ids stay inside the 256-token vocabulary
    prompts = [system + p for p in w.prompts]
    cfg = dict(max_tokens_per_step=256, prefill_chunk_size=128, block_size=16, num_blocks=2048)
    rows = {}
    for name, on in (("off", False), ("on", True)):
        engine = Engine(model, EngineConfig(**cfg, enable_prefix_caching=on))
        warm = engine.add_request(prompts[0], 1)  # the first conversation computes the system prompt
        engine.run()
        out, secs = _timed(engine, prompts[1:], w.max_new_tokens[1:])
        rows[name] = dict(
            outputs=out,
            seconds=secs,
            prefill_tokens=sum(r.plan.prefill_tokens for r in engine.records) - engine.request(warm).prompt_len,
            hit_tokens=engine.stats.prefix_hit_tokens,
        )
    assert rows["on"]["outputs"] == rows["off"]["outputs"], "prefix caching changed an output"
    return {
        "prefix_prefill_tokens_off": rows["off"]["prefill_tokens"],
        "prefix_prefill_tokens_on": rows["on"]["prefill_tokens"],
        "prefix_tokens_saved_share": 1 - rows["on"]["prefill_tokens"] / rows["off"]["prefill_tokens"],
        "prefix_speedup": rows["off"]["seconds"] / rows["on"]["seconds"],
    }


def speculative(model: TinyLM, quick: bool) -> dict:
    """Prompt-lookup speculation on repetitive prompts: acceptance and steps saved."""
    w = make_workload(8 if quick else 32, (8, 32), (16, 48), seed=2)
    prompts = [p + p + p for p in w.prompts]  # repetitive text is where prompt lookup shines
    out = {}
    for k in (0, 2, 4, 8):
        cfg = EngineConfig(
            max_tokens_per_step=256,
            prefill_chunk_size=128,
            speculative="ngram" if k else None,
            num_speculative_tokens=max(k, 1),
        )
        engine = Engine(model, cfg)
        tokens, secs = _timed(engine, prompts, w.max_new_tokens)
        out[k] = dict(tokens=tokens, steps=len(engine.records), seconds=secs, acceptance=engine.stats.acceptance_rate)
    assert all(out[k]["tokens"] == out[0]["tokens"] for k in out), "speculation changed an output"
    return {
        **{f"spec_k{k}_steps": v["steps"] for k, v in out.items()},
        **{f"spec_k{k}_acceptance": v["acceptance"] for k, v in out.items() if k},
        **{f"spec_k{k}_speedup": out[0]["seconds"] / v["seconds"] for k, v in out.items() if k},
    }


def preemption(model: TinyLM, quick: bool) -> tuple[dict, go.Figure, list[dict]]:
    """Shrink the pool: preemptions and recomputed tokens grow, outputs do not change."""
    w = make_workload(12 if quick else 48, (8, 48), (8, 48), seed=3)
    need = max(p + n for p, n in zip(map(len, w.prompts), w.max_new_tokens))
    pools = [(need // 16 + 1) * m for m in ((1, 2, 8) if quick else (1, 2, 3, 4, 8, 16))]
    ref = None
    rows = []
    for blocks in pools:
        engine = Engine(
            model,
            EngineConfig(
                max_tokens_per_step=128, prefill_chunk_size=64, block_size=16, num_blocks=blocks, preemption=True
            ),
        )
        out, secs = _timed(engine, w.prompts, w.max_new_tokens)
        ref = ref or out
        assert out == ref, "preemption changed an output"
        useful = sum(len(p) for p in w.prompts)
        rows.append(
            dict(
                blocks=blocks,
                preemptions=engine.stats.preemptions,
                seconds=secs,
                recompute_share=engine.stats.recomputed_tokens / useful,
            )
        )
    fig = go.Figure(
        [
            go.Scatter(x=[r["blocks"] for r in rows], y=[r["preemptions"] for r in rows], name="preemptions"),
            go.Scatter(
                x=[r["blocks"] for r in rows],
                y=[r["recompute_share"] for r in rows],
                name="recomputed / prompt tokens",
                yaxis="y2",
            ),
        ],
        layout=dict(
            title="Preemption as the KV pool shrinks (outputs identical)",
            xaxis_title="KV blocks in the pool",
            yaxis_title="preemptions",
            yaxis2=dict(overlaying="y", side="right", title="recompute share"),
        ),
    )
    metrics = {f"preempt_{r['blocks']}_blocks_preemptions": r["preemptions"] for r in rows}
    metrics |= {f"preempt_{r['blocks']}_blocks_recompute_share": r["recompute_share"] for r in rows}
    return metrics, fig, rows


def run(quick: bool = False) -> dict:
    model = TinyLM(ModelConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=344), seed=0)
    metrics = prefix_caching(model, quick) | speculative(model, quick)
    pre_metrics, fig, rows = preemption(model, quick)
    metrics |= pre_metrics
    spec = go.Figure(
        go.Bar(x=[f"k={k}" for k in (0, 2, 4, 8)], y=[metrics[f"spec_k{k}_steps"] for k in (0, 2, 4, 8)]),
        layout=dict(title="Steps to serve a repetitive workload, by speculative tokens per step", yaxis_title="steps"),
    )
    return {"name": "advanced", "metrics": metrics, "figures": [fig, spec], "table": rows}
