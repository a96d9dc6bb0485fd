"""Where a step's time goes: a ``torch.profiler`` breakdown, and the matmul-only limit to hold it against.

:func:`profile_breakdown` serves a workload with ``torch.profiler`` on and labels five regions of every step
with ``record_function`` (wrapped around the engine's own methods for that run only, nothing changes in the
engine): the matrix multiplies (every ``nn.Linear``), attention, KV reads and writes, the rest of the model's math
(embedding, RMSNorm, RoPE, SwiGLU's activation) and what is left of the step, Python bookkeeping (scheduling,
building the batch, sampling, commit).

:func:`matmul_limit_s` times only the matrix multiplies the same steps need (q/k/v/o, gate/up/down at the
step's token count, the LM head at its sample rows) with the model's own weights: no engine on this hardware
can do the same math in less, so ``step time / limit`` says how much is left to win.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

CATEGORIES = ("matmuls", "attention", "KV reads and writes", "other model math", "Python and bookkeeping")


@contextmanager
def _labelled(obj, name: str, label: str):
    """Run ``obj.name`` inside ``record_function(label)`` for the duration of the block."""
    own = name in vars(obj)
    original = getattr(obj, name)

    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    setattr(obj, name, wrapped)
    try:
        yield
    finally:
        if own:
            setattr(obj, name, original)
        else:
            delattr(obj, name)


def step_shapes(records: Iterable) -> list[tuple[int, int]]:
    """``(tokens, sample rows)`` of every step: the shapes its matrix multiplies run at."""
    return [(r.plan.used, sum(c.num_logits for c in r.plan.chunks)) for r in records]


def _linears(model) -> tuple[list[nn.Linear], nn.Linear]:
    body = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"]
    return body, model.lm_head


@torch.no_grad()
def matmul_limit_s(
    model, shapes: Iterable[tuple[int, int]], repeats: int = 3, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds the steps' matrix multiplies alone take (each distinct shape timed ``repeats`` times, fastest kept).

    ``clock=time.process_time`` counts this process's CPU time only: steadier on a machine other jobs share.
    """
    body, head = _linears(model)
    return _time_linears([lin.weight for lin in body], head.weight, model, shapes, repeats, clock)


def fused_weights(model) -> list[torch.Tensor]:
    """Each layer's q|k|v and gate|up weights concatenated, with o and down: four matmuls a layer instead of
    seven, the fusion production engines do (one QKV and one gate-up projection)."""
    out = []
    for block in model.layers:
        a, m = block.self_attn, block.mlp
        out += [torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), a.o_proj.weight]
        out += [torch.cat([m.gate_proj.weight, m.up_proj.weight]), m.down_proj.weight]
    return out


@torch.no_grad()
def fused_matmul_s(
    model, shapes: Iterable[tuple[int, int]], repeats: int = 3, clock: Callable[[], float] = time.perf_counter
) -> float:
    """:func:`matmul_limit_s` with the projections fused (:func:`fused_weights`): the same math in fewer,
    wider matmuls. ``fused / limit`` says whether fusing them would pay on this hardware."""
    return _time_linears(fused_weights(model), model.lm_head.weight, model, shapes, repeats, clock)


def _time_linears(weights, head_weight, model, shapes, repeats: int, clock) -> float:
    """Seconds of ``x @ W.T`` for every weight at each step's token count, plus the LM head at its sample rows."""
    hidden = model.config.hidden_size
    counts: dict[tuple[int, int], int] = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    total = 0.0
    for (tokens, rows), n in counts.items():
        xs = {w.shape[1]: torch.randn(tokens, w.shape[1], dtype=model.dtype, device=model.device) for w in weights}
        h = torch.randn(rows, hidden, dtype=model.dtype, device=model.device)

        def once(xs=xs, h=h):
            for w in weights:
                nn.functional.linear(xs[w.shape[1]], w)
            nn.functional.linear(h, head_weight)

        once()
        best = float("inf")
        for _ in range(repeats):
            start = clock()
            once()
            best = min(best, clock() - start)
        total += n * best
    return total


