"""From toy to production: real model shapes, GPU spec numbers, and the memory and roofline arithmetic.

Plain data and pure functions (no network, no GPU). Every number carries the link it was checked against.
"""

from ._lookup import DTYPE_BYTES
from .gpus import GPUS, GPUSpec
from .knobs import KNOBS, Knob
from .memory import (
    kv_budget_bytes,
    kv_bytes_per_request,
    kv_bytes_per_token,
    max_concurrent_requests,
    max_kv_tokens,
    weight_bytes,
)
from .models import MODEL_SHAPES, ModelShape
from .roofline import (
    arithmetic_intensity,
    attention_flops_per_key,
    decode_compute_bound_batch,
    peak_flops,
    ridge_point,
    step_flops_and_bytes,
)
from .toy import engine_kv_bytes_per_token, engine_max_concurrent_requests, engine_pool_bytes

__all__ = [
    "DTYPE_BYTES",
    "GPUS",
    "KNOBS",
    "MODEL_SHAPES",
    "GPUSpec",
    "Knob",
    "ModelShape",
    "arithmetic_intensity",
    "attention_flops_per_key",
    "decode_compute_bound_batch",
    "engine_kv_bytes_per_token",
    "engine_max_concurrent_requests",
    "engine_pool_bytes",
    "kv_budget_bytes",
    "kv_bytes_per_request",
    "kv_bytes_per_token",
    "max_concurrent_requests",
    "max_kv_tokens",
    "peak_flops",
    "ridge_point",
    "step_flops_and_bytes",
    "weight_bytes",
]
