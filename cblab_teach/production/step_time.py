"""How long one engine step would take on a real GPU: a roofline per operator, summed.

A step is a batch of decode tokens (one per request, each attending to its context) and prefill chunks (``length``
prompt tokens that follow ``context_before`` tokens already in the KV cache). Per operator:

* ``qkv``, ``o_proj``, ``mlp``, ``lm_head``: matmuls. FLOPs ``2 x tokens x weights``; bytes: the weights, read
  **once per step** whatever the batch, plus the activations in and out. The LM head runs only on the rows that are
  sampled (one per request by default).
* ``attention``: FLOPs ``4 x q_heads x head_dim`` per (query, key) pair per layer; bytes: every key and value a
  request attends to, read once per request per step (by context length), plus the new tokens' K/V written.
* ``embedding``: a row lookup, not a matmul: ``tokens x hidden`` bytes, no FLOPs (the roofline used to count the
  whole table as read and multiplied; ``ModelShape.matmul_params`` leaves it out).
* ``launch``: a fixed cost per step (kernel launches, the host's scheduling and sampling), in seconds, plus an
  optional cost per request in the step (the host's bookkeeping grows with the batch).

Each operator takes ``max(FLOPs / (peak x efficiency), bytes / (bandwidth x efficiency))`` and **the step is the
sum**: no overlap between operators is assumed (a real engine overlaps some, so this leans slow where two bounds are
close). Assumptions, stated so they can be argued with: weights and KV in ``dtype`` (``kv_dtype`` if given),
activations in 16 bits (32 for ``fp32``), attention at the 16-bit (or fp32) peak; norms, RoPE, residual adds and
the Q/O tensors of attention are left out (elementwise, small next to the weights and the KV); the efficiency
factors of :data:`DEFAULT_EFFICIENCY` are round figures, not measurements (:data:`IDEAL` is the spec sheet itself).

Against a published measurement: vLLM's nightly benchmark (https://buildkite.com/vllm/performance-benchmark/builds/9515,
"latency_llama8B_tp1") reports 833 ms mean end-to-end latency for Llama-3.1-8B on one H200 at batch 8, 32 prompt
tokens, 128 output tokens. This model gives 0.40 s with :data:`IDEAL` and 0.63 s with the defaults (run
:func:`vllm_latency_check`): the measured engine spends about 1.3x the default's time. vLLM's own profile of
Llama 3 8B on one H100 (https://blog.vllm.ai/2024/09/05/perf-update.html) found most of each step outside GPU
execution at that time (33 % in the HTTP server, 29 % in scheduling), which is what ``launch`` stands for here and
why small batches are the hardest case for any roofline. ``benchmarks/bench_step_time.py`` checks the same model
against the engine's own steps on a CPU whose peak rates it measures (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ._lookup import as_gpu, as_shape, dtype_bytes
from .gpus import GPUSpec
from .memory import kv_bytes_per_token
from .models import ModelShape
from .roofline import peak_flops

OPERATORS = ("embedding", "qkv", "attention", "o_proj", "mlp", "lm_head", "launch")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the spec sheet a kernel reaches, and the fixed cost of one step (seconds)."""

    matmul: float = 0.7  # of peak FLOP/s, for the GEMMs
    attention: float = 0.5  # of peak FLOP/s, for attention's two batched products
    bandwidth: float = 0.8  # of the spec bandwidth, for streaming weights and KV
    launch_s: float = 1e-3  # per step: launches, scheduling, sampling
    per_request_s: float = 0.0  # per request in the step: the host's bookkeeping (no published figure: 0 here)

    def __post_init__(self) -> None:
        for name in ("matmul", "attention", "bandwidth"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= 1:
                raise ConfigError(f"Efficiency.{name} must be a number in (0, 1], got {value!r}")
        for name in ("launch_s", "per_request_s"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"Efficiency.{name} must be a finite number >= 0, got {value!r}")


IDEAL = Efficiency(matmul=1.0, attention=1.0, bandwidth=1.0, launch_s=0.0)  # the back-of-envelope: spec sheet only
DEFAULT_EFFICIENCY = Efficiency()


@dataclass(frozen=True)
class OpTime:
    """One operator of a step: its work, its traffic, and the time the slower of the two takes."""

    name: str
    flops: float
    bytes: float
    compute_s: float
    memory_s: float
    fixed_s: float = 0.0

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s) + self.fixed_s

    @property
    def bound(self) -> str:
        if not self.flops and not self.bytes:
            return "fixed"
        return "compute" if self.compute_s > self.memory_s else "memory"


