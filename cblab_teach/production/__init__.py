"""From toy to production: real model shapes, GPU spec numbers, the memory and roofline arithmetic, step time.

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
from .simulate import (
    RequestResult,
    ShapeOnlyLM,
    SimResult,
    poisson_arrivals,
    poisson_workload,
    rate_sweep,
    simulate,
)
from .step_time import (
    DEFAULT_EFFICIENCY,
    IDEAL,
    Efficiency,
    OpTime,
    StepTime,
    step_time,
    step_time_from_record,
)
from .toy import engine_kv_bytes_per_token, engine_max_concurrent_requests, engine_model_shape, engine_pool_bytes

__all__ = [
    "DEFAULT_EFFICIENCY",
    "DTYPE_BYTES",
    "GPUS",
    "IDEAL",
    "KNOBS",
    "MODEL_SHAPES",
    "Efficiency",
    "GPUSpec",
    "Knob",
    "ModelShape",
    "OpTime",
    "RequestResult",
    "ShapeOnlyLM",
    "SimResult",
    "StepTime",
    "arithmetic_intensity",
    "attention_flops_per_key",
    "decode_compute_bound_batch",
    "engine_kv_bytes_per_token",
    "engine_max_concurrent_requests",
    "engine_model_shape",
    "engine_pool_bytes",
    "kv_budget_bytes",
    "kv_bytes_per_request",
    "kv_bytes_per_token",
    "max_concurrent_requests",
    "max_kv_tokens",
    "peak_flops",
    "poisson_arrivals",
    "poisson_workload",
    "rate_sweep",
    "ridge_point",
    "simulate",
    "step_flops_and_bytes",
    "step_time",
    "step_time_from_record",
    "weight_bytes",
]
