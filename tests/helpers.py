"""Helpers shared by tests: the sequential reference and tiny Hugging Face models."""

from __future__ import annotations

import torch

from cblab_teach import Engine, EngineConfig, TinyLM


def run_alone(model: TinyLM, prompt: list[int], n: int, **cfg) -> list[int]:
    """The reference: one request, nothing else in the engine."""
    return Engine(model, EngineConfig(**cfg)).generate([prompt], n)[0]


def hf_llama(num_kv_heads: int, dtype=torch.float64, seed: int = 0):
    import transformers  # a test dependency: the HF comparison must run, never skip

    cfg = transformers.LlamaConfig(
        vocab_size=113,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()
