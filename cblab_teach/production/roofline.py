"""Roofline arithmetic: FLOPs per byte of one forward step, and the batch where decode stops being memory-bound.

One step multiplies every token by every (active) weight matrix, ``2 x M`` FLOPs per token where ``M`` is
``ModelShape.matmul_params``, and attends to its keys, ``2 x layers x q_heads x (qk_dim + v_dim)`` FLOPs per key. It
reads every weight matrix once and, for decode, every cached key and value of the batch. Activations are left out
(small next to weights and KV). The embedding table is not a matmul: a step looks up one row per token (a few KB)
and neither reads the whole table nor multiplies with it, so ``M`` leaves it out (an untied table is 0.53B of
Llama-3.1-8B's 8.03B weights); a tied table is counted, since the LM head multiplies with it.

    decode, B requests with context c:  FLOPs = B (2 M + A c)   bytes = W + B c kv
    prefill, T prompt tokens of length c: FLOPs = T (2 M + A c / 2)   bytes = W + T kv   (causal: c/2 keys on average)

``W = M x`` the weights' element size. The GPU's ridge point is peak FLOP/s / bandwidth: below it a step waits on
memory, above it on arithmetic. ``dtype`` picks the peak, so it must be the dtype the matmuls *run* in: fp8 doubles
the peak, and the ridge, only when weights and activations are both fp8 (W8A8). Weight-only quantization (W8A16,
W4A16) stores small weights but computes in bf16 or fp16, so it cuts the bytes at the bf16 ridge: vLLM runs fp8
as W8A8 only on GPUs with fp8 tensor cores and as weight-only W8A16 (FP8 Marlin) on Turing and Ampere
(https://docs.vllm.ai/en/stable/features/quantization/fp8/). For a mixture of experts the bytes count only the active experts: a lower bound,
since a large batch touches more. ``step_time.py`` splits the same sums per operator and turns them into seconds.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ._lookup import as_gpu, as_shape, dtype_bytes, int_at_least
from .gpus import GPUSpec
from .memory import kv_bytes_per_token
from .models import ModelShape

PHASES = ("decode", "prefill")


def peak_flops(gpu: GPUSpec | str, dtype: str = "bf16") -> float:
    """Dense tensor-core FLOP/s of ``gpu`` when the matmuls run in ``dtype``."""
    g = as_gpu(gpu)
    dtype_bytes(dtype)
    table = {"bf16": g.bf16_tflops, "fp16": g.bf16_tflops, "fp8": g.fp8_tflops, "int8": g.int8_tops,
             "fp32": g.fp32_tflops}  # fmt: skip
    if table.get(dtype) is None:
        have = sorted(k for k, v in table.items() if v is not None)
        raise ConfigError(f"{g.name} has no dense tensor-core figure for {dtype!r}; accepted: {have}")
    return table[dtype] * 1e12


def ridge_point(gpu: GPUSpec | str, dtype: str = "bf16") -> float:
    """FLOPs per byte at which ``gpu`` turns from memory-bound to compute-bound."""
    return peak_flops(gpu, dtype) / as_gpu(gpu).bandwidth_bytes_per_s


def attention_flops_per_key(shape: ModelShape | str) -> float:
    """FLOPs one query token spends on one cached key over all layers (QK^T plus PV)."""
    s = as_shape(shape)
    qk_dim = s.kv_latent_dim if s.is_mla else s.head_dim  # MLA with the up-projections absorbed
    v_dim = s.v_head_dim if s.is_mla else s.head_dim
    return 2 * s.layers * s.q_heads * (qk_dim + v_dim)


def step_flops_and_bytes(
    shape: ModelShape | str,
    batch_tokens: int,
    context_len: int,
    phase: str = "decode",
    dtype: str = "bf16",
    kv_dtype: str | None = None,
) -> tuple[float, float]:
    """FLOPs and bytes moved by one step (see the module docstring for the model)."""
    s = as_shape(shape)
    int_at_least("batch_tokens", batch_tokens)
    int_at_least("context_len", context_len)
    if phase not in PHASES:
        raise ConfigError(f"phase must be one of {PHASES}, got {phase!r}")
    weights = s.matmul_params * dtype_bytes(dtype)
    kv = kv_bytes_per_token(s, kv_dtype or dtype)
    attn = attention_flops_per_key(s)
    if phase == "decode":
        return batch_tokens * (2 * s.matmul_params + attn * context_len), weights + batch_tokens * context_len * kv
    return batch_tokens * (2 * s.matmul_params + attn * context_len / 2), weights + batch_tokens * kv


def arithmetic_intensity(
    shape: ModelShape | str,
    batch_tokens: int,
    context_len: int,
    phase: str = "decode",
    dtype: str = "bf16",
    kv_dtype: str | None = None,
) -> float:
    """FLOPs per byte of one step: ``batch_tokens`` decoding requests (or prompt tokens, for prefill)."""
    flops, moved = step_flops_and_bytes(shape, batch_tokens, context_len, phase, dtype, kv_dtype)
    return flops / moved


def decode_compute_bound_batch(
    shape: ModelShape | str,
    gpu: GPUSpec | str,
    context_len: int,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
) -> int | None:
    """Smallest decode batch whose intensity reaches the ridge point; None if no batch does (KV reads grow with
    the batch as fast as FLOPs, so long contexts can keep decode memory-bound at any batch size)."""
    s = as_shape(shape)
    int_at_least("context_len", context_len)
    ridge = ridge_point(gpu, dtype)
    weights = s.matmul_params * dtype_bytes(dtype)
    kv = kv_bytes_per_token(s, kv_dtype or dtype)
    per_request_flops = 2 * s.matmul_params + attention_flops_per_key(s) * context_len
    gain = per_request_flops - ridge * context_len * kv  # intensity(B) >= ridge  <=>  B * gain >= ridge * weights
    if gain <= 0:
        return None
    return max(1, math.ceil(ridge * weights / gain))
