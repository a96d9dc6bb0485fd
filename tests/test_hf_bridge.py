"""TinyLM.from_hf: what a Hugging Face Llama config says is either reproduced exactly or refused by name.

Models are tiny and random, built from a ``LlamaConfig`` (never downloaded); ``generate`` gets an explicit
``attention_mask``.
"""

from __future__ import annotations

import pytest
import torch
import transformers  # a test dependency: the Hugging Face comparison must run, never skip

from cblab_teach import ConfigError, Engine, EngineConfig, TinyLM

from .reference import full_logits, greedy

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9] * 11]


def llama(seed: int = 0, **overrides):
    fields = dict(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**(fields | overrides))).to(torch.float64).eval()


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "overrides",
    [dict(head_dim=12), dict(head_dim=4, num_key_value_heads=1), dict(tie_word_embeddings=True)],
    ids=["head_dim=12 (hidden/heads=8)", "head_dim=4 with MQA", "tied embeddings"],
)
def test_what_the_model_can_represent_matches_huggingface_token_for_token(overrides):
    hf = llama(**overrides)
    model = TinyLM.from_hf(hf)
    if "head_dim" in overrides:
        assert model.config.head_dim == overrides["head_dim"] != model.config.hidden_size // model.config.num_heads
    engine = Engine(model, EngineConfig(max_tokens_per_step=7, prefill_chunk_size=3, block_size=4))
    out = engine.generate(PROMPTS, 9)
    for prompt, ours in zip(PROMPTS, out):
        assert ours == hf_greedy(hf, prompt, 9)
        assert ours == greedy(model, prompt, 9)
    theirs = hf(torch.tensor([PROMPTS[0]])).logits[0]
    torch.testing.assert_close(full_logits(model, PROMPTS[0]), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides,named",
    [
        (dict(hidden_act="relu"), r"hidden_act='relu'"),
        (dict(hidden_act="gelu"), r"hidden_act='gelu'"),
        (dict(attention_bias=True), r"attention_bias=True"),
        (dict(mlp_bias=True), r"mlp_bias=True"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), r"rope_type'\]='linear'"),
        (
            dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
            r"partial_rotary_factor'\]=0\.5",
        ),
    ],
    ids=["relu", "gelu", "attention bias", "mlp bias", "linear rope scaling", "partial rotary"],
)
def test_what_it_cannot_represent_is_refused_by_name(overrides, named):
    with pytest.raises(ConfigError, match=named):
        TinyLM.from_hf(llama(**overrides))


def test_refusal_happens_before_any_weight_is_copied():
    """A config object is enough: the check reads the config, not the weights."""
    from cblab_teach.model.hf import config_from_hf

    message = r"TinyLM\.from_hf cannot represent hidden_act='relu' \(supported: \('silu',\)\)"
    with pytest.raises(ConfigError, match=message):
        config_from_hf(transformers.LlamaConfig(hidden_act="relu"), torch.float32)
    with pytest.raises(ConfigError, match=r"model_type='mistral'"):
        config_from_hf(transformers.MistralConfig(), torch.float32)


@pytest.mark.parametrize("tied", [False, True])
def test_from_weights_equals_loading_into_a_drawn_model(tied):
    """``from_weights`` skips drawing random weights (seconds for a real model): same model as the plain path of
    building one and copying the weights in, here from a Hugging Face checkpoint's tensors."""
    from cblab_teach.model.hf import config_from_hf, rename_hf_weights

    hf = llama(3, tie_word_embeddings=tied)
    tensors = {k: v for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    fast = TinyLM.from_weights(config_from_hf(hf.config, torch.float64), rename_hf_weights(tensors))
    plain = TinyLM.from_hf(hf)
    assert fast.rotary.inv_freq.device.type == "cpu" and torch.equal(fast.rotary.inv_freq, plain.rotary.inv_freq)
    for (name, a), (_, b) in zip(sorted(fast.state_dict().items()), sorted(plain.state_dict().items())):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    prompt = [5, 9, 2, 7]
    assert greedy(fast, prompt, 6) == greedy(plain, prompt, 6) == hf_greedy(hf, prompt, 6)