def profile_breakdown(make_engine: Callable, prompts, max_new_tokens) -> dict:
    """Serve once under ``torch.profiler``; seconds per category of :data:`CATEGORIES`, and the top ops.

    Returns ``{"seconds": {category: s}, "step_s": total, "records": [...], "top_ops": [(name, self s), ...]}``.
    """
    from ..model import tiny_lm

    engine = make_engine()
    for p, n in zip(prompts, max_new_tokens):
        engine.add_request(p, n)
    body, head = _linears(engine.model)
    with ExitStack() as stack:
        stack.enter_context(_labelled(engine.model, "forward", "cb::forward"))
        stack.enter_context(_labelled(engine.model, "attend_cached", "cb::attention"))
        stack.enter_context(_labelled(tiny_lm.StepContext, "__init__", "cb::step_context"))
        stack.enter_context(_labelled(engine.kv, "read", "cb::kv_read"))
        stack.enter_context(_labelled(engine.kv, "write", "cb::kv_write"))
        stack.enter_context(_labelled(tiny_lm, "gather_by_flatten", "cb::kv_read"))
        for lin in [*body, head]:
            stack.enter_context(_labelled(lin, "forward", "cb::matmul"))
        prof = stack.enter_context(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]))
        records = engine.run()
    label = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("cb::")}
    step_s = sum(r.duration_s for r in records)
    forward, attention = label.get("cb::forward", 0.0), label.get("cb::attention", 0.0)
    read, write, matmul = label.get("cb::kv_read", 0.0), label.get("cb::kv_write", 0.0), label.get("cb::matmul", 0.0)
    context = label.get("cb::step_context", 0.0)  # slots and layout of the step: bookkeeping, not math
    seconds = {  # reads happen inside attention, writes beside it: each counted once
        "matmuls": matmul,
        "attention": max(0.0, attention - read),
        "KV reads and writes": read + write,
        "other model math": max(0.0, forward - matmul - attention - write - context),
        "Python and bookkeeping": max(0.0, step_s - forward + context),
    }
    ops = sorted(
        ((e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages() if not e.key.startswith("cb::")),
        key=lambda kv_: -kv_[1],
    )
    return {"seconds": seconds, "step_s": step_s, "records": records, "top_ops": ops[:12]}


def _dense_layers(model, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's math except attention (norms, projections, RoPE, SwiGLU, residuals): what a compiler can
    fuse. The queries stand in for attention's output, which has their shape. Returns the last hidden state and
    each layer's k and v (what a step writes to the cache)."""
    n, kv = x.shape[0], []
    for block in model.layers:
        q, k, v = model.qkv(block, block.input_layernorm(x), cos, sin)
        kv += [k, v.reshape(n, -1)]
        x = x + block.self_attn.o_proj(q.reshape(n, -1))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return [x, *kv]


@torch.no_grad()
def compiled_layers_s(
    model, shapes: Iterable[tuple[int, int]], repeats: int = 3, clock: Callable[[], float] = time.perf_counter
) -> dict:
    """The layers' math outside attention (:func:`_dense_layers`) at each step's token count, eager and under
    ``torch.compile(dynamic=True)`` (one compile serves every token count), interleaved, fastest kept.

    Returns ``{"eager_s", "compiled_s", "compile_s", "max_abs_diff"}``: whether a compiled step would pay on this
    hardware, what compiling costs first, and whether it computes the same numbers (fused kernels round differently).
    """
    counts: dict[int, int] = {}
    for tokens, _ in shapes:
        counts[tokens] = counts.get(tokens, 0) + 1
    compiled = torch.compile(_dense_layers, dynamic=True)
    cfg, g = model.config, torch.Generator(device="cpu").manual_seed(0)

    def inputs(n: int):
        x = torch.randn(n, cfg.hidden_size, generator=g).to(model.dtype)
        pos = torch.randint(0, cfg.max_position, (n,), generator=g).to(model.device)
        return (x.to(model.device), *model.rotary.cos_sin(pos, model.dtype))

    start = time.perf_counter()
    for n in sorted(counts)[:2]:  # the first two sizes: the specialised compile, then the dynamic one
        compiled(model, *inputs(n))
    compile_s = time.perf_counter() - start
    eager_s = compiled_s = diff = 0.0
    for n, times in counts.items():
        args = inputs(n)
        best = {"eager": float("inf"), "compiled": float("inf")}
        for _ in range(repeats):
            for name, fn in (("eager", _dense_layers), ("compiled", compiled)):
                t = clock()
                out = fn(model, *args)
                best[name] = min(best[name], clock() - t)
        diff = max(diff, *((a - b).abs().max().item() for a, b in zip(_dense_layers(model, *args), out)))
        eager_s += times * best["eager"]
        compiled_s += times * best["compiled"]
    return {"eager_s": eager_s, "compiled_s": compiled_s, "compile_s": compile_s, "max_abs_diff": diff}
