"""Bridge to Hugging Face Llama: config and weight names.

A config field the model cannot represent is an error naming the field and its value, never a silent
difference: a Llama with ``hidden_act="relu"`` would otherwise load and generate other tokens.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .config import ModelConfig

# field -> the values TinyLM computes exactly as Hugging Face does (None: the field is absent or unset)
SUPPORTED = {
    "hidden_act": ("silu",),  # SwiGLU's gate
    "attention_bias": (False, None),
    "mlp_bias": (False, None),
}


def _reject(field: str, value, accepted) -> ConfigError:
    return ConfigError(f"TinyLM.from_hf cannot represent {field}={value!r} (supported: {accepted})")


def config_from_hf(hf_config, dtype: torch.dtype) -> ModelConfig:
    model_type = getattr(hf_config, "model_type", "llama")
    if model_type != "llama":
        raise _reject("model_type", model_type, "'llama'")
    for field, accepted in SUPPORTED.items():
        value = getattr(hf_config, field, None)
        if not any(value is a or (type(value) is type(a) and value == a) for a in accepted):
            raise _reject(field, value, accepted)
    for field in ("rope_parameters", "rope_scaling"):  # transformers 5 names it rope_parameters, 4 rope_scaling
        rope = getattr(hf_config, field, None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise _reject(f"{field}['rope_type']", rope_type, "'default' (plain RoPE)")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:  # RoPE on part of each head only
            raise _reject(f"{field}['partial_rotary_factor']", rope["partial_rotary_factor"], 1.0)
    if getattr(hf_config, "partial_rotary_factor", 1.0) not in (1.0, None):
        raise _reject("partial_rotary_factor", hf_config.partial_rotary_factor, 1.0)
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    head_dim = getattr(hf_config, "head_dim", None)  # explicit in newer configs, may differ from hidden / heads
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
        head_dim=head_dim,
    )


def state_dict_from_hf(hf_model) -> dict[str, torch.Tensor]:
    """The weights of a loaded Hugging Face model under TinyLM's names (:func:`rename_hf_weights`)."""
    return rename_hf_weights(hf_model.state_dict())


def rename_hf_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names ``model.layers.0.self_attn.q_proj.weight`` map to ``layers.0.self_attn.q_proj.weight``.

    Tied embeddings (``tie_word_embeddings=True``, or a checkpoint saved without ``lm_head.weight``) need nothing
    special: the LM head gets the embedding matrix, the same numbers Hugging Face multiplies by.
    """
    out = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("model.")
        if "rotary_emb" in name:
            continue
        out[name] = tensor
    if "lm_head.weight" not in out:  # tied embeddings
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out
