"""Name lookups shared by the arithmetic: a bad name gets a ConfigError that lists the accepted ones."""

from __future__ import annotations

from ..errors import ConfigError
from .gpus import GPUS, GPUSpec
from .models import MODEL_SHAPES, ModelShape

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


def as_shape(shape: ModelShape | str) -> ModelShape:
    if isinstance(shape, ModelShape):
        return shape
    if isinstance(shape, str) and shape in MODEL_SHAPES:
        return MODEL_SHAPES[shape]
    raise ConfigError(f"unknown model shape {shape!r}; accepted: {sorted(MODEL_SHAPES)} or a ModelShape")


def as_gpu(gpu: GPUSpec | str) -> GPUSpec:
    if isinstance(gpu, GPUSpec):
        return gpu
    if isinstance(gpu, str) and gpu in GPUS:
        return GPUS[gpu]
    raise ConfigError(f"unknown GPU {gpu!r}; accepted: {sorted(GPUS)} or a GPUSpec")


def dtype_bytes(dtype: str) -> float:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}; accepted: {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def int_at_least(name: str, value: object, least: int = 1) -> int:
    """``value``, if it is a real int (not a bool, not 128.0) of at least ``least``; else a ConfigError naming it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")
    return value