@dataclass(frozen=True)
class StepTime:
    """A step's predicted time: ``.seconds`` is the sum of its operators (no overlap)."""

    ops: tuple[OpTime, ...]

    @property
    def seconds(self) -> float:
        return sum(op.seconds for op in self.ops)

    @property
    def breakdown(self) -> dict[str, float]:
        """Operator name -> seconds."""
        return {op.name: op.seconds for op in self.ops}

    @property
    def flops(self) -> float:
        return sum(op.flops for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op.bytes for op in self.ops)

    def op(self, name: str) -> OpTime:
        for o in self.ops:
            if o.name == name:
                return o
        raise ConfigError(f"no operator {name!r}; accepted: {list(OPERATORS)}")

    def __repr__(self) -> str:
        parts = ", ".join(f"{o.name} {o.seconds * 1e3:.3g} ms ({o.bound})" for o in self.ops)
        return f"StepTime({self.seconds * 1e3:.3g} ms: {parts})"


def _check_step(decode_contexts: Iterable[int], prefill_chunks: Iterable[tuple[int, int]]):
    decodes = list(decode_contexts)
    for c in decodes:
        if not _is_count(c, 1):
            raise ConfigError(f"decode_contexts: a context is an int >= 1 (keys attended, its own included), got {c!r}")
    chunks = []
    for chunk in prefill_chunks:
        if not isinstance(chunk, (tuple, list)) or len(chunk) != 2:
            raise ConfigError(f"prefill_chunks: each chunk is (length, context_before), got {chunk!r}")
        length, before = chunk
        if not _is_count(length, 1) or not _is_count(before, 0):
            raise ConfigError(
                f"prefill_chunks: length must be an int >= 1 and context_before an int >= 0, got {tuple(chunk)!r}"
            )
        chunks.append((length, before))
    if not decodes and not chunks:
        raise ConfigError("a step needs at least one decode context or prefill chunk, got neither")
    return decodes, chunks


def _dense_widths(s: ModelShape) -> tuple[int, int, int]:
    if s.is_mla or s.hidden is None or s.intermediate is None or s.vocab is None:
        raise ConfigError(
            f"step_time splits dense grouped-query models by operator and needs hidden, intermediate and vocab; "
            f"ModelShape {s.name!r} has hidden={s.hidden!r}, intermediate={s.intermediate!r}, vocab={s.vocab!r}"
            + (" and MLA attention" if s.is_mla else "")
        )
    return s.hidden, s.intermediate, s.vocab


def _sum_min(lo: int, hi: int, cap: int) -> int:
    """``sum(min(k, cap) for k in range(lo, hi + 1))`` in closed form."""
    if hi < lo:
        return 0
    top = min(hi, cap)
    below = (top * (top + 1) - (lo - 1) * lo) // 2 if top >= lo else 0
    return below + max(0, hi - max(lo - 1, cap)) * cap


