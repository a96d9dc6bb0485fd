"""The step-time model: a tiny shape counted by hand, the back-of-envelope for Llama-3.1-8B, and engine records."""

from __future__ import annotations

import dataclasses

import pytest

from cblab_teach import Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.errors import ConfigError
from cblab_teach.production import (
    IDEAL,
    MODEL_SHAPES,
    Efficiency,
    GPUSpec,
    ModelShape,
    step_time,
    step_time_from_record,
)
from cblab_teach.production.step_time import attention_pairs, step_args, vllm_latency_check

# 2 layers, 2 query heads sharing 1 KV head of width 4, hidden 8, MLP 16, vocab 10, untied embeddings
TINY = ModelShape(
    "tiny", layers=2, q_heads=2, kv_heads=1, head_dim=4, params=1352, active_params=1352,
    source="by hand", hidden=8, intermediate=16, vocab=10,
)  # fmt: skip
# 1 TFLOP/s, 1 GB/s: every op of TINY is memory-bound, so its time is its bytes / 1e9
SLOW = GPUSpec("slow", memory_gib=1, bandwidth_gbs=1, bf16_tflops=1, fp8_tflops=None, int8_tops=2,
               source="by hand", checked_via="by hand")  # fmt: skip


def test_tiny_params_add_up():
    # two tables (embedding + head), per layer: q|k|v 8x16, o 8x8, gate/up/down 3x8x16, two norms; final norm
    assert 2 * 10 * 8 + 2 * (8 * 16 + 8 * 8 + 3 * 8 * 16 + 2 * 8) + 8 == TINY.params


def test_every_operator_of_a_tiny_step_by_hand():
    # one decode attending 3 keys, one prefill chunk of 2 tokens after 1 cached: 3 tokens, 2 logits rows
    t = step_time(TINY, SLOW, decode_contexts=[3], prefill_chunks=[(2, 1)], efficiency=IDEAL)
    # bytes: weights (2 B each) + rows in and out (2 B each, per matrix)
    expected = {
        "embedding": (0, 3 * 8 * 2),
        "qkv": (2 * 3 * 256, 256 * 2 + 2 * 3 * (8 + 16) * 2),  # 2 layers x 8x16
        # pairs per layer: decode 3, chunk 2 + 3 -> 8; x 2 layers x (QK^T + PV = 2 x 2 x 2 heads x 4)
        # KV: (3 + 3 keys read + 3 written) x 2 layers x (K and V of 1 head x 4 x 2 B)
        "attention": (16 * 32, 18 * 16),
        "o_proj": (2 * 3 * 128, 128 * 2 + 2 * 3 * (8 + 8) * 2),
        "mlp": (2 * 3 * 768, 768 * 2 + 6 * 3 * (8 + 16) * 2),  # 6 matrices of 8x16
        "lm_head": (2 * 2 * 80, 80 * 2 + 2 * (8 + 10) * 2),  # 2 rows x 8x10
        "launch": (0, 0),
    }
    assert {o.name: (o.flops, o.bytes) for o in t.ops} == expected
    assert t.seconds == pytest.approx(sum(b for _, b in expected.values()) / 1e9)
    assert all(o.bound == "memory" for o in t.ops if o.name != "launch") and t.op("launch").bound == "fixed"
    # a GPU 1000x faster at arithmetic and 1e-6 the bandwidth turns every op with FLOPs compute-bound
    fast = dataclasses.replace(SLOW, bf16_tflops=1e-9, bandwidth_gbs=1e6)
    t2 = step_time(TINY, fast, [3], [(2, 1)], efficiency=IDEAL)
    assert t2.op("mlp").seconds == pytest.approx(2 * 3 * 768 / 1e3) and t2.op("mlp").bound == "compute"


def test_efficiency_factors_and_launch_scale_what_they_say():
    base = step_time(TINY, SLOW, [3], [(2, 1)], efficiency=IDEAL)
    half = step_time(TINY, SLOW, [3], [(2, 1)], efficiency=Efficiency(1.0, 1.0, 0.5, 0.002, 0.001))
    assert half.breakdown["launch"] == pytest.approx(0.002 + 2 * 0.001)  # two requests in the step
    assert half.seconds == pytest.approx(2 * base.seconds + 0.004)


