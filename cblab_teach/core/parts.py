"""The engine's parts, built from its configuration and checked on the way: the KV pool, the speculative
proposer, and the arguments themselves (a typo fails here, with its name, not deep inside a step)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..model.tiny_lm import TinyLM
from .config import EngineConfig
from .kv_cache import DenseKVCache, KVCache, PagedAllocator
from .speculative import DraftModelProposer, PromptLookupProposer


def check_engine_args(model, config, draft_model) -> EngineConfig:
    """The engine's settings (the defaults if ``config`` is None), once model, device and draft model check out."""
    if not isinstance(model, TinyLM):
        raise ConfigError(f"Engine needs a TinyLM (TinyLM.from_hf loads a Hugging Face Llama), got {model!r}")
    if config is not None and not isinstance(config, EngineConfig):
        raise ConfigError(f"Engine config must be an EngineConfig, got {config!r}")
    config = config or EngineConfig()
    try:
        device = torch.device(config.device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"EngineConfig.device={config.device!r} is not a torch device (cpu, cuda)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"EngineConfig.device={config.device!r} but no CUDA device is available here")
    if draft_model is not None and not isinstance(draft_model, TinyLM):
        raise ConfigError(f"draft_model must be a TinyLM, got {draft_model!r}")
    if config.speculative == "draft" and draft_model is None:
        raise ConfigError("speculative='draft' needs Engine(..., draft_model=a smaller TinyLM)")
    if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise ConfigError(
            f"draft model vocab {draft_model.config.vocab_size} != target vocab {model.config.vocab_size}"
        )
    return config


def make_kv_cache(model: TinyLM, config: EngineConfig) -> KVCache:
    cfg = model.config
    shape = (cfg.num_layers, cfg.kv_heads, cfg.head_dim)
    if config.kv_layout == "paged":
        return PagedAllocator(
            *shape, config.num_blocks, config.block_size, model.dtype, model.device, config.enable_prefix_caching
        )
    return DenseKVCache(*shape, config.num_slots, model.dtype, model.device)


def make_proposer(config: EngineConfig, draft_model: TinyLM | None) -> PromptLookupProposer | DraftModelProposer | None:
    if config.speculative == "ngram":
        return PromptLookupProposer(config.ngram_size)
    if config.speculative == "draft":
        return DraftModelProposer(draft_model)
    return None
