"""The shape of the tiny Llama-style model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


def _is_int(value: object) -> bool:
    """A real int: ``True`` is an int to Python, but ``num_layers=True`` is a typo, not one layer."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`TinyLM`; defaults give a model that runs in milliseconds."""

    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: multi-head; fewer: grouped-query attention
    intermediate_size: int = 172
    max_position: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dtype: torch.dtype = torch.float32
    head_dim: int | None = None  # None: hidden_size // num_heads; some Llamas set it explicitly

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        for name in ("num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"ModelConfig.{name} must be None or a positive int, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)  # frozen: set once, here
        if (self.head_dim % 2) != 0:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ConfigError(f"ModelConfig.dtype must be a floating torch.dtype, got {self.dtype!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a finite number > 0, got {value!r}")
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv}")

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads
