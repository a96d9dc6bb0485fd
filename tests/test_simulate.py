"""The simulated clock: tiny runs timed by hand with step_time, arrivals, preemption, goodput."""

from __future__ import annotations

import dataclasses

import pytest

from cblab_teach import EngineConfig
from cblab_teach.errors import ConfigError
from cblab_teach.production import (
    GPUSpec,
    ModelShape,
    RequestResult,
    SimResult,
    poisson_arrivals,
    poisson_workload,
    rate_sweep,
    simulate,
    step_time,
)
from cblab_teach.production.simulate import sim_engine_config
from cblab_teach.workloads import Workload

TINY = ModelShape(
    "tiny", layers=2, q_heads=2, kv_heads=1, head_dim=4, params=1352, active_params=1352,
    source="by hand", hidden=8, intermediate=16, vocab=10,
)  # fmt: skip
# 100 kB: 90 kB for KV at 32 bytes per token (2 layers x K and V x 4 wide x 2 B) = 2,727 tokens, 170 blocks of 16
SMALL = GPUSpec("small", memory_gib=1e5 / 2**30, bandwidth_gbs=1, bf16_tflops=1, fp8_tflops=None, int8_tops=2,
                source="by hand", checked_via="by hand")  # fmt: skip
ROOMY = EngineConfig(max_tokens_per_step=64, prefill_chunk_size=64, max_running=8, preemption=True)


def prompts(*lengths: int) -> list[list[int]]:
    return [[(7 * i + j) % 200 for j in range(n)] for i, n in enumerate(lengths)]


def t(decodes=(), chunks=(), rows=None) -> float:
    return step_time(TINY, SMALL, list(decodes), list(chunks), logits_rows=rows).seconds


