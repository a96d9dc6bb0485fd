"""Tensor parallelism for real: two gloo ranks, each with its heads, give the one-process logits."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest
import torch

from cblab_teach.advanced.tensor_parallel import (
    ATOL,
    head_split,
    one_process_logits,
    run_tensor_parallel,
    shard_weights,
    simulate_tensor_parallel,
)
from cblab_teach.errors import ConfigError
from cblab_teach.model.config import ModelConfig
from cblab_teach.model.tiny_lm import TinyLM
from cblab_teach.production.parallelism import kv_split

from .reference import full_logits

IDS = list(range(1, 13))


@pytest.fixture(scope="module")
def gqa_model() -> TinyLM:
    return TinyLM(ModelConfig(num_heads=4, num_kv_heads=2), seed=0)


@pytest.fixture(scope="module")
def real_run(gqa_model):
    """One real 2-process run (process start-up dominates: a few seconds on an idle machine)."""
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "cblab_tp_*")))
    result = run_tensor_parallel(gqa_model, IDS, world_size=2)
    return result, before


def test_two_real_ranks_equal_one_process(real_run, gqa_model):
    result, before = real_run
    reference = one_process_logits(gqa_model, IDS)
    assert result.logits.shape == (12, 256)
    assert torch.allclose(result.logits, reference, rtol=0, atol=ATOL), result.max_abs_error
    assert result.matches and result.ranks_agree
    # the engine's forward is itself checked against a cache-free recompute written from the weights alone
    assert torch.allclose(reference, full_logits(gqa_model, IDS), rtol=0, atol=ATOL)
    # the same rank code run in one process gives the real run's numbers bit for bit (a + b == b + a)
    assert torch.equal(result.logits, simulate_tensor_parallel(gqa_model, IDS, 2))


def test_the_real_run_moves_two_all_reduces_per_layer_and_cleans_up(real_run, gqa_model):
    result, before = real_run
    cfg = gqa_model.config
    assert result.all_reduce_bytes == cfg.num_layers * 2 * len(IDS) * cfg.hidden_size * 4  # float32
    assert len(result.shard_bytes) == 2 and result.shard_bytes[0] == result.shard_bytes[1]
    full = sum(t.numel() * t.element_size() for t in gqa_model.state_dict().values())
    assert result.shard_bytes[0] < full  # each rank loaded less than the whole model
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "cblab_tp_*"))) <= before  # the folder is gone


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_simulated_ranks_equal_one_process(gqa_model, world_size):
    """4 ranks over 2 KV heads: each KV head is kept by two ranks, and the answer is unchanged."""
    out = simulate_tensor_parallel(gqa_model, IDS, world_size)
    assert torch.allclose(out, one_process_logits(gqa_model, IDS), rtol=0, atol=ATOL)


@pytest.mark.parametrize("bug", ["skip_all_reduce", "wrong_kv_heads"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_a_planted_bug_is_caught(gqa_model, bug, world_size):
    out = simulate_tensor_parallel(gqa_model, IDS, world_size, bug=bug)
    assert (out - one_process_logits(gqa_model, IDS)).abs().max() > 100 * ATOL


def test_head_split_follows_the_kv_rule_of_the_plan():
    for heads, kv, p in [(4, 2, 1), (4, 2, 2), (4, 2, 4), (8, 8, 4), (8, 1, 8), (32, 8, 16)]:
        per_rank, copies = kv_split(heads, kv, p)
        splits = [head_split(heads, kv, p, r) for r in range(p)]
        assert all(len(kvh) == per_rank for _, kvh in splits)
        # every query head is on exactly one rank, and its KV head is on that rank too
        assert sorted(h for qh, _ in splits for h in qh) == list(range(heads))
        assert all(h // (heads // kv) in kvh for qh, kvh in splits for h in qh)
        held = [h for _, kvh in splits for h in kvh]
        assert all(held.count(h) == copies for h in range(kv))


def test_shards_are_slices_of_the_full_weights(gqa_model):
    w = shard_weights(gqa_model, 1, 2)
    full = gqa_model.state_dict()
    assert torch.equal(w["layers.0.self_attn.q_proj.weight"], full["layers.0.self_attn.q_proj.weight"][32:64])
    assert torch.equal(w["layers.0.self_attn.k_proj.weight"], full["layers.0.self_attn.k_proj.weight"][16:32])
    assert torch.equal(w["layers.0.self_attn.o_proj.weight"], full["layers.0.self_attn.o_proj.weight"][:, 32:64])
    assert torch.equal(w["layers.1.mlp.down_proj.weight"], full["layers.1.mlp.down_proj.weight"][:, 86:])


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda m: simulate_tensor_parallel(m, IDS, 3), "world_size=3"),
        (lambda m: simulate_tensor_parallel(m, IDS, 0), "world_size"),
        (lambda m: simulate_tensor_parallel(m, [], 2), "ids"),
        (lambda m: simulate_tensor_parallel(m, [256], 2), "256"),
        (lambda m: simulate_tensor_parallel(m, IDS, 2, bug="typo"), "typo"),
        (lambda m: simulate_tensor_parallel("model", IDS, 2), "str"),
        (lambda m: run_tensor_parallel(m, IDS, world_size=8), "world_size=8"),
    ],
)
def test_bad_inputs_raise_a_config_error(gqa_model, call, named):
    with pytest.raises(ConfigError, match=named):
        call(gqa_model)
