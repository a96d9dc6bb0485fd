"""Bridge to Hugging Face Llama: config and weight names."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .config import ModelConfig


def config_from_hf(hf_config, dtype: torch.dtype) -> ModelConfig:
    if getattr(hf_config, "model_type", "llama") != "llama":
        raise ConfigError(f"from_hf expects a Llama model, got model_type={hf_config.model_type!r}")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ConfigError("from_hf supports Llama without attention/MLP biases")
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"from_hf supports plain RoPE, got {rope!r}")
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        num_kv_heads=hf_config.num_key_value_heads,
        intermediate_size=hf_config.intermediate_size,
        max_position=hf_config.max_position_embeddings,
        rope_theta=float(theta),
        rms_norm_eps=hf_config.rms_norm_eps,
        dtype=dtype,
    )


def state_dict_from_hf(hf_model) -> dict[str, torch.Tensor]:
    """HF names ``model.layers.0.self_attn.q_proj.weight`` map to ``layers.0.self_attn.q_proj.weight``."""
    out = {}
    for name, tensor in hf_model.state_dict().items():
        name = name.removeprefix("model.")
        if "rotary_emb" in name:
            continue
        out[name] = tensor
    if "lm_head.weight" not in out:  # tied embeddings
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out
