"""Bad input gets a typed error naming the bad value, and the engine carries on."""

from __future__ import annotations

import pytest

from cblab_teach import (
    CapacityError,
    CBLabError,
    ConfigError,
    DuplicateRequestError,
    Engine,
    EngineConfig,
    ModelConfig,
    RequestError,
    SamplingParams,
    StaticBatchingEngine,
    UnknownRequestError,
)

from .helpers import run_alone

BAD_CONFIGS = [
    (dict(max_tokens_per_step=0), "max_tokens_per_step"),
    (dict(prefill_chunk_size=-2), "prefill_chunk_size"),
    (dict(kv_layout="tiled"), "'tiled'"),
    (dict(block_size=0), "block_size"),
    (dict(num_blocks=1.5), "num_blocks"),
    (dict(attention="flash"), "'flash'"),
    (dict(policy="random"), "'random'"),
]


@pytest.mark.parametrize("kwargs,names", BAD_CONFIGS)
def test_bad_engine_config(kwargs, names):
    with pytest.raises(ConfigError, match=names):
        EngineConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [dict(hidden_size=30, num_heads=4), dict(num_heads=4, num_kv_heads=3), dict(vocab_size=0)]
)
def test_bad_model_config(kwargs):
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


BAD_REQUESTS = [
    (dict(prompt_ids=[]), RequestError, "empty"),
    (dict(prompt_ids=[1, 97]), RequestError, r"\[97\]"),
    (dict(prompt_ids=[-1]), RequestError, r"\[-1\]"),
    (dict(prompt_ids="abc"), RequestError, "abc"),
    (dict(max_new_tokens=-3), RequestError, "-3"),
    (dict(max_new_tokens=0), RequestError, "max_new_tokens"),
    (dict(request_id=0), DuplicateRequestError, "0"),
    (dict(request_id="x"), RequestError, "'x'"),
    (dict(max_new_tokens=4000), CapacityError, "pool"),
    (dict(sampling=SamplingParams(temperature=-1.0)), RequestError, "sampling"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_REQUESTS)
def test_bad_request_is_rejected_and_others_carry_on(model64, kwargs, error, message):
    engine = Engine(model64, EngineConfig(num_blocks=8, block_size=8, max_tokens_per_step=8))
    good = engine.add_request([1, 2, 3], 5, request_id=0)
    engine.step()
    args = dict(prompt_ids=[4, 5], max_new_tokens=3) | kwargs
    with pytest.raises(error, match=message) as info:
        engine.add_request(**args)
    assert isinstance(info.value, CBLabError)
    engine.run()
    assert engine.output(good) == run_alone(model64, [1, 2, 3], 5)


def test_unknown_request_id(model64):
    with pytest.raises(UnknownRequestError, match="42"):
        Engine(model64).output(42)


def test_generate_length_mismatch(model64):
    with pytest.raises(RequestError, match="2 prompts but 3"):
        Engine(model64).generate([[1], [2]], [1, 2, 3])
    with pytest.raises(ConfigError, match="batch_size"):
        StaticBatchingEngine(model64, batch_size=0)
