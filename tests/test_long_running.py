"""An engine behind a server runs for days: it keeps only its last records and forgets served requests, and
neither changes a token (fairness and arrival steps count steps, not records)."""

from __future__ import annotations

import pytest

from cblab_teach import ConfigError, Engine, EngineConfig, ModelConfig, RequestError, SamplingParams, TinyLM
from cblab_teach.workloads import make_workload


@pytest.fixture(scope="module")
def model() -> TinyLM:
    return TinyLM(ModelConfig(vocab_size=61, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64), 5)


def serve_in_waves(model: TinyLM, config: EngineConfig, forget: bool) -> tuple[Engine, dict, list]:
    """Requests arrive over time (a few every third step), as they would at a server; then the budget drops below
    the number of decoding requests (as a SchedulerPlugin may drop it), so fairness decides who decodes."""
    engine = Engine(model, config)
    work = make_workload(12, (2, 9), (2, 7), vocab_size=61, seed=8)
    arrivals = list(zip(work.prompts, work.max_new_tokens))
    outputs: dict[int, tuple] = {}
    plans = []  # who got which tokens at each step: fairness shows here, not in the tokens
    step = 0
    while arrivals or engine.has_unfinished():
        if step % 3 == 0:
            for prompt, n in arrivals[:3]:
                engine.add_request(prompt, n, sampling=SamplingParams(temperature=0.9, seed=len(outputs) + step))
            arrivals = arrivals[3:]
        if step == 8:
            engine.budget = 2
        if engine.has_unfinished():
            record = engine.step()
            plans.append([(c.request_id, c.start, c.end) for c in record.plan.chunks])
            for rid in record.finished:
                req = engine.request(rid)  # its tokens, and the step counts fairness and metrics read
                outputs[rid] = (req.output_ids, req.arrival_step, req.last_scheduled_step)
                if forget:
                    engine.forget(rid)
        step += 1
    return engine, outputs, plans


def test_bounded_records_and_forgotten_requests_change_no_token(model):
    base = EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4, block_size=2, num_blocks=64)
    full, want, full_plans = serve_in_waves(model, base, forget=False)
    lean, got, lean_plans = serve_in_waves(model, EngineConfig(**{**base.__dict__, "keep_records": 4}), forget=True)
    assert got == want and len(want) == 12 and lean_plans == full_plans
    assert len(lean.records) == 4 and lean.num_steps == full.num_steps == len(full.records)
    assert [r.step for r in lean.records] == [r.step for r in full.records[-4:]]
    assert lean.requests == {}


def test_run_returns_this_run_s_records_even_when_few_are_kept(model):
    engine = Engine(model, EngineConfig(keep_records=2))
    engine.add_request([1, 2, 3], 5)
    records = engine.run()
    assert [r.step for r in records] == list(range(engine.num_steps)) and len(engine.records) == 2


def test_forgetting_an_unfinished_request_is_refused(model):
    engine = Engine(model)
    rid = engine.add_request([1, 2, 3], 4)
    with pytest.raises(RequestError, match=f"request {rid} has not finished"):
        engine.forget(rid)
    engine.run()
    engine.forget(rid)
    assert rid not in engine.requests


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "10"])
def test_keep_records_must_be_a_positive_int(bad):
    with pytest.raises(ConfigError, match="keep_records"):
        EngineConfig(keep_records=bad)
