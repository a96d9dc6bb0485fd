"""The test that proves continuous batching: batched == alone == an independent recompute == Hugging Face.

The reference for every batched run is ``tests/reference.py``: greedy decoding by full recompute over the
same weights, with no cache and the causal mask written directly, so a bug shared by the batched and the
alone engine (a broken default mask, say) cannot make both agree.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from cblab_teach import ConfigError, Engine, EngineConfig, SamplingParams, StaticBatchingEngine, TinyLM
from cblab_teach.core.batch_builder import build_batch
from cblab_teach.core.engine import make_kv_cache
from cblab_teach.core.request import Request
from cblab_teach.core.scheduler import ScheduledChunk, StepPlan

from .helpers import hf_llama, run_alone
from .reference import full_logits, greedy

SETTINGS = [
    dict(max_tokens_per_step=b, prefill_chunk_size=c, kv_layout=kv, block_size=bs, num_blocks=64)
    for (b, c), kv, bs in itertools.product([(1, 1), (2, 1), (5, 3), (16, 4), (64, 64)], ["dense", "paged"], [1, 4])
]


@pytest.fixture(scope="module")
def sharp64(model64) -> TinyLM:
    """model64 with its weights scaled 5x: at the default init the greedy tokens hardly depend on earlier
    tokens (change the first prompt token and no output changes), so a broken causal mask would go unseen.
    Here every output of the workload changes with its first token."""
    model = copy.deepcopy(model64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(5.0)
    return model


def test_outputs_depend_on_the_whole_context(sharp64, workload):
    for p, n in zip(workload.prompts, workload.max_new_tokens):
        assert greedy(sharp64, p, n) != greedy(sharp64, [(p[0] + 1) % 97, *p[1:]], n)


@pytest.fixture(scope="module")
def alone(sharp64, workload):
    """Independent of the engine: full recompute, no cache."""
    return [greedy(sharp64, p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]


def test_the_engine_alone_equals_the_recompute_reference(sharp64, workload, alone):
    assert [run_alone(sharp64, p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)] == alone
    assert len({tuple(o) for o in alone}) >= 5  # different prompts, different outputs: a mix-up would show


def test_the_reference_matches_huggingface_logits():
    """The reference itself is checked against an implementation we did not write."""
    hf = hf_llama(2)
    prompt = [3, 14, 15, 92, 65, 35, 89, 79, 1, 2]
    torch.testing.assert_close(
        full_logits(TinyLM.from_hf(hf), prompt), hf(torch.tensor([prompt])).logits[0], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "cfg",
    SETTINGS,
    ids=lambda c: f"b{c['max_tokens_per_step']}-c{c['prefill_chunk_size']}-{c['kv_layout']}-bs{c['block_size']}",
)
def test_batched_equals_alone(sharp64, workload, alone, cfg):
    out = Engine(sharp64, EngineConfig(**cfg)).generate(workload.prompts, workload.max_new_tokens)
    assert out == alone


@pytest.mark.parametrize(
    "attention,kv_read", [("ragged", "block_table"), ("segmented", "flatten"), ("ragged", "flatten")]
)
def test_every_attention_path_gives_the_same_tokens(sharp64, workload, alone, attention, kv_read):
    cfg = EngineConfig(max_tokens_per_step=9, prefill_chunk_size=4, attention=attention, kv_read=kv_read, block_size=4)
    assert Engine(sharp64, cfg).generate(workload.prompts, workload.max_new_tokens) == alone


def test_requests_arriving_mid_run_get_their_alone_output(sharp64, workload, alone):
    engine = Engine(sharp64, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3, block_size=2))
    ids = {}
    for i, (p, n) in enumerate(zip(workload.prompts, workload.max_new_tokens)):
        ids[i] = engine.add_request(p, n)
        for _ in range(i % 3):  # new requests join while others are mid-prefill or mid-decode
            if engine.has_unfinished():
                engine.step()
    engine.run()
    assert [engine.output(ids[i]) for i in range(len(ids))] == alone


def test_output_does_not_depend_on_batch_neighbours(sharp64):
    target = [5, 17, 3, 3, 60, 2]
    ref = run_alone(sharp64, target, 8)
    for neighbours in ([[1] * 30], [[7, 8, 9]] * 5, [[90, 4] * 7, [11]]):
        engine = Engine(sharp64, EngineConfig(max_tokens_per_step=12, prefill_chunk_size=5))
        for p in neighbours:
            engine.add_request(p, 10)
        rid = engine.add_request(target, 8)
        engine.run()
        assert engine.output(rid) == ref


def test_static_batching_equals_alone(sharp64, workload, alone):
    for batch_size in (1, 3, 7):
        out = StaticBatchingEngine(sharp64, batch_size=batch_size).generate(workload.prompts, workload.max_new_tokens)
        assert out == alone


def test_static_batching_pays_for_padding(model64, workload):
    static = StaticBatchingEngine(model64, batch_size=len(workload))
    static.generate(workload.prompts, workload.max_new_tokens)
    padding = sum(r.extra["padding_tokens"] for r in static.records)
    assert padding > 0
    assert len(static.records) == max(workload.max_new_tokens)


def _prefill_logits_and_kv(model: TinyLM, prompt: list[int], chunk: int):
    """Prefill ``prompt`` in chunks of ``chunk``; return every position's logits and the stored K/V."""
    cfg = EngineConfig(block_size=3, num_blocks=32)
    kv = make_kv_cache(model, cfg)
    req = Request(0, prompt, 1)
    kv.admit(0, len(prompt))
    logits = []
    for start in range(0, len(prompt), chunk):
        n = min(chunk, len(prompt) - start)
        plan = StepPlan(budget=chunk, chunks=[ScheduledChunk(0, start, n, "prefill", start + n == len(prompt))])
        kv.ensure(0, start + n)
        logits.append(model(build_batch(plan, {0: req}), kv, all_logits=True))
        req.num_computed = start + n
    k, v = zip(*(kv.gather(layer, 0) for layer in range(model.config.num_layers)))
    return torch.cat(logits), torch.stack(k), torch.stack(v)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_chunked_prefill_equals_one_shot(model64, chunk):
    prompt = [(7 * i + 3) % 97 for i in range(13)]
    full = _prefill_logits_and_kv(model64, prompt, len(prompt))
    chunked = _prefill_logits_and_kv(model64, prompt, chunk)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["paged", "dense"])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_last_prompt_token_is_stored_once(sharp64, layout, chunk):
    """The first decode step feeds the first *generated* token, not the last prompt token again.

    Counted in computed tokens, position by position: every position of prompt + output (except the last
    output token, which is never fed back) is computed exactly once, and nothing else.
    """
    prompt, n = [4, 5, 6, 7, 8], 4
    engine = Engine(sharp64, EngineConfig(kv_layout=layout, block_size=2, prefill_chunk_size=chunk))
    rid = engine.add_request(prompt, n)
    positions: list[int] = []
    for record in engine.run():
        for c in record.plan.chunks:
            positions += range(c.start, c.end)
            if c.kind == "decode":
                assert c.start >= len(prompt) and c.length == 1
    assert sorted(positions) == positions == list(range(len(prompt) + n - 1))
    assert engine.output(rid) == greedy(sharp64, prompt, n)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_equals_huggingface_generate(kv_heads):
    hf = hf_llama(kv_heads)
    model = TinyLM.from_hf(hf)
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9] * 20, [100, 3, 55]]
    n = [10, 4, 7, 12]
    out = Engine(model, EngineConfig(max_tokens_per_step=7, prefill_chunk_size=3, block_size=4)).generate(prompts, n)
    for p, o, m in zip(prompts, out, n):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=m, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert o == ref[0, len(p) :].tolist()


