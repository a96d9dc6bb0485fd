"""Scheduling policies on the simulated clock: each one's rule, checked on its steps; goodput orderings derived."""

from __future__ import annotations

import dataclasses

import pytest

from cblab_teach import EngineConfig
from cblab_teach.core.engine import Engine
from cblab_teach.errors import ConfigError
from cblab_teach.production import GPUS, kv_bytes_per_token, step_time
from cblab_teach.production.memory import weight_bytes
from cblab_teach.production.policies import (
    NET_400G_BYTES_S,
    NVLINK4_BYTES_S,
    POLICIES,
    StaticScheduler,
    VllmV1Scheduler,
    compare_policies,
    run_policy,
    simulate_disaggregated,
    transfer_seconds,
)
from cblab_teach.production.simulate import ShapeOnlyLM, poisson_workload, sim_engine_config
from cblab_teach.workloads import Workload

MODEL, GPU = "Llama-3.1-8B", "H100-SXM"


def prompts(*lengths: int) -> list[list[int]]:
    return [[(7 * i + j) % 200 for j in range(n)] for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def busy():
    """1-2k-token prompts at 30 per second, about what one H100 can prefill of an 8B model: queues form."""
    return poisson_workload(24, 30.0, prompt_len=(1024, 2048), output_len=(16, 48), long_tail=False, seed=1)


@pytest.fixture(scope="module")
def runs(busy):
    """Every policy on the busy load, run once for the tests below."""
    w, arrivals = busy
    return {p: run_policy(p, MODEL, GPU, w, arrivals, static_batch_size=8) for p in POLICIES}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_serves_every_request_to_its_last_token(policy, busy, runs):
    w, arrivals = busy
    result = runs[policy]
    assert [r.output_len for r in result.requests] == w.max_new_tokens
    for r, t in zip(result.requests, arrivals):
        assert r.token_times == sorted(r.token_times) and r.token_times[0] > t


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_survives_preemption_in_a_tiny_pool(policy):
    # a pool of about 3,300 tokens: 8 requests of 350 prompt tokens all fit (2.8k), but not once each has grown
    # by 100 (3.6k), so running requests must be preempted
    w = Workload(prompts(*[300, 400] * 4), [100] * 8)
    share = (weight_bytes(MODEL) + 3300 * kv_bytes_per_token(MODEL)) / GPUS[GPU].memory_bytes
    options = {"memory_utilization": share, "static_batch_size": 8}
    assert 8 * 350 < sim_engine_config(MODEL, GPU, memory_utilization=share).num_slots < 8 * 450
    result = run_policy(policy, MODEL, GPU, w, [0.0] * 8, **options)
    assert [r.output_len for r in result.requests] == [100] * 8
    assert sum(s.preempted for s in result.steps) > 0


def test_prefill_first_never_mixes_a_step_while_decode_first_does(runs):
    sglang, ours = runs["prefill_first"], runs["decode_first"]
    assert all(s.decode_tokens == 0 or s.prefill_tokens == 0 for s in sglang.steps)
    assert any(s.decode_tokens for s in sglang.steps) and any(s.prefill_tokens for s in sglang.steps)
    assert any(s.decode_tokens and s.prefill_tokens for s in ours.steps)  # the same load does mix here


def engine_with(scheduler_cls, config: EngineConfig, **kwargs) -> Engine:
    engine = Engine(ShapeOnlyLM(), config)
    c = engine.config
    engine.scheduler = scheduler_cls(c.max_tokens_per_step, c.prefill_chunk_size, c.max_running, **kwargs)
    return engine


def test_vllm_never_gives_a_request_more_prompt_tokens_than_the_threshold():
    config = sim_engine_config(MODEL, GPU, EngineConfig(max_tokens_per_step=512, prefill_chunk_size=512))
    engine = engine_with(VllmV1Scheduler, config, long_prefill_token_threshold=96)
    for p in prompts(700, 50, 300, 20):
        engine.add_request(p, 8)
    records = engine.run()
    prefill = [c.length for r in records for c in r.plan.chunks if c.kind == "prefill"]
    assert max(prefill) == 96  # the cap binds, and is never passed
    assert [engine.output(i) for i in range(4)] == [[0] * 8] * 4
    free = Engine(ShapeOnlyLM(), config)  # the engine's own scheduler, same budget: a 512-token chunk
    for p in prompts(700, 50, 300, 20):
        free.add_request(p, 8)
    assert max(c.length for r in free.run() for c in r.plan.chunks) == 512


@pytest.mark.parametrize(("scheduler", "expected"), [(None, {0: 7, 1: 1}), (VllmV1Scheduler, {0: 8})])
def test_vllm_serves_the_running_queue_in_order_where_decode_first_serves_decoders_first(scheduler, expected):
    # step 1 (budget 16, at most 8 prompt tokens each): A takes 8 of its 100, B all 4 of its own and samples.
    # step 2, budget cut to 8: decode_first gives B its token first and A the other 7; vLLM walks the running
    # queue [A, B]: A takes the 8, B skips the step.
    config = EngineConfig(max_tokens_per_step=16, prefill_chunk_size=8, num_blocks=64)
    engine = (
        engine_with(scheduler, config, long_prefill_token_threshold=8) if scheduler else Engine(ShapeOnlyLM(), config)
    )
    a, b = (engine.add_request(p, 4) for p in prompts(100, 4))
    first = engine.step()
    assert {c.request_id: c.length for c in first.plan.chunks} == {a: 8, b: 4}
    engine.budget = 8  # as a SchedulerPlugin may set it between steps
    second = engine.step()
    assert {c.request_id: c.length for c in second.plan.chunks} == expected


def test_static_never_admits_into_a_running_group():
    config = sim_engine_config(MODEL, GPU, EngineConfig(max_tokens_per_step=256, prefill_chunk_size=256))
    w = Workload(prompts(*[40, 90, 300, 60, 500, 70, 30]), [5, 30, 9, 12, 3, 20, 7])
    engines = {"static": engine_with(StaticScheduler, config, batch_size=3), "ours": Engine(ShapeOnlyLM(), config)}
    admitted_while_running = {}
    for name, engine in engines.items():
        records = []
        for i, (p, n) in enumerate(zip(w.prompts, w.max_new_tokens)):
            engine.add_request(p, n)
            if i % 2:  # requests keep arriving while groups run
                records.append(engine.step())
        records += engine.run()
        admitted_while_running[name] = [
            r.plan.admitted for prev, r in zip(records, records[1:]) if r.plan.admitted and prev.running
        ]
        if name == "static":
            assert all(len(r.plan.admitted) <= 3 for r in records)
            assert sum(len(r.plan.admitted) for r in records) == len(w)
            assert [engine.output(i) for i in range(len(w))] == [[0] * n for n in w.max_new_tokens]
    assert admitted_while_running["static"] == []
    assert admitted_while_running["ours"]  # continuous batching does admit into a running batch


@pytest.mark.parametrize("link", [NVLINK4_BYTES_S, NET_400G_BYTES_S])
def test_disaggregated_ttft_of_a_lone_request_is_its_prefill_plus_the_transfer(link):
    n, out = 1500, 4
    w = Workload(prompts(n), [out])
    prefill = step_time(MODEL, GPU, prefill_chunks=[(n, 0)], logits_rows=1).seconds
    transfer = n * kv_bytes_per_token(MODEL) / link  # 1500 x 128 KiB
    whole = simulate_disaggregated(MODEL, GPU, w, [1.0], link, stream_layers=False)
    streamed = simulate_disaggregated(MODEL, GPU, w, [1.0], link, stream_layers=True)
    assert whole.requests[0].ttft_s == pytest.approx(prefill + transfer)
    # layer by layer the transfer overlaps the prefill (which is longer here): only the last layer's share is left
    assert prefill > transfer
    assert streamed.requests[0].ttft_s == pytest.approx(prefill + transfer / 32)
    assert streamed.requests[0].ttft_s < whole.requests[0].ttft_s
    assert whole.transfer_s == [pytest.approx(transfer)] == [pytest.approx(transfer_seconds(MODEL, n, link))]
    # then it decodes on the other GPU, in decode-only steps of its context n + 1, n + 2, ...
    decodes = [step_time(MODEL, GPU, [n + k]).seconds for k in range(1, out)]
    r = whole.requests[0]
    assert [b - a for a, b in zip(r.token_times, r.token_times[1:])] == pytest.approx(decodes)
    assert all(s.prefill_tokens == 0 for s in whole.decode_steps)
    assert all(s.decode_tokens == 0 for s in whole.prefill_steps)


def test_a_slow_link_is_not_hidden_by_streaming():
    # 1500 tokens over 1 GB/s take 0.2 s, far longer than the prefill: streaming saves at most the prefill's time
    n = 1500
    transfer = n * kv_bytes_per_token(MODEL) / 1e9
    prefill = step_time(MODEL, GPU, prefill_chunks=[(n, 0)], logits_rows=1).seconds
    streamed = simulate_disaggregated(MODEL, GPU, Workload(prompts(n), [2]), [0.0], 1e9, stream_layers=True)
    assert streamed.requests[0].ttft_s == pytest.approx(max(prefill + transfer / 32, transfer))


def test_under_a_prompt_heavy_load_the_orderings_that_follow_from_the_rules(runs):
    # Static batching: a request that arrives while a group runs waits for the group's *longest* member
    # (up to 48 decode steps after a prefill of up to 8 x 2048 tokens), far past a 0.5 s TTFT objective;
    # continuous batching admits it at the next step. So decode_first meets the objectives for more requests.
    # Disaggregation: the decode GPU's steps never carry a prompt chunk, so its slowest inter-token times stay
    # at decode-only steps, while decode_first's decoders share steps with 1-2k-token chunks.
    rows = {p: result.summary(ttft_slo_s=0.5, tpot_slo_s=0.05) for p, result in runs.items()}
    assert rows["decode_first"]["goodput_requests_s"] > rows["static"]["goodput_requests_s"]
    assert rows["decode_first"]["ttft_p90_s"] < rows["static"]["ttft_p90_s"]
    assert rows["disaggregated"]["tpot_p90_s"] < rows["decode_first"]["tpot_p90_s"]


def test_compare_policies_gives_one_summary_row_per_policy_in_order():
    w = Workload(prompts(600, 40, 900), [6, 3, 5])
    arrivals = [0.0, 0.001, 0.002]
    rows = compare_policies(MODEL, GPU, w, arrivals, ["disaggregated", "static"], 0.05, 0.02, static_batch_size=2)
    assert [r["policy"] for r in rows] == ["disaggregated", "static"] and [r["gpus"] for r in rows] == [2, 1]
    for row in rows:
        alone = run_policy(row["policy"], MODEL, GPU, w, arrivals, static_batch_size=2).summary(0.05, 0.02)
        assert {k: row[k] for k in alone} == alone
        assert row["goodput_per_gpu_s"] == pytest.approx(alone["goodput_requests_s"] / row["gpus"])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"policies": ["decode_first", "fifo"]}, "'fifo'"),
        ({"policies": "static"}, "'static'"),
        ({"link_bytes_s": 0}, "0"),
        ({"link_bytes_s": -5.0}, "-5.0"),
        ({"link_bytes_s": float("inf")}, "inf"),
        ({"link_bytes_s": "900GB/s"}, "'900GB/s'"),
        ({"long_prefill_token_threshold": -1, "policies": ["vllm_v1"]}, "-1"),
        ({"static_batch_size": 0, "policies": ["static"]}, "0"),
        ({"ttft_slo_s": 0}, "ttft_slo_s"),
    ],
)
def test_bad_names_and_numbers_raise_config_errors_naming_them(kwargs, named):
    w = Workload(prompts(10), [2])
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        compare_policies(MODEL, GPU, w, [0.0], **kwargs)


def test_run_policy_rejects_an_unknown_policy_and_a_bad_link():
    w = Workload(prompts(10), [2])
    with pytest.raises(ConfigError, match="'sarathi'"):
        run_policy("sarathi", MODEL, GPU, w, [0.0])
    with pytest.raises(ConfigError, match="-1"):
        simulate_disaggregated(MODEL, GPU, w, [0.0], link_bytes_s=-1)
    with pytest.raises(ConfigError, match="'yes'"):
        simulate_disaggregated(MODEL, GPU, w, [0.0], stream_layers="yes")
    assert dataclasses.is_dataclass(run_policy("disaggregated", MODEL, GPU, w, [0.0]))