def attention_pairs(shape: ModelShape | str, decode_contexts: Sequence[int], prefill_chunks) -> tuple[int, int]:
    """(query, key) pairs summed over layers, and KV tokens read summed over layers, for one step.

    A decode token attends to its ``context`` keys; query ``i`` of a chunk ``(length, before)`` to ``before + i + 1``
    keys. Sliding-window layers see at most ``sliding_window`` keys per query and read only those."""
    s = as_shape(shape)
    full, window = s.layers - s.sliding_layers, s.sliding_window or 1
    pairs = reads = 0
    for c in decode_contexts:
        pairs += full * c + s.sliding_layers * min(c, window)
        reads += full * c + s.sliding_layers * min(c, window)
    for length, before in prefill_chunks:
        end = before + length
        pairs += full * (length * before + length * (length + 1) // 2)
        pairs += s.sliding_layers * _sum_min(before + 1, end, window)
        reads += full * end + s.sliding_layers * min(end, window + length - 1)
    return pairs, reads


def step_time(
    model: ModelShape | str,
    gpu: GPUSpec | str,
    decode_contexts: Iterable[int] = (),
    prefill_chunks: Iterable[tuple[int, int]] = (),
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    logits_rows: int | None = None,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
) -> StepTime:
    """Predicted time of one step of ``model`` on ``gpu`` (names from ``MODEL_SHAPES``/``GPUS`` or the objects).

    ``decode_contexts``: keys each decoding request attends to (its cached tokens plus its new one);
    ``prefill_chunks``: ``(length, context_before)`` per prefill chunk; ``logits_rows``: rows the LM head computes
    (default: one per request in the step). See the module docstring for the model and its assumptions."""
    s, g = as_shape(model), as_gpu(gpu)
    w_bytes, kv_per_token = dtype_bytes(dtype), kv_bytes_per_token(s, kv_dtype or dtype)
    if not isinstance(efficiency, Efficiency):
        raise ConfigError(f"efficiency must be an Efficiency, got {efficiency!r}")
    decodes, chunks = _check_step(decode_contexts, prefill_chunks)
    hidden, inter, vocab = _dense_widths(s)
    requests = len(decodes) + len(chunks)
    rows = requests if logits_rows is None else logits_rows
    if not _is_count(rows, 0):
        raise ConfigError(f"logits_rows must be None or an int >= 0, got {logits_rows!r}")
    tokens = len(decodes) + sum(length for length, _ in chunks)
    act = 4 if dtype == "fp32" else 2
    mm_peak = peak_flops(g, dtype) * efficiency.matmul
    attn_peak = peak_flops(g, "fp32" if dtype == "fp32" else "bf16") * efficiency.attention
    bandwidth = g.bandwidth_bytes_per_s * efficiency.bandwidth

    def op(name: str, flops: float, moved: float, peak: float) -> OpTime:
        return OpTime(name, flops, moved, flops / peak, moved / bandwidth)

    def linear(name: str, n: int, d_in: int, d_out: int, copies: int) -> OpTime:
        """``copies`` matrices of ``d_in x d_out`` applied to ``n`` rows."""
        weights = copies * d_in * d_out
        return op(name, 2 * n * weights, weights * w_bytes + copies * n * (d_in + d_out) * act, mm_peak)

    q, kv = s.q_heads * s.head_dim, s.kv_heads * s.head_dim
    pairs, reads = attention_pairs(s, decodes, chunks)
    per_layer_kv = kv_per_token / s.layers
    ops = (
        OpTime("embedding", 0.0, tokens * hidden * w_bytes, 0.0, tokens * hidden * w_bytes / bandwidth),
        linear("qkv", tokens, hidden, q + 2 * kv, s.layers),
        op("attention", pairs * 4 * s.q_heads * s.head_dim, (reads + tokens * s.layers) * per_layer_kv, attn_peak),
        linear("o_proj", tokens, q, hidden, s.layers),
        linear("mlp", tokens, hidden, inter, 3 * s.layers),  # gate, up (hidden -> inter) and down, same size each
        linear("lm_head", rows, hidden, vocab, 1),
        OpTime("launch", 0.0, 0.0, 0.0, 0.0, efficiency.launch_s + efficiency.per_request_s * requests),
    )
    return StepTime(ops)


def step_args(plan_or_record) -> tuple[list[int], list[tuple[int, int]], int]:
    """``(decode_contexts, prefill_chunks, logits_rows)`` of an engine step (a ``StepRecord`` or ``StepPlan``).

    A one-token decode chunk attends to ``chunk.end`` keys; every other chunk (a prefill chunk, or a decode chunk
    verifying speculative drafts) is ``(length, start)``."""
    plan = getattr(plan_or_record, "plan", plan_or_record)
    chunks = getattr(plan, "chunks", None)
    if chunks is None:
        raise ConfigError(f"expected a StepRecord or StepPlan, got {plan_or_record!r}")
    decodes = [c.end for c in chunks if c.kind == "decode" and c.length == 1]
    prefill = [(c.length, c.start) for c in chunks if not (c.kind == "decode" and c.length == 1)]
    return decodes, prefill, sum(c.num_logits for c in chunks)


def step_time_from_record(
    record,
    model: ModelShape | str,
    gpu: GPUSpec | str,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
) -> StepTime:
    """:func:`step_time` of the step an engine recorded (a ``StepRecord``, or the ``StepPlan`` about to run):
    the same schedule, timed as if ``model`` ran it on ``gpu``. The LM head computes only the rows the step samples."""
    decodes, prefill, rows = step_args(record)
    return step_time(model, gpu, decodes, prefill, dtype, kv_dtype, rows, efficiency)


def vllm_latency_check(efficiency: Efficiency = DEFAULT_EFFICIENCY) -> tuple[float, float]:
    """(predicted, measured) seconds of vLLM's ``latency_llama8B_tp1`` test on an H200 (module docstring): 8
    requests of 32 prompt tokens prefilled in one step, then 127 decode steps to reach 128 output tokens."""
    prompt, out, batch = 32, 128, 8
    total = step_time("Llama-3.1-8B", "H200", prefill_chunks=[(prompt, 0)] * batch, efficiency=efficiency).seconds
    for i in range(1, out):
        total += step_time("Llama-3.1-8B", "H200", [prompt + i] * batch, efficiency=efficiency).seconds
    return total, 0.833
