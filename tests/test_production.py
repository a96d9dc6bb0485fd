"""cblab_teach.production: every model's numbers by hand, the GPU sums, bad names, and the knobs table's coverage."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cblab_teach import EngineConfig, ModelConfig
from cblab_teach.errors import ConfigError
from cblab_teach.production import (
    GPUS,
    KNOBS,
    MODEL_SHAPES,
    arithmetic_intensity,
    decode_compute_bound_batch,
    engine_kv_bytes_per_token,
    engine_max_concurrent_requests,
    engine_pool_bytes,
    kv_bytes_per_request,
    kv_bytes_per_token,
    max_concurrent_requests,
    max_kv_tokens,
    peak_flops,
    ridge_point,
    step_flops_and_bytes,
    weight_bytes,
)

# KV bytes per token in bf16, written out: 2 (K and V) x layers x kv_heads x head_dim x 2 bytes; MLA: layers x 576 x 2.
HAND_KV_BF16 = {
    "Llama-3.1-8B": 2 * 32 * 8 * 128 * 2,  # 131072
    "Llama-3.1-70B": 2 * 80 * 8 * 128 * 2,  # 327680
    "Qwen2.5-7B": 2 * 28 * 4 * 128 * 2,  # 57344
    "Mistral-7B-v0.3": 2 * 32 * 8 * 128 * 2,  # 131072
    "Gemma-2-9B": 2 * 42 * 8 * 256 * 2,  # 344064
    "DeepSeek-V3": 61 * (512 + 64) * 2,  # 70272
}
# Parameters from each config.json: embeddings (+ untied head) + layers x (attention + 3 MLP matrices + norms) + norm.
HAND_PARAMS = {
    "Llama-3.1-8B": 2 * 128256 * 4096 + 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336 + 2 * 4096) + 4096,
    "Llama-3.1-70B": 2 * 128256 * 8192 + 80 * (8192 * (8192 + 1024 + 1024 + 8192) + 3 * 8192 * 28672 + 2 * 8192) + 8192,
    # Qwen2.5 has biases on q, k, v (3584 + 512 + 512)
    "Qwen2.5-7B": 2 * 152064 * 3584
    + 28 * (3584 * (3584 + 512 + 512 + 3584) + (3584 + 512 + 512) + 3 * 3584 * 18944 + 2 * 3584)
    + 3584,
    "Mistral-7B-v0.3": 2 * 32768 * 4096
    + 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336 + 2 * 4096)
    + 4096,
    # Gemma-2: tied embeddings, q = 16 x 256, k = v = 8 x 256, four norms per layer
    "Gemma-2-9B": 256000 * 3584 + 42 * (3584 * (4096 + 2048 + 2048) + 4096 * 3584 + 3 * 3584 * 14336 + 4 * 3584) + 3584,
    "DeepSeek-V3": 671_000_000_000,  # the README's total (MoE), not recomputed
}
STATED_SIZE_B = {
    "Llama-3.1-8B": 8.03,
    "Llama-3.1-70B": 70.6,
    "Qwen2.5-7B": 7.62,
    "Mistral-7B-v0.3": 7.25,
    "Gemma-2-9B": 9.24,
    "DeepSeek-V3": 671,
}


def test_every_model_is_checked_here_and_cites_its_config():
    assert set(MODEL_SHAPES) == set(HAND_KV_BF16) == set(HAND_PARAMS)
    for shape in MODEL_SHAPES.values():
        assert shape.source.startswith("https://huggingface.co/") and shape.source.endswith("config.json")
        assert shape.checked_via


@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_kv_bytes_per_token_by_hand(name):
    assert kv_bytes_per_token(name) == HAND_KV_BF16[name]
    assert kv_bytes_per_token(name, "fp8") == HAND_KV_BF16[name] / 2  # an 8-bit KV halves bf16 ...
    assert kv_bytes_per_token(name, "fp32") == HAND_KV_BF16[name] * 2  # ... and quarters float32
    assert kv_bytes_per_token(MODEL_SHAPES[name], "int8") == kv_bytes_per_token(name, "fp32") / 4


@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_parameter_counts_by_hand_match_the_stated_sizes(name):
    assert MODEL_SHAPES[name].params == HAND_PARAMS[name]
    assert round(HAND_PARAMS[name] / 1e9, 2 if HAND_PARAMS[name] < 1e10 else 1) == pytest.approx(STATED_SIZE_B[name])
    assert weight_bytes(name, "bf16") == 2 * HAND_PARAMS[name]
    assert weight_bytes(name, "int4") == HAND_PARAMS[name] / 2


def test_mla_caches_a_latent_far_smaller_than_full_keys_and_values():
    ds = MODEL_SHAPES["DeepSeek-V3"]
    full_mha = 2 * 61 * 128 * (128 + 64) * 2  # 128 heads of K (192 wide) and V, had it not compressed them
    assert kv_bytes_per_token(ds) * 50 < full_mha


@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_max_kv_tokens_on_an_h200_by_hand(name):
    budget = 141 * 2**30 * 0.9 - 2 * HAND_PARAMS[name]  # "141 GB" is 141 GiB
    expected = int(budget // HAND_KV_BF16[name]) if budget > 0 else 0
    assert max_kv_tokens(name, "H200") == expected
    budget8 = 141 * 2**30 * 0.9 - 1 * HAND_PARAMS[name]  # fp8 weights, fp8 KV
    assert max_kv_tokens(name, "H200", dtype="fp8") == (int(budget8 // (HAND_KV_BF16[name] / 2)) if budget8 > 0 else 0)


def test_max_kv_tokens_worked_example_llama_8b_on_h100():
    # 80 GiB x 0.9 = 77_309_411_328 bytes; weights 16_060_522_496; left 61_248_888_832; / 131072 per token
    assert max_kv_tokens("Llama-3.1-8B", "H100-SXM") == 61_248_888_832 // 131072 == 467_291
    # the KV dtype alone: fp8 KV doubles the tokens
    assert max_kv_tokens("Llama-3.1-8B", "H100-SXM", kv_dtype="fp8") == 61_248_888_832 // 65536 == 934_583


def test_weights_that_do_not_fit_leave_no_kv():
    assert max_kv_tokens("Llama-3.1-70B", "H100-SXM") == 0  # 141e9 bytes of bf16 weights on an 80 GiB card
    assert max_concurrent_requests("DeepSeek-V3", "H200", 4096) == 0


def test_max_concurrent_requests_by_hand():
    # Llama-3.1-8B on H100 at 8192 tokens: 8192 tokens = 512 whole blocks of 16
    per_request = 8192 * 131072
    assert max_concurrent_requests("Llama-3.1-8B", "H100-SXM", 8192) == int(61_248_888_832 // per_request) == 57
    # 8190 tokens still take 512 blocks
    assert max_concurrent_requests("Llama-3.1-8B", "H100-SXM", 8190) == 57
    # Qwen2.5-7B: 4 KV heads
    qwen_budget = 80 * 2**30 * 0.9 - 2 * HAND_PARAMS["Qwen2.5-7B"]
    assert max_concurrent_requests("Qwen2.5-7B", "H100-SXM", 8192) == int(qwen_budget // (8192 * 57344))


def test_gemma_sliding_layers_keep_only_their_window():
    per_layer = 2 * 8 * 256 * 2  # one layer of one token, bf16
    # 32768 tokens: 21 global layers keep all, 21 local layers keep 4096
    assert kv_bytes_per_request("Gemma-2-9B", 32768) == per_layer * (21 * 32768 + 21 * 4096)
    # below the window, every layer keeps everything (rounded to blocks of 16: 1000 -> 1008)
    assert kv_bytes_per_request("Gemma-2-9B", 1000) == per_layer * 42 * 1008


# Llama-3.1-8B's weights a token is multiplied with: all but the untied embedding table (128256 x 4096, a lookup)
MATMUL_8B = 8_030_261_248 - 128256 * 4096  # 7_504_924_672


@pytest.mark.parametrize("name", sorted(set(MODEL_SHAPES) - {"DeepSeek-V3"}))
def test_recorded_widths_rebuild_the_parameter_count(name):
    s = MODEL_SHAPES[name]
    q, kv = s.q_heads * s.head_dim, s.kv_heads * s.head_dim
    bias = q + 2 * kv if name == "Qwen2.5-7B" else 0
    norms = (4 if name == "Gemma-2-9B" else 2) * s.hidden
    layer = s.hidden * (q + 2 * kv) + bias + q * s.hidden + 3 * s.hidden * s.intermediate + norms
    tables = (1 if s.tied_embeddings else 2) * s.vocab * s.hidden
    assert tables + s.layers * layer + s.hidden == s.params


def test_the_embedding_lookup_is_not_counted_as_a_matmul():
    llama = MODEL_SHAPES["Llama-3.1-8B"]
    assert llama.matmul_params == MATMUL_8B and llama.lookup_params == 128256 * 4096
    flops, moved = step_flops_and_bytes("Llama-3.1-8B", 1, 1)
    assert flops == 2 * MATMUL_8B + 2 * 32 * 32 * 256 and moved == 2 * MATMUL_8B + 131072
    # a tied table is the LM head's matrix: multiplied every step, so it stays in (Gemma-2)
    assert MODEL_SHAPES["Gemma-2-9B"].matmul_params == MODEL_SHAPES["Gemma-2-9B"].params
    # the same model with its table tied: more FLOPs per token by exactly the table's size, twice
    tied = dataclasses.replace(llama, tied_embeddings=True)
    assert step_flops_and_bytes(tied, 1, 1)[0] - flops == 2 * 128256 * 4096
    # where the widths are unknown nothing is subtracted (DeepSeek-V3's 37B activated are taken as matmuls)
    assert MODEL_SHAPES["DeepSeek-V3"].matmul_params == 37_000_000_000


def test_roofline_by_hand_llama_8b_on_h100():
    ridge = 989e12 / 3350e9
    assert ridge_point("H100-SXM") == pytest.approx(ridge)
    assert peak_flops("H100-SXM", "fp8") == 1979e12
    p, w, kv = MATMUL_8B, 2 * MATMUL_8B, 131072
    attn = 2 * 32 * 32 * (128 + 128)  # per query token per key: QK^T and PV over all layers
    b, c = 64, 512
    assert arithmetic_intensity("Llama-3.1-8B", b, c) == pytest.approx(b * (2 * p + attn * c) / (w + b * c * kv))
    t = 2048  # prefill: 2048 prompt tokens of length 2048, on average half the keys
    assert arithmetic_intensity("Llama-3.1-8B", t, 2048, phase="prefill") == pytest.approx(
        t * (2 * p + attn * 2048 / 2) / (w + t * kv)
    )
    assert (
        arithmetic_intensity("Llama-3.1-8B", t, 2048, phase="prefill")
        > ridge
        > arithmetic_intensity("Llama-3.1-8B", 1, 2048)
    )


def test_decode_compute_bound_batch_by_hand():
    ridge = 989e12 / 3350e9
    p, w, kv, attn = MATMUL_8B, 2 * MATMUL_8B, 131072, 2 * 32 * 32 * 256
    c = 128  # short contexts: weights dominate, a batch in the hundreds crosses the ridge
    expected = math.ceil(ridge * w / (2 * p + attn * c - ridge * c * kv))
    got = decode_compute_bound_batch("Llama-3.1-8B", "H100-SXM", c)
    assert got == expected and 250 < got < 1000
    assert arithmetic_intensity("Llama-3.1-8B", got, c) >= ridge > arithmetic_intensity("Llama-3.1-8B", got - 1, c)
    # at 4096 tokens of context every request reads more KV bytes than its FLOPs can cover: never compute-bound
    assert 2 * p + attn * 4096 < ridge * 4096 * kv
    assert decode_compute_bound_batch("Llama-3.1-8B", "H100-SXM", 4096) is None


def test_gpu_numbers_are_dense_and_cited():
    assert set(GPUS) >= {"A100-80GB", "H100-SXM", "H200", "L4", "RTX-4090"}
    h100, h200 = GPUS["H100-SXM"], GPUS["H200"]
    assert (h100.memory_gib, h100.bandwidth_gbs, h100.bf16_tflops, h100.fp8_tflops) == (80, 3350, 989, 1979)
    assert (h200.memory_gib, h200.bandwidth_gbs, h200.bf16_tflops) == (141, 4800, 989)
    assert GPUS["A100-80GB"].fp8_tflops is None and GPUS["A100-80GB"].int8_tops == 2 * GPUS["A100-80GB"].bf16_tflops
    for g in GPUS.values():
        assert g.source.startswith("https://") and g.checked_via


def test_gpu_memory_is_binary_as_nvidia_smi_shows_it():
    # https://github.com/modal-labs/modal-client/pull/2797: nvidia-smi totals 81,559 MiB on an H100 80GB,
    # 81,920 MiB on an A100 80GB, 23,034 MiB on an L4
    h100 = GPUS["H100-SXM"]
    assert h100.memory_bytes == 80 * 1024**3 == 85_899_345_920 and h100.memory_gb == pytest.approx(85.9, abs=0.01)
    assert (h100.smi_total_mib, GPUS["A100-80GB"].smi_total_mib, GPUS["L4"].smi_total_mib) == (81559, 81920, 23034)
    assert 81559 * 1024**2 == 85_520_809_984  # about 85.5e9 bytes, 79.6 GiB
    for g in GPUS.values():
        if g.smi_total_mib is None:
            continue
        shown = g.smi_total_mib * 1024**2
        # what the driver shows is at most the nameplate read as GiB, and far above the nameplate read as 1e9 bytes
        assert g.memory_bytes * 0.93 <= shown <= g.memory_bytes, g.name
        assert shown > g.memory_gib * 1e9, g.name


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kv_bytes_per_token("Llama-4"), "Llama-3.1-8B"),
        (lambda: kv_bytes_per_token("Llama-3.1-8B", "bf15"), "bf16"),
        (lambda: max_kv_tokens("Llama-3.1-8B", "H300"), "H100-SXM"),
        (lambda: max_kv_tokens("Llama-3.1-8B", "H100-SXM", memory_utilization=1.5), "memory_utilization"),
        (lambda: arithmetic_intensity("Llama-3.1-8B", 8, 128, phase="verify"), "decode"),
        (lambda: arithmetic_intensity("Llama-3.1-8B", 0, 128), "batch_tokens"),
        (lambda: max_concurrent_requests("Qwen2.5-7B", "L4", 0), "context_len"),
        (lambda: peak_flops("A100-80GB", "fp8"), "int8"),
        (lambda: weight_bytes(42), "ModelShape"),
    ],
)
def test_bad_names_get_a_config_error_naming_the_accepted_values(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_the_engine_model_as_a_shape_counts_the_same_parameters_as_torch():
    from cblab_teach import TinyLM
    from cblab_teach.production import engine_model_shape

    mc = ModelConfig(vocab_size=300, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=100)
    shape = engine_model_shape(mc)
    assert shape.params == sum(p.numel() for p in TinyLM(mc, seed=0).parameters())
    assert (shape.hidden, shape.intermediate, shape.vocab, shape.kv_heads, shape.head_dim) == (64, 100, 300, 2, 16)
    assert shape.matmul_params == shape.params - 300 * 64  # the untied embedding table is a lookup


def test_the_toy_engine_is_the_same_formula():
    mc = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2)
    ec = EngineConfig(num_blocks=64, block_size=16)
    assert engine_kv_bytes_per_token(mc) == 2 * 2 * 2 * 16 * 4  # float32, head_dim 64 / 4
    assert engine_pool_bytes(ec, mc) == 64 * 16 * 512
    assert engine_max_concurrent_requests(ec, 100) == 64 // 7  # 100 tokens = 7 blocks of 16


def test_every_engine_setting_and_plugin_has_a_row_in_the_knobs_table():
    import inspect

    import cblab_teach.advanced as advanced
    import cblab_teach.monitoring as monitoring
    import cblab_teach.plugins as plugins
    from cblab_teach.plugins.base import Plugin

    fields = {f.name for f in dataclasses.fields(EngineConfig)}  # read now: new fields must be added to KNOBS
    bases = {"Plugin", "SchedulerPlugin", "AttentionPlugin", "CachePlugin"}
    plugin_names = {  # every plugin a learner can import, wherever it lives
        name
        for package in (plugins, monitoring, advanced)
        for name, obj in vars(package).items()
        if inspect.isclass(obj) and issubclass(obj, Plugin) and name not in bases
    }
    assert {"KVQuantizationPlugin", "MetricsCollector", "ShardedAttentionPlugin"} <= plugin_names  # the scan works
    rows = {k.ours: k for k in KNOBS}
    assert fields - rows.keys() == set(), f"EngineConfig fields missing from KNOBS: {fields - rows.keys()}"
    assert plugin_names - rows.keys() == set(), f"plugins missing from KNOBS: {plugin_names - rows.keys()}"
    assert len(rows) == len(KNOBS), "one row per setting"
    for k in KNOBS:
        assert k.kind == ("EngineConfig" if k.ours in fields else "plugin")
        assert k.vllm and k.sglang and k.tgi and k.meaning
    assert "max_num_batched_tokens" in rows["max_tokens_per_step"].vllm
    assert "chunked_prefill_size" in rows["prefill_chunk_size"].sglang
    assert rows["max_running"].sglang == "max_running_requests"


def test_knobs_state_the_sglang_budget_and_priority_facts():
    # server_args.py: max_prefill_tokens, chunked_prefill_size, enable_mixed_chunk (default False),
    # enable_priority_scheduling ("higher priority integer values ... first by default"); vLLM: lower value first
    rows = {k.ours: k for k in KNOBS}
    budget = rows["max_tokens_per_step"].sglang
    assert all(name in budget for name in ("max_prefill_tokens", "chunked_prefill_size", "enable_mixed_chunk"))
    assert "off by default" in budget
    for row in (rows["policy"], rows["PriorityPlugin"]):
        assert "enable_priority_scheduling" in row.sglang and "larger" in row.sglang
        assert "smaller" in row.vllm
    assert "per tensor" in rows["KVQuantizationPlugin"].vllm
    assert "token by token" in rows["enable_prefix_caching"].note
