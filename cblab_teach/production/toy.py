"""The same memory arithmetic on the course's own engine, from its configs and its actual tensors."""

from __future__ import annotations

import math

from ..core.config import EngineConfig
from ..model.config import ModelConfig
from ._lookup import positive_int


def engine_kv_bytes_per_token(model_config: ModelConfig) -> int:
    """2 x layers x kv_heads x head_dim x element size: the real-model formula on TinyLM."""
    element = model_config.dtype.itemsize
    return 2 * model_config.num_layers * model_config.kv_heads * model_config.head_dim * element


def engine_pool_bytes(engine_config: EngineConfig, model_config: ModelConfig) -> int:
    """Bytes of the engine's K and V pool: ``num_blocks x block_size`` slots."""
    return engine_config.num_slots * engine_kv_bytes_per_token(model_config)


def engine_max_concurrent_requests(engine_config: EngineConfig, context_len: int) -> int:
    """Requests of ``context_len`` tokens the paged pool holds at once (whole blocks each)."""
    positive_int("context_len", context_len)
    return engine_config.num_blocks // math.ceil(context_len / engine_config.block_size)
