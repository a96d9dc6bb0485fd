"""How much of a GPU the weights take, how much KV each token needs, and how many requests fit.

The same formula the course's engine uses for its pool (``num_blocks * block_size`` slots, each holding K and V
for every layer), with real shapes and real memory:

    KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element
    (MLA caches one latent of kv_lora_rank + qk_rope_head_dim per layer instead: no factor 2, no heads)

``max_kv_tokens`` mirrors ``gpu_memory_utilization`` in vLLM: a fraction of the GPU is for this engine, the
weights come off the top, the rest is KV pool. The GPU's memory is binary (``GPUSpec.memory_bytes``: an "80 GB"
H100 is 80 GiB, 85.9e9 bytes) while weights and KV are counted in bytes here and quoted in decimal GB. Real engines also keep activation and CUDA-graph memory out of
the pool, so their pool is a little smaller than this.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ._lookup import as_gpu, as_shape, dtype_bytes, int_at_least
from .gpus import GPUSpec
from .models import ModelShape


def kv_bytes_per_token(shape: ModelShape | str, dtype: str = "bf16") -> float:
    """Bytes of KV cache one token adds, over all layers (every layer counted, sliding-window ones too)."""
    s = as_shape(shape)
    size = dtype_bytes(dtype)
    if s.is_mla:
        return s.layers * s.kv_latent_dim * size
    return 2 * s.layers * s.kv_heads * s.head_dim * size


def weight_bytes(shape: ModelShape | str, dtype: str = "bf16") -> float:
    """Bytes of every weight stored in ``dtype`` (all experts of a mixture of experts)."""
    return as_shape(shape).params * dtype_bytes(dtype)


def kv_budget_bytes(
    shape: ModelShape | str, gpu: GPUSpec | str, dtype: str = "bf16", memory_utilization: float = 0.9
) -> float:
    """Bytes left for the KV pool: ``memory_utilization`` of the GPU minus the weights (0 if they do not fit)."""
    if not isinstance(memory_utilization, (int, float)) or not 0 < memory_utilization <= 1:
        raise ConfigError(f"memory_utilization must be in (0, 1], got {memory_utilization!r}")
    return max(0.0, as_gpu(gpu).memory_bytes * memory_utilization - weight_bytes(shape, dtype))


def max_kv_tokens(
    shape: ModelShape | str,
    gpu: GPUSpec | str,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    memory_utilization: float = 0.9,
) -> int:
    """Tokens of KV the pool holds on one GPU (``kv_dtype`` defaults to the weight dtype)."""
    per_token = kv_bytes_per_token(shape, kv_dtype or dtype)
    return int(kv_budget_bytes(shape, gpu, dtype, memory_utilization) // per_token)


def kv_bytes_per_request(
    shape: ModelShape | str, context_len: int, kv_dtype: str = "bf16", block_size: int = 16
) -> float:
    """KV bytes one request of ``context_len`` tokens holds, in whole blocks; sliding-window layers keep at most
    their window (what a hybrid allocator such as vLLM's saves on Gemma-2)."""
    s = as_shape(shape)
    int_at_least("context_len", context_len)
    int_at_least("block_size", block_size)
    per_layer = kv_bytes_per_token(s, kv_dtype) / s.layers

    def blocks(tokens: int) -> int:
        return math.ceil(tokens / block_size) * block_size

    full_layers = s.layers - s.sliding_layers
    window_tokens = min(context_len, s.sliding_window) if s.sliding_window else context_len
    return per_layer * (full_layers * blocks(context_len) + s.sliding_layers * blocks(window_tokens))


def max_concurrent_requests(
    shape: ModelShape | str,
    gpu: GPUSpec | str,
    context_len: int,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    memory_utilization: float = 0.9,
    block_size: int = 16,
) -> int:
    """Requests of ``context_len`` tokens each whose KV fits the pool at once (0 if the weights do not fit)."""
    budget = kv_budget_bytes(shape, gpu, dtype, memory_utilization)
    return int(budget // kv_bytes_per_request(shape, context_len, kv_dtype or dtype, block_size))