def test_attention_pairs_match_a_brute_force_count_with_sliding_windows():
    # Gemma-2's 21 full and 21 sliding layers, its window shrunk to 16 keys so a brute force stays fast
    gemma = dataclasses.replace(MODEL_SHAPES["Gemma-2-9B"], sliding_window=16)
    chunks = [(7, 12), (5, 0), (40, 0), (3, 30)]
    decodes = [10, 50]
    brute_pairs = brute_reads = 0
    for layer in range(42):
        window = 16 if layer % 2 else None
        for c in decodes:
            seen = min(c, window) if window else c
            brute_pairs += seen
            brute_reads += seen
        for length, before in chunks:
            keys = set()
            for i in range(length):
                first = max(0, before + i + 1 - window) if window else 0
                brute_pairs += before + i + 1 - first
                keys.update(range(first, before + i + 1))
            brute_reads += len(keys)
    assert attention_pairs(gemma, decodes, chunks) == (brute_pairs, brute_reads)


def test_llama_8b_64_decodes_at_4k_is_the_back_of_envelope():
    # (15.0 GB of matmul weights + 34.4 GB of KV) / 3.35 TB/s: ~14.7 ms (16.1 GB with the embedding table: 15 ms)
    t = step_time("Llama-3.1-8B", "H100-SXM", decode_contexts=[4096] * 64, efficiency=IDEAL)
    weights = 2 * (8_030_261_248 - 128256 * 4096)
    kv = 64 * 4096 * 2 * 32 * 8 * 128 * 2
    assert t.seconds == pytest.approx((weights + kv) / 3.35e12, rel=0.01)
    assert 14e-3 < t.seconds < 15.5e-3
    assert all(o.bound == "memory" for o in t.ops if o.name != "launch")
    # the matmuls together are 2 x matmul_params FLOPs per token (norms, a few thousand weights, left out)
    mm = sum(t.op(n).flops for n in ("qkv", "o_proj", "mlp")) + t.op("lm_head").flops
    assert mm == pytest.approx(64 * 2 * MODEL_SHAPES["Llama-3.1-8B"].matmul_params, rel=1e-4)


def test_an_8k_prefill_is_compute_bound():
    t = step_time("Llama-3.1-8B", "H100-SXM", prefill_chunks=[(8192, 0)])
    for name in ("qkv", "o_proj", "mlp", "attention"):
        assert t.op(name).bound == "compute"
    assert t.op("lm_head").bound == "memory"  # one row of logits: a matrix-vector product


def test_the_published_vllm_measurement_is_slower_than_the_model_but_within_2x():
    predicted, measured = vllm_latency_check()
    ideal, _ = vllm_latency_check(IDEAL)
    assert ideal < predicted < measured < 2 * predicted


def test_a_recorded_step_is_timed_by_its_chunks():
    model = TinyLM(ModelConfig(num_layers=1, hidden_size=16, num_heads=2), seed=0)
    engine = Engine(model, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4))
    engine.add_request(list(range(6)), 3)
    engine.add_request([1, 2], 3)
    records = engine.run()
    first = records[0]  # request 0: prompt tokens 0..4 (chunk of 4), request 1: its whole prompt of 2
    assert step_args(first) == ([], [(4, 0), (2, 0)], 1)  # only request 1's chunk reaches its prompt's end
    later = next(r for r in records if r.plan.decode_tokens == 2)
    decodes, prefill, rows = step_args(later)
    assert prefill == [] and rows == 2
    assert sorted(decodes) == sorted(c.end for c in later.plan.chunks)
    got = step_time_from_record(later, "Llama-3.1-8B", "H100-SXM")
    assert got.seconds == step_time("Llama-3.1-8B", "H100-SXM", decodes, logits_rows=2).seconds
    by_hand = step_time(TINY, SLOW, [], [(4, 0), (2, 0)], logits_rows=1)
    assert step_time_from_record(first.plan, TINY, SLOW).seconds == by_hand.seconds


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: step_time("Llama-9B", "H100-SXM", [4]), "unknown model shape 'Llama-9B'"),
        (lambda: step_time("Llama-3.1-8B", "H900", [4]), "unknown GPU 'H900'"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM", [4], dtype="bf17"), "unknown dtype 'bf17'"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM", [-3]), "got -3"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM", [], [(8, -1)]), r"got \(8, -1\)"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM", [], [(0, 5)]), r"got \(0, 5\)"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM", [], [8]), "got 8"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM"), "at least one"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM", [4], dtype="int4"), "int4"),
        (lambda: step_time("DeepSeek-V3", "H200", [4]), "DeepSeek-V3"),
        (lambda: step_time("Llama-3.1-8B", "H100-SXM", [4], logits_rows=-1), "got -1"),
        (lambda: Efficiency(bandwidth=1.5), "bandwidth"),
        (lambda: Efficiency(launch_s=-1.0), "launch_s"),
        (lambda: Efficiency(per_request_s=float("nan")), "per_request_s"),
        (lambda: step_time_from_record(42, "Llama-3.1-8B", "H100-SXM"), "StepRecord"),
    ],
)
def test_bad_inputs_raise_a_config_error_naming_the_value(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
