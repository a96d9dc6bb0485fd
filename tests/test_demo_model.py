"""The readable demo model: loads, round-trips text, and serves correctly in a batch."""

from __future__ import annotations

import pytest
import torch

from cblab_teach import CBLabError, Engine, EngineConfig
from cblab_teach.demo_model import CHECKPOINT, CharTokenizer, UnknownCharacterError, load_char_model


@pytest.fixture(scope="module")
def demo():
    return load_char_model()


def test_checkpoint_is_small() -> None:
    assert CHECKPOINT.exists()
    assert CHECKPOINT.stat().st_size < 5 * 2**20


def test_tokenizer_round_trip(demo) -> None:
    _, tok = demo
    text = "Beautiful is better than ugly.\nSimple is better than complex."
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(0 <= i < len(tok) for i in ids)
    assert tok.decode(ids) == text


def test_unknown_character_is_a_typed_error_naming_it(demo) -> None:
    _, tok = demo
    with pytest.raises(UnknownCharacterError, match="€") as err:
        tok.encode("price: 5€")
    assert isinstance(err.value, CBLabError)
    with pytest.raises(UnknownCharacterError, match="9999"):
        tok.decode([9999])


def test_repeated_vocabulary_is_rejected() -> None:
    with pytest.raises(CBLabError):
        CharTokenizer(["a", "b", "a"])


def test_model_matches_tokenizer_and_loads_fresh(demo) -> None:
    model, tok = demo
    assert model.config.vocab_size == len(tok)
    again, _ = load_char_model()
    assert again is not model
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_generations_are_readable(demo) -> None:
    """A trained model continues a line of the Zen of Python with common English words."""
    model, tok = demo
    out = tok.decode(Engine(model, EngineConfig()).generate([tok.encode("Beautiful is ")], 40)[0])
    words = [w.strip(".,*!-'\n") for w in out.split()]
    common = {"better", "than", "is", "ugly", "explicit", "implicit", "simple", "complex", "the", "a", "of"}
    assert sum(w.lower() in common for w in words) >= 3, out


def test_batched_equals_alone_on_the_demo_model(demo) -> None:
    model, tok = demo
    prompts = [tok.encode(p) for p in ("Errors should ", "Now is ", "If the implementation ")]
    alone = [Engine(model, EngineConfig()).generate([p], 12)[0] for p in prompts]
    cfg = EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3, block_size=4)
    assert Engine(model, cfg).generate(prompts, 12) == alone


def test_float64_load(demo) -> None:
    model64, tok = load_char_model(dtype=torch.float64)
    assert model64.dtype == torch.float64
    model, _ = demo
    ids = tok.encode("Flat is ")
    assert Engine(model64).generate([ids], 10)[0] == Engine(model).generate([ids], 10)[0]


def test_training_forward_equals_the_engine(demo) -> None:
    """The training script's dense causal forward computes what the engine computes, so its weights transfer."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_char_model.py"
    spec = importlib.util.spec_from_file_location("train_char_model", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    model64, tok = load_char_model(dtype=torch.float64)
    prompt = tok.encode("Errors should never")
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(train.causal_forward(model64, torch.tensor([seq]))[0, -1].argmax()))
    assert seq[len(prompt) :] == Engine(model64).generate([prompt], 8)[0]