def test_the_pool_is_what_the_gpu_memory_leaves():
    config = sim_engine_config(TINY, SMALL, ROOMY)
    assert config.num_blocks == int((1e5 * 0.9 - 2 * 1352) // 32) // 16
    assert config.max_tokens_per_step == 64 and config.preemption is True


def test_one_request_alone_ttft_is_its_prefill_and_e2e_the_sum_of_its_steps():
    w = Workload(prompts(10), [3])
    result = simulate(TINY, SMALL, w, [0.0], ROOMY)
    prefill, d1, d2 = t(chunks=[(10, 0)], rows=1), t([11]), t([12])
    (r,) = result.requests
    assert r.ttft_s == pytest.approx(prefill)
    assert r.token_times == pytest.approx([prefill, prefill + d1, prefill + d1 + d2])
    assert r.e2e_s == pytest.approx(prefill + d1 + d2) == pytest.approx(sum(s.seconds for s in result.steps))
    assert r.tpot_s == pytest.approx((d1 + d2) / 2)


def test_a_chunked_prompt_takes_one_step_per_chunk_before_its_first_token():
    config = dataclasses.replace(ROOMY, prefill_chunk_size=4)
    result = simulate(TINY, SMALL, Workload(prompts(10), [1]), [2.5], config)
    expected = t(chunks=[(4, 0)], rows=0) + t(chunks=[(4, 4)], rows=0) + t(chunks=[(2, 8)], rows=1)
    (r,) = result.requests
    assert r.ttft_s == pytest.approx(expected) and r.tpot_s is None
    assert result.steps[0].start_s == 2.5  # the clock jumped to the arrival, it did not run before it


def test_a_request_arriving_during_a_step_joins_the_next_one():
    first_step = t(chunks=[(10, 0)], rows=1)
    w = Workload(prompts(10, 6), [3, 2])
    result = simulate(TINY, SMALL, w, [0.0, first_step / 2], ROOMY)
    r0, r1 = result.requests
    assert result.steps[0].prefill_tokens == 10 and result.steps[1].prefill_tokens == 6  # r1 waited a step
    second = t([11], [(6, 0)], rows=2)
    assert r1.ttft_s == pytest.approx(first_step + second - first_step / 2)
    assert r0.token_times[1] == pytest.approx(first_step + second)  # r0's decode shared that step
    for r in result.requests:  # no token before its request arrived
        assert r.token_times[0] > r.arrival_s


def test_preemption_stays_exact_when_the_pool_runs_out():
    # 20 requests of 100 + 60 tokens need 20 x 10 blocks at the end; the pool has 170: some must be preempted
    w = Workload(prompts(*[100] * 20), [60] * 20)
    config = dataclasses.replace(ROOMY, max_tokens_per_step=256, prefill_chunk_size=128, max_running=20)
    result = simulate(TINY, SMALL, w, [0.0] * 20, config)
    assert sum(s.preempted for s in result.steps) > 0
    assert [r.output_len for r in result.requests] == [60] * 20  # every token, once
    for r in result.requests:
        assert r.token_times == sorted(r.token_times)


def test_goodput_counts_only_requests_meeting_both_objectives():
    good = RequestResult(0, 0.0, 8, [0.1, 0.2, 0.3])  # TTFT 0.1, TPOT 0.1
    slow_start = RequestResult(1, 0.0, 8, [0.9, 1.0])  # TTFT 0.9
    slow_tokens = RequestResult(2, 1.0, 8, [1.1, 1.6, 2.0])  # TTFT 0.1, TPOT 0.45
    single = RequestResult(3, 1.5, 8, [1.6])  # one token: no TPOT, meets the TTFT
    result = SimResult([good, slow_start, slow_tokens, single], [])
    assert result.duration_s == 2.0 and result.output_tokens == 9
    assert result.goodput(0.5, 0.2) == 2 / 2.0  # good and single
    assert result.attainment(0.5, 0.2) == 0.5
    assert result.goodput(1.0, 0.5) == 4 / 2.0
    assert result.throughput_tokens_s == 9 / 2.0


def test_poisson_arrivals():
    times = poisson_arrivals(4000, 20.0, seed=3)
    gaps = [b - a for a, b in zip([0.0] + times, times)]
    assert all(g >= 0 for g in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20, rel=0.05)
    assert poisson_arrivals(3, float("inf")) == [0.0, 0.0, 0.0]
    assert poisson_arrivals(5, 2.0, seed=1) == poisson_arrivals(5, 2.0, seed=1)


def test_llama_8b_on_an_h100_small_run_and_a_sweep():
    w, arrivals = poisson_workload(20, 10.0, prompt_len=(64, 256), output_len=(8, 32))
    result = simulate("Llama-3.1-8B", "H100-SXM", w, arrivals)
    assert [r.output_len for r in result.requests] == w.max_new_tokens
    # a decode step of Llama-3.1-8B costs at least its weights read once: 15.0 GB / 3.35 TB/s
    assert min(s.seconds for s in result.steps) > 15.0e9 / 3.35e12
    rows = rate_sweep("Llama-3.1-8B", "H100-SXM", [1.0, 1000.0], num_requests=20, prompt_len=(64, 256),
                      output_len=(8, 32))  # fmt: skip
    assert rows[0]["rate"] == 1.0 and rows[1]["ttft_p50_s"] > rows[0]["ttft_p50_s"]
    assert rows[1]["throughput_tokens_s"] > rows[0]["throughput_tokens_s"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: poisson_arrivals(0, 1.0), "got 0"),
        (lambda: poisson_arrivals(3, -1.0), "got -1.0"),
        (lambda: simulate(TINY, SMALL, Workload(prompts(4), [2]), [0.0, 1.0]), "1 requests, 2 arrivals"),
        (lambda: simulate(TINY, SMALL, Workload(prompts(4), [2]), [-1.0]), r"got \[-1.0\]"),
        (lambda: simulate(TINY, SMALL, [[1, 2]], [0.0]), "Workload"),
        (lambda: simulate("Llama-3.1-70B", "H100-SXM", Workload(prompts(4), [2]), [0.0]), "leaves no KV"),
        (lambda: simulate("Llama-9B", "H100-SXM", Workload(prompts(4), [2]), [0.0]), "Llama-9B"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_the_light_batch_samples_the_rows_the_full_batch_samples():
    """ShapeOnlyLM skips positions and keys; the rows it samples, and their owners, are the real builder's."""
    from cblab_teach.core.batch_builder import build_batch
    from cblab_teach.core.engine import Engine
    from cblab_teach.production.simulate import ShapeOnlyLM

    model = ShapeOnlyLM()
    config = dataclasses.replace(ROOMY, max_tokens_per_step=24, prefill_chunk_size=8, num_blocks=64)
    engine = Engine(model, config)
    for p, n in zip(prompts(5, 30, 12), (4, 3, 6)):
        engine.add_request(p, n)
    seen = 0
    while engine.has_unfinished():
        record = engine.step()
        full = build_batch(record.plan, engine.requests, model.device)
        light = model.build_batch(record.plan, engine.requests, model.device)
        assert light.sample_request_ids == full.sample_request_ids and light.num_tokens == full.num_tokens
        assert light.request_ids == full.request_ids
        seen += len(full.sample_request_ids)
    assert seen == 4 + 3 + 6  # every sampled token went through the comparison
