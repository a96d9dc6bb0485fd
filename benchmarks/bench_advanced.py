"""Advanced serving, measured: prefix caching, speculative decode, preemption under a small pool,
the draft-model proposer's own KV cache, parallel sampling with copy-on-write, sampled speculation.

Each comparison runs the same workload twice in one process, with and without
the feature, checks the outputs are identical, and reports the saving.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import plotly.graph_objects as go
import torch

from cblab_teach import Engine, EngineConfig, ModelConfig, SamplingParams, TinyLM
from cblab_teach.demo_model import load_char_model
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


@torch.no_grad()
def propose_by_recompute(draft_model: TinyLM, requests, k) -> dict[int, list[int]]:
    """The plain way, before the draft proposer kept a cache: a fresh engine on the draft model prefills every
    request's whole history, then decodes its guesses."""
    active = [(r, n) for r, n in zip(requests, k) if n > 0]
    if not active:
        return {}
    longest = max(r.num_tokens + n for r, n in active)
    engine = Engine(draft_model, EngineConfig(max_tokens_per_step=longest * len(active), prefill_chunk_size=longest,
                                              kv_layout="dense", num_blocks=len(active) * longest + 1, block_size=1))
    ids = {engine.add_request(r.all_ids, n): r.request_id for r, n in active}
    engine.run()
    return {rid: engine.output(i) for i, rid in ids.items()}