def test_float32_equals_huggingface_generate():
    hf = hf_llama(2, dtype=torch.float32, seed=3)
    model = TinyLM.from_hf(hf)
    prompts = [[1, 2, 3, 4, 5], [9] * 11]
    out = Engine(model, EngineConfig(max_tokens_per_step=4, prefill_chunk_size=2)).generate(prompts, 8)
    for p, o in zip(prompts, out):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert o == ref[0, len(p) :].tolist()


def test_logits_match_huggingface_forward():
    hf = hf_llama(2)
    model = TinyLM.from_hf(hf)
    prompt = [3, 14, 15, 92, 65, 35, 89, 79]
    ours, _, _ = _prefill_logits_and_kv(model, prompt, 3)
    theirs = hf(torch.tensor([prompt])).logits[0]
    # HF's RMSNorm (and both RoPEs) compute in float32 even for a float64 model: agreement is ~1e-8
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_sampling_is_seeded_per_request(model64):
    hot = SamplingParams(temperature=1.3, top_k=20, top_p=0.9, seed=11)
    target = [5, 6, 7, 8]
    alone = Engine(model64).generate([target], 12, sampling=[hot])[0]
    engine = Engine(model64, EngineConfig(max_tokens_per_step=5, prefill_chunk_size=2))
    engine.add_request([1] * 9, 6, sampling=SamplingParams(temperature=0.8, seed=2))
    rid = engine.add_request(target, 12, sampling=hot)
    engine.run()
    assert engine.output(rid) == alone
    greedy = run_alone(model64, target, 12)
    assert alone != greedy  # sampling really sampled


def test_eos_stops_a_request(model64):
    full = run_alone(model64, [1, 2, 3], 10)
    eos = full[3]
    engine = Engine(model64)
    rid = engine.add_request([1, 2, 3], 10, eos_token_id=eos)
    engine.run()
    assert engine.output(rid) == full[: full.index(eos) + 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_matches_cpu(sharp64, workload, alone):
    model = copy.deepcopy(sharp64)
    cfg = EngineConfig(max_tokens_per_step=9, prefill_chunk_size=4, device="cuda")
    assert Engine(model, cfg).generate(workload.prompts, workload.max_new_tokens) == alone


def test_cuda_without_a_gpu_is_a_clear_error(model64):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="cuda"):
        Engine(model64, EngineConfig(device="cuda"))
