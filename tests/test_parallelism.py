"""Tensor, pipeline and expert parallelism arithmetic, checked against numbers worked out by hand from the configs."""

from __future__ import annotations

import dataclasses

import pytest

from cblab_teach.errors import ConfigError
from cblab_teach.production._lookup import as_gpu
from cblab_teach.production.models import MIXTRAL_8X7B, MODEL_SHAPES, ModelShape
from cblab_teach.production.parallelism import (
    LINKS,
    expert_parallel_plan,
    kv_split,
    memory_per_gpu,
    pipeline_bubble,
    pipeline_plan,
    ring_all_reduce_seconds,
    stage_layers,
    tensor_parallel_plan,
    tp_step_time,
)
from cblab_teach.production.step_time import step_time

L70 = MODEL_SHAPES["Llama-3.1-70B"]


def test_llama_70b_on_8_gpus_by_hand():
    plan = tensor_parallel_plan("Llama-3.1-70B", 8)
    assert (plan.q_heads_per_rank, plan.kv_heads_per_rank, plan.kv_head_copies) == (8, 1, 1)
    # one layer per GPU: q and o (8192 x 8192 each) and the MLP (3 x 8192 x 28672) split 8 ways, one KV head whole
    layer = (2 * 8192 * 8192 + 3 * 8192 * 28672) // 8 + 2 * 8192 * 128
    tables = 2 * 128256 * 8192 // 8  # embedding and LM head, split by vocabulary rows
    norms = 80 * 2 * 8192 + 8192  # kept whole on every GPU
    assert plan.weight_bytes_per_rank == 2 * (80 * layer + tables + norms)  # 17,640,734,720
    assert plan.kv_bytes_per_token_per_rank == 2 * 80 * 1 * 128 * 2  # K and V, 80 layers, one head, bf16
    assert plan.kv_bytes_per_token_per_rank * 8 == 2 * 80 * 8 * 128 * 2  # no copies: the 8 GPUs hold the model's KV


def test_one_gpu_holds_every_weight():
    for name in ("Llama-3.1-8B", "Llama-3.1-70B", "Qwen2.5-7B", "Gemma-2-9B"):
        assert tensor_parallel_plan(name, 1).weight_bytes_per_rank == 2 * MODEL_SHAPES[name].params


def test_tp_above_kv_heads_replicates_them():
    plan = tensor_parallel_plan("Llama-3.1-8B", 16)  # 8 KV heads over 16 GPUs
    assert (plan.q_heads_per_rank, plan.kv_heads_per_rank, plan.kv_head_copies) == (2, 1, 2)
    one_copy = 2 * 32 * 8 * 128 * 2  # the model's KV per token
    assert plan.kv_bytes_per_token_per_rank * 16 == 2 * one_copy  # two copies of every head across the GPUs
    assert kv_split(64, 8, 32) == (1, 4) and kv_split(64, 8, 4) == (2, 1) and kv_split(64, 8, 8) == (1, 1)


def test_all_reduce_bytes_and_time_of_one_layer_by_hand():
    plan = tensor_parallel_plan("Llama-3.1-70B", 8, link_gbs=450)
    assert plan.all_reduce_bytes_per_token == 8192 * 2  # one bf16 hidden vector
    assert plan.all_reduce_bytes_per_token_per_layer == 2 * 8192 * 2  # after o_proj and after down
    tokens = 256
    one = 2 * 7 / 8 * (tokens * 8192 * 2) / 450e9  # ring: 2(p-1)/p of the buffer over the link
    assert plan.all_reduce_seconds(tokens) == pytest.approx(80 * 2 * one, rel=1e-12)
    assert plan.sent_bytes_per_rank(tokens) == pytest.approx(80 * 2 * 2 * 7 / 8 * tokens * 8192 * 2, rel=1e-12)
    assert ring_all_reduce_seconds(1e9, 1) == 0.0  # one GPU sends nothing
    assert LINKS["NVLink4-H100-SXM"] == 450 and LINKS["PCIe5-x16"] == 64