def _cpu(fn):
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def draft_proposer(model: TinyLM, quick: bool) -> dict:
    """The draft model's cost per step: a fresh engine re-prefilling every history (``propose_by_recompute``,
    the old way) against :class:`DraftModelProposer`, which keeps its own KV cache. Both are called on the
    same requests at every step of one speculative run (which goes first alternates); CPU time."""
    draft = TinyLM(ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=172,
                               vocab_size=model.config.vocab_size), seed=1)  # fmt: skip
    w = make_workload(4 if quick else 8, (16, 48) if quick else (64, 192), (8, 8) if quick else (48, 48), seed=4)
    engine = Engine(model, EngineConfig(max_tokens_per_step=512, prefill_chunk_size=256, speculative="draft",
                                        num_speculative_tokens=4), draft_model=draft)  # fmt: skip
    kept = engine.proposer
    steps: list[dict] = []

    class SideBySide:
        def propose(self, requests, k):
            if not any(n > 0 for n in k):
                return kept.propose(requests, k)
            before = kept.computed_tokens
            calls = [("cached", lambda: kept.propose(requests, k)),
                     ("recompute", lambda: propose_by_recompute(draft, requests, k))]  # fmt: skip
            out = {}
            for name, fn in calls if len(steps) % 2 else calls[::-1]:
                out[name] = _cpu(fn)
            steps.append(dict(
                cached_s=out["cached"][1], recompute_s=out["recompute"][1],
                cached_tokens=kept.computed_tokens - before,
                recompute_tokens=sum(r.num_tokens + n - 1 for r, n in zip(requests, k) if n > 0),
                same=out["cached"][0] == out["recompute"][0],
            ))  # fmt: skip
            return out["cached"][0]

    engine.proposer = SideBySide()
    engine.generate(w.prompts, w.max_new_tokens)
    ratios = sorted(s["recompute_s"] / s["cached_s"] for s in steps)
    keys = ("cached_s", "recompute_s", "cached_tokens", "recompute_tokens")
    total = {key: sum(s[key] for s in steps) for key in keys}
    return {
        "draft_steps": len(steps),
        "draft_cached_tokens_per_step": total["cached_tokens"] / len(steps),
        "draft_recompute_tokens_per_step": total["recompute_tokens"] / len(steps),
        "draft_cached_ms_per_step": 1e3 * total["cached_s"] / len(steps),
        "draft_recompute_ms_per_step": 1e3 * total["recompute_s"] / len(steps),
        "draft_time_ratio_recompute_over_cached": total["recompute_s"] / total["cached_s"],
        "draft_step_ratio_p10": ratios[len(ratios) // 10],
        "draft_step_ratio_p50": statistics.median(ratios),
        "draft_step_ratio_p90": ratios[(9 * len(ratios)) // 10],
        "draft_guesses_identical_share": sum(s["same"] for s in steps) / len(steps),
        "draft_acceptance": engine.stats.acceptance_rate,
    }


def peak_blocks(engine: Engine) -> int:
    """Most distinct KV blocks held at once (a block shared by several tables counts once)."""
    return max(len({b for t in r.block_tables.values() for b in t}) for r in engine.records)


def parallel_sampling(model: TinyLM, quick: bool) -> dict:
    """``n`` samples of one long prompt: a group sharing the prompt's blocks (copy-on-write) against ``n``
    separate requests with the same seeds. Tokens identical; blocks, prompt tokens computed, time."""
    n, new = (4, 8) if quick else (8, 32)
    prompt = [3 + (7 * i) % 250 for i in range(60 if quick else 250)]  # not a whole number of blocks of 16
    sampling = SamplingParams(temperature=1.0, seed=5)
    cfg = EngineConfig(max_tokens_per_step=256, prefill_chunk_size=128, block_size=16, num_blocks=512)
    group = Engine(model, cfg)
    ids, group_s = _cpu(lambda: group.add_request_group(prompt, n, max_new_tokens=new, sampling=sampling))
    _, run_s = _cpu(group.run)
    separate = Engine(model, cfg)
    params = [dataclasses.replace(sampling, seed=sampling.seed + i) for i in range(n)]
    sep_out, sep_s = _cpu(lambda: separate.generate([prompt] * n, new, params))
    assert [group.output(i) for i in ids] == sep_out, "a group's sequence differs from the request alone"
    prefill = {name: sum(r.plan.prefill_tokens for r in e.records) for name, e in (("group", group), ("sep", separate))}
    return {
        "cow_n": n,
        "cow_prompt_tokens": len(prompt),
        "cow_group_peak_blocks": peak_blocks(group),
        "cow_separate_peak_blocks": peak_blocks(separate),
        "cow_blocks_saved_share": 1 - peak_blocks(group) / peak_blocks(separate),
        "cow_copies": group.stats.cow_copies,
        "cow_group_prefill_tokens": prefill["group"],
        "cow_separate_prefill_tokens": prefill["sep"],
        "cow_cpu_ratio_separate_over_group": sep_s / (group_s + run_s),
    }


def sampled_speculation(quick: bool) -> dict:
    """Prompt lookup for *sampled* requests, on the trained demo model (a random model's near-flat
    distributions never repeat an n-gram): acceptance and steps by temperature; tokens identical with and
    without speculation (the noise is keyed by seed and position)."""
    model, tok = load_char_model()
    lines = ["Simple is ", "Flat is ", "Beautiful is ", "Explicit is ", "Sparse is ", "Readability ",
             "Errors should ", "Now is ", "Although ", "If the ", "Namespaces ", "In the face of "]  # fmt: skip
    prompts = [tok.encode(line) for line in lines[: 4 if quick else len(lines)]]
    new = 24 if quick else 96
    out = {}
    for label, temp in (("greedy", 0.0), ("t05", 0.5), ("t10", 1.0)):
        params = [SamplingParams(temperature=temp, seed=i) for i in range(len(prompts))]
        runs = {}
        for spec in ("ngram", None):
            engine = Engine(model, EngineConfig(max_tokens_per_step=256, speculative=spec, num_speculative_tokens=4))
            runs[spec] = (engine.generate(prompts, new, params), engine)
        assert runs["ngram"][0] == runs[None][0], f"speculation changed a sampled output (temperature {temp})"
        e = runs["ngram"][1]
        out |= {
            f"sampled_{label}_acceptance": e.stats.acceptance_rate,
            f"sampled_{label}_draft_tokens": e.stats.draft_tokens,
            f"sampled_{label}_steps": len(e.records),
            f"sampled_{label}_plain_steps": len(runs[None][1].records),
        }
    return out


def run(quick: bool = False) -> dict:
    model = TinyLM(ModelConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=344), seed=0)
    metrics = prefix_caching(model, quick) | speculative(model, quick)
    pre_metrics, fig, rows = preemption(model, quick)
    metrics |= pre_metrics
    metrics |= draft_proposer(model, quick) | parallel_sampling(model, quick) | sampled_speculation(quick)
    spec = go.Figure(
        go.Bar(x=[f"k={k}" for k in (0, 2, 4, 8)], y=[metrics[f"spec_k{k}_steps"] for k in (0, 2, 4, 8)]),
        layout=dict(title="Steps to serve a repetitive workload, by speculative tokens per step", yaxis_title="steps"),
    )
    cow = go.Figure(
        go.Bar(x=[f"{metrics['cow_n']} separate requests", f"a group of {metrics['cow_n']} (copy-on-write)"],
               y=[metrics["cow_separate_peak_blocks"], metrics["cow_group_peak_blocks"]]),
        layout=dict(title=f"Parallel sampling of a {metrics['cow_prompt_tokens']}-token prompt: peak KV blocks "
                    "(blocks of 16)", yaxis_title="distinct blocks held at the peak"),
    )  # fmt: skip
    return {"name": "advanced", "metrics": metrics, "figures": [fig, spec, cow], "table": rows}
