"""The same memory arithmetic on the course's own engine, from its configs and its actual tensors."""

from __future__ import annotations

import math

from ..core.config import EngineConfig
from ..model.config import ModelConfig
from ._lookup import int_at_least
from .models import ModelShape


def engine_kv_bytes_per_token(model_config: ModelConfig) -> int:
    """2 x layers x kv_heads x head_dim x element size: the real-model formula on TinyLM."""
    element = model_config.dtype.itemsize
    return 2 * model_config.num_layers * model_config.kv_heads * model_config.head_dim * element


def engine_pool_bytes(engine_config: EngineConfig, model_config: ModelConfig) -> int:
    """Bytes of the engine's K and V pool: ``num_blocks x block_size`` slots."""
    return engine_config.num_slots * engine_kv_bytes_per_token(model_config)


def engine_max_concurrent_requests(engine_config: EngineConfig, context_len: int) -> int:
    """Requests of ``context_len`` tokens the paged pool holds at once (whole blocks each)."""
    int_at_least("context_len", context_len)
    return engine_config.num_blocks // math.ceil(context_len / engine_config.block_size)


def engine_model_shape(model_config: ModelConfig, name: str = "TinyLM") -> ModelShape:
    """The course's model as a :class:`ModelShape`, so the step-time model can time it (untied head, no biases)."""
    c = model_config
    q, kv = c.num_heads * c.head_dim, c.kv_heads * c.head_dim
    layer = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    params = 2 * c.vocab_size * c.hidden_size + c.num_layers * (layer + 2 * c.hidden_size) + c.hidden_size
    return ModelShape(
        name, layers=c.num_layers, q_heads=c.num_heads, kv_heads=c.kv_heads, head_dim=c.head_dim,
        params=params, active_params=params, source="cblab_teach.model.config.ModelConfig",
        hidden=c.hidden_size, intermediate=c.intermediate_size, vocab=c.vocab_size,
    )  # fmt: skip