def test_weights_per_gpu_fall_about_one_over_tp():
    full = 2 * L70.params
    for tp in (1, 2, 4, 8):
        m = memory_per_gpu("Llama-3.1-70B", "H100-SXM", tp=tp)
        assert 1.0 <= m.weight_bytes * tp / full < 1.01  # a little above 1/tp: norms and KV heads kept whole
    assert not memory_per_gpu("Llama-3.1-70B", "H100-SXM").fits  # 141 GB of weights on an 80 GiB GPU
    m8 = memory_per_gpu("Llama-3.1-70B", "H100-SXM", tp=8)
    assert m8.max_kv_tokens == int((as_gpu("H100-SXM").memory_bytes * 0.9 - m8.weight_bytes) // 40960)
    # tp x pp: the fullest stage of 2 holds 40 layers and one table, each split over 4 GPUs
    both = memory_per_gpu("Llama-3.1-70B", "H100-SXM", tp=4, pp=2)
    assert both.gpus == 8 and both.weight_bytes == pytest.approx(full / 8, rel=0.01)


def test_step_time_under_tp():
    decodes = [1024] * 32
    one = tp_step_time("Llama-3.1-8B", "H100-SXM", 1, decodes)
    alone = step_time("Llama-3.1-8B", "H100-SXM", decodes)
    assert one.all_reduce_s == 0 and one.seconds == pytest.approx(alone.seconds)
    four = tp_step_time("Llama-3.1-8B", "H100-SXM", 4, decodes)
    assert four.all_reduce_s == pytest.approx(tensor_parallel_plan("Llama-3.1-8B", 4).all_reduce_seconds(32))
    # each GPU multiplies a quarter of the q/k/v, o_proj and MLP weights
    for op in ("qkv", "o_proj", "mlp"):
        assert four.compute.op(op).flops == pytest.approx(one.compute.op(op).flops / 4, rel=1e-12)
    assert four.seconds < one.seconds


def test_pipeline_bubble_values():
    assert pipeline_bubble(4, 1) == 3 / 4  # one micro-batch: each stage works a quarter of the time
    assert pipeline_bubble(8, 32) == 7 / 39
    assert pipeline_bubble(1, 5) == 0.0
    assert pipeline_bubble(4, 12) < pipeline_bubble(4, 4) < pipeline_bubble(8, 4)


def test_pipeline_stages_split_the_layers_and_the_weights():
    assert stage_layers(80, 3) == [27, 27, 26] and stage_layers(32, 4) == [8] * 4
    stages = pipeline_plan("Llama-3.1-70B", 3)
    assert [s.layers for s in stages] == [27, 27, 26]
    assert sum(s.weight_bytes for s in stages) == pytest.approx(2 * L70.params, rel=1e-12)
    assert [s.kv_bytes_per_token for s in stages] == [2 * n * 8 * 128 * 2 for n in (27, 27, 26)]
    table = 128256 * 8192 * 2
    assert stages[0].weight_bytes - stages[1].weight_bytes == pytest.approx(table, rel=1e-9)  # the embedding


# a small made-up mixture of experts: 4 layers, the first dense, 8 experts of width 32, 2 per token
TOY_MOE = ModelShape(
    "toy-moe", layers=4, q_heads=4, kv_heads=2, head_dim=16, params=200_000, active_params=100_000,
    source="made up", hidden=64, vocab=100, experts=8, experts_per_token=2, expert_intermediate=32, dense_layers=1,
)  # fmt: skip


def test_expert_parallel_bytes_by_hand():
    plan = expert_parallel_plan(TOY_MOE, ep=4, tokens=10)
    assert plan.experts_per_rank == 2 and plan.moe_layers == 3
    # 10 tokens x 2 copies x 64 wide x 2 bytes, of which 3/4 go to the other GPUs
    assert plan.dispatch_bytes_per_layer == 10 * 2 * 64 * 2 * 3 / 4 == 1920
    assert plan.combine_bytes_per_layer == 1920
    assert plan.all_to_all_bytes_per_step == 3 * 2 * 1920
    experts = 3 * 8 * 3 * 64 * 32  # MoE layers x experts x (gate, up, down)
    assert plan.expert_weight_bytes_per_rank == experts / 4 * 2
    assert plan.replicated_weight_bytes == (200_000 - experts) * 2
    assert plan.all_to_all_seconds == pytest.approx(11520 / 450e9)
    assert expert_parallel_plan(TOY_MOE, ep=1, tokens=10).dispatch_bytes_per_layer == 0  # nothing leaves


def test_mixtral_shape_rebuilds_from_its_config():
    h, kv, inter = 4096, 8 * 128, 14336
    attention = 2 * h * h + 2 * h * kv
    layer_fixed = attention + h * 8 + 2 * h  # attention, router, two norms
    tables = 2 * 32000 * h + h
    assert MIXTRAL_8X7B.params == 32 * (layer_fixed + 8 * 3 * h * inter) + tables
    assert MIXTRAL_8X7B.active_params == 32 * (layer_fixed + 2 * 3 * h * inter) + tables
    plan = expert_parallel_plan("Mixtral-8x7B-v0.1", ep=8, tokens=256)
    assert plan.experts_per_rank == 1
    assert plan.weight_bytes_per_rank == pytest.approx(2 * (MIXTRAL_8X7B.params - 7 / 8 * 32 * 8 * 3 * h * inter))
    ds = MODEL_SHAPES["DeepSeek-V3"]
    assert ds.moe_layers == 58 and ds.routed_expert_params == 58 * 256 * 3 * 7168 * 2048


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: tensor_parallel_plan("Llama-3.1-70B", 3), "tp=3"),
        (lambda: tensor_parallel_plan("Llama-3.1-70B", 0), "tp"),
        (lambda: tensor_parallel_plan("Llama-3.1-70B", True), "True"),
        (lambda: tensor_parallel_plan("Llama-3.1-8B", 32, link_gbs=0), "link_gbs"),
        (lambda: tensor_parallel_plan("Llama-3.1-8B", 2, link_gbs="NVLink9"), "NVLink9"),
        (lambda: tensor_parallel_plan("Llama-3.1-8B", 2, dtype="bf17"), "bf17"),
        (lambda: tensor_parallel_plan("Llama-9B", 2), "Llama-9B"),
        (lambda: tensor_parallel_plan("DeepSeek-V3", 8), "MLA"),
        (lambda: kv_split(48, 16, 24), "tp=24 is above kv_heads=16 but not a multiple"),
        (lambda: kv_split(48, 16, 6), "tp=6 does not divide kv_heads=16"),
        (lambda: kv_split(64, 8, 12), "tp=12"),
        (lambda: pipeline_bubble(0, 4), "stages"),
        (lambda: pipeline_bubble(4, -1), "microbatches"),
        (lambda: pipeline_plan("Llama-3.1-8B", 33), "pp=33"),
        (lambda: memory_per_gpu("Llama-3.1-8B", "H100-SXM", memory_utilization=0), "memory_utilization"),
        (lambda: memory_per_gpu("Llama-3.1-8B", "B300", tp=2), "B300"),
        (lambda: expert_parallel_plan("Llama-3.1-8B", 2, 10), "experts=None"),
        (lambda: expert_parallel_plan("Mixtral-8x7B-v0.1", 3, 10), "ep=3"),
        (lambda: expert_parallel_plan("Mixtral-8x7B-v0.1", 8, 0), "tokens"),
        (lambda: ring_all_reduce_seconds(-1, 2), "nbytes"),
        (lambda: dataclasses.replace(TOY_MOE, experts_per_token=None), "together"),
        (lambda: dataclasses.replace(TOY_MOE, experts_per_token=9), "experts_per_token=9"),
        (lambda: dataclasses.replace(TOY_MOE, dense_layers=4), "dense_layers"),
        (lambda: dataclasses.replace(L70, shared_experts=1), "shared_experts=1"),
    ],
)
def test_bad_inputs_raise_a_config_error_naming_the_value(call, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("[", r"\[")):
        call()
