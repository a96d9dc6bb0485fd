"""The layers' fast paths against their readable references, bit for bit.

RMSNorm, RoPE and SwiGLU each keep a reference (``RMSNorm.reference``, ``RotaryEmbedding.apply``,
``SwiGLU.reference``) beside the path the model runs; the LM head computed in slices (``TinyLM.logits``) is
compared with one ``lm_head`` matmul. Equality is exact (``torch.equal``), not approximate: a last-bit difference
can flip a near-tie between two tokens, and the engine promises Hugging Face's tokens.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cblab_teach import Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.model import tiny_lm
from cblab_teach.model.layers import RMSNorm, RotaryEmbedding, SwiGLU


def _randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 64])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_rms_norm_equals_its_reference(dtype, rows, scale):
    norm = RMSNorm(96, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(_randn(96, seed=1))
    x = _randn(rows, 96, dtype=dtype, scale=scale)
    assert torch.equal(norm(x), norm.reference(x))
    assert torch.equal(x, _randn(rows, 96, dtype=dtype, scale=scale))  # the input is left as it was


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("heads", [1, 3, 9])
def test_signed_rotation_equals_the_reference_rotation(dtype, heads):
    rope = RotaryEmbedding(64, 10000.0)
    positions = torch.tensor([0, 1, 7, 100, 2047, 3])
    cos, sin = rope.cos_sin(positions, dtype)
    x = _randn(len(positions), heads, 64, dtype=dtype)
    got = RotaryEmbedding.apply_signed(x, cos, RotaryEmbedding.signed_sin(sin))
    assert torch.equal(got, RotaryEmbedding.apply(x, cos, sin))
    assert not torch.equal(got, x)  # it did rotate


def test_swiglu_equals_its_reference():
    mlp = SwiGLU(48, 130)
    x = _randn(17, 48)
    with torch.no_grad():
        assert torch.equal(mlp(x), mlp.reference(x))


@pytest.mark.parametrize("rows", [1, 2, 7, 64, 257])
def test_sliced_lm_head_equals_one_matmul(rows):
    vocab = 5 * tiny_lm.HEAD_SLICE + 37  # large enough to slice, with a short last slice
    model = TinyLM(ModelConfig(vocab_size=vocab, hidden_size=64, num_layers=1, num_heads=4, intermediate_size=96))
    h = _randn(rows, 64, seed=rows)
    with torch.no_grad():
        assert torch.equal(model.logits(h), nn.functional.linear(h, model.lm_head.weight))


def test_the_model_runs_the_fast_layers(monkeypatch):
    """Guards the tests above from testing a path the model no longer takes."""
    calls = []
    monkeypatch.setattr(RotaryEmbedding, "apply", lambda *a: calls.append("reference rope"))
    monkeypatch.setattr(RMSNorm, "reference", lambda *a: calls.append("reference norm"))
    model = TinyLM(ModelConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, max_position=64))
    out = Engine(model, EngineConfig()).generate([[1, 2, 3]], 3)
    assert len(out[0]) == 3 and calls == []
