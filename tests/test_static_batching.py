"""The static-batching baseline: what its records say, what it refuses, and that its padding is real work; and
the same batching driven one step at a time (:class:`StaticServingEngine`, what ``serve --static`` runs)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cblab_teach import ConfigError, Engine, EngineConfig, RequestError, SamplingParams, StaticBatchingEngine
from cblab_teach.core.static_batching import StaticServingEngine
from cblab_teach.errors import CapacityError, CBLabError, UnknownRequestError

from .reference import greedy

PROMPTS = [[5, 9, 2], [0, 4, 7, 1, 8], [96, 3]]  # 0 and 96 are the vocabulary's first and last ids
NEW = [2, 4, 1]


def test_records_show_one_padded_prefill_then_decode_until_the_longest_finishes(model64):
    engine = StaticBatchingEngine(model64, batch_size=3)
    out = engine.generate(PROMPTS, NEW)
    assert out == [greedy(model64, p, n) for p, n in zip(PROMPTS, NEW)]
    prefill, *decodes = engine.records
    assert len(decodes) == max(NEW) - 1  # the batch runs as long as its longest member
    assert [(c.request_id, c.start, c.length, c.kind) for c in prefill.plan.chunks] == [
        (0, 0, 5, "prefill"), (1, 0, 5, "prefill"), (2, 0, 5, "prefill")]  # every row padded to the longest prompt
    assert prefill.extra == {"padding_tokens": 15 - 10, "useful_tokens": 10}
    assert prefill.sampled == {0: out[0][0], 1: out[1][0], 2: out[2][0]} and prefill.finished == [2]
    assert prefill.running == [0, 1]
    for t, record in enumerate(decodes, start=1):
        assert [(c.start, c.length, c.kind) for c in record.plan.chunks] == [
            (len(p) + t - 1, 1, "decode") for p in PROMPTS]  # finished rows still compute a padding token
        active = [i for i, n in enumerate(NEW) if n > t]
        assert record.sampled == {i: out[i][t] for i in active}
        assert record.extra == {"padding_tokens": 3 - len(active), "useful_tokens": len(active)}
    assert decodes[0].finished == [0] and decodes[-1].finished == [1] and decodes[-1].running == []
    assert [r.step for r in engine.records] == list(range(len(engine.records)))
    assert prefill.plan.budget == 3 * 5 and all(r.plan.budget == 3 for r in decodes)  # rows x padded width
    for record in engine.records:
        assert all(c.samples for c in record.plan.chunks)  # every row samples at every step
        assert record.waiting == [] and record.block_tables == {}  # dense, and nobody waits inside a batch
        assert record.kv.total_slots == 3 * (5 + 4) and record.kv.used_slots > 0
        assert 0 <= record.forward_s <= record.duration_s < 60
    starts = [r.start_time for r in engine.records]
    assert starts == sorted(starts) and starts[0] >= engine.arrival_time


def test_batches_run_one_after_another_with_ids_in_arrival_order(model64):
    engine = StaticBatchingEngine(model64, batch_size=2)
    out = engine.generate(PROMPTS, NEW)
    assert out == [greedy(model64, p, n) for p, n in zip(PROMPTS, NEW)]
    assert [r.plan.request_ids for r in engine.records] == [[0, 1]] * 4 + [[2]]
    assert engine.arrival_time > 0


def test_the_progress_bar_counts_batches_and_changes_nothing(model64, capsys):
    assert StaticBatchingEngine(model64, batch_size=2).generate(PROMPTS, 2, progress=True) == StaticBatchingEngine(
        model64).generate(PROMPTS, 2)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    batches = -(-len(PROMPTS) // 2)
    assert bar.startswith("static batches: 100%") and f"{batches}/{batches} [" in bar, bar


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda e: e.generate(PROMPTS, 2, sampling=SamplingParams(temperature=1.0)), ConfigError,
         r"^StaticBatchingEngine is greedy only$"),
        (lambda e: e.generate([[1, 2], []], 2), RequestError, r"^prompt 1 is empty; give at least one token id$"),
        (lambda e: e.generate([[1, 2]], 0), RequestError, r"^prompt 0: max_new_tokens must be an int >= 1, got 0$"),
        (lambda e: e.generate([[1, 2]], 2.0), RequestError, r"^max_new_tokens must be an int >= 1 or one per prompt, got 2\.0$"),
        (lambda e: e.generate([[1, 2]], [1.5]), RequestError, r"^prompt 0: max_new_tokens must be an int >= 1, got 1\.5$"),
        (lambda e: e.generate([[1, 97, 98, 99, 100, 101, 102]], 1), RequestError,
         r"^prompt 0: token ids \[97, 98, 99, 100, 101\] are outside the vocabulary$"),
        (lambda e: e.generate([[1], [2]], [1]), RequestError, r"^got 2 prompts but 1 max_new_tokens and 2 sampling params$"),
    ],
)
def test_bad_input_is_refused_with_its_value(model64, call, error, message):
    with pytest.raises(error, match=message):
        call(StaticBatchingEngine(model64))


def test_a_greedy_sampling_param_is_accepted(model64):
    assert StaticBatchingEngine(model64).generate(PROMPTS[:1], 2, sampling=SamplingParams()) == [
        greedy(model64, PROMPTS[0], 2)]


# -- StaticServingEngine: the same batching, one step at a time, with requests arriving -----------------------
def run_all(engine: StaticServingEngine) -> None:
    for _ in range(1000):  # bounded: every workload below ends in far fewer steps
        if not engine.has_unfinished():
            return
        engine.step()
    pytest.fail("the static engine did not finish")


def groups(engine: StaticServingEngine) -> list[list[int]]:
    """The groups the records show, in order: the ids of each prefill step's rows."""
    return [r.plan.request_ids for r in engine.records if r.plan.chunks[0].kind == "prefill"]


def test_stepped_static_batching_equals_each_request_alone_greedy_or_seeded(model64):
    engine = StaticServingEngine(model64, batch_size=2, num_slots=64)
    sampled = SamplingParams(temperature=0.9, top_p=0.8, seed=11)
    params = [None, sampled, None]
    ids = [engine.add_request(p, n, sampling=s) for p, n, s in zip(PROMPTS, NEW, params)]
    run_all(engine)
    alone = Engine(model64, EngineConfig()).generate(PROMPTS, NEW, params)  # the continuous engine, by itself
    assert [engine.request(i).output_ids for i in ids] == alone
    assert [engine.request(i).output_ids for i in (0, 2)] == [greedy(model64, PROMPTS[i], NEW[i]) for i in (0, 2)]
    assert all(engine.request(i).finish_reason == "length" for i in ids)
    assert groups(engine) == [[0, 1], [2]]
    assert engine.kv.usage().reserved_slots == 0 and not engine.has_unfinished()


def test_a_group_pads_like_generate_and_its_records_match(model64):
    stepped = StaticServingEngine(model64, batch_size=3, num_slots=64)
    for p, n in zip(PROMPTS, NEW):
        stepped.add_request(p, n)
    run_all(stepped)
    whole = StaticBatchingEngine(model64, batch_size=3)
    whole.generate(PROMPTS, NEW)
    for a, b in zip(stepped.records, whole.records, strict=True):  # the same padded steps, the same work
        assert (a.plan.chunks, a.sampled, a.finished, a.running, a.extra) == (
            b.plan.chunks, b.sampled, b.finished, b.running, b.extra)  # fmt: skip
    assert stepped.records[0].plan.admitted == [0, 1, 2] and all(not r.plan.admitted for r in stepped.records[1:])
    assert stepped.records[0].kv.reserved_slots == 3 * (5 + 4 - 1)  # every row reserved at the padded shape


def test_a_request_that_arrives_mid_group_waits_for_the_next_group(model64):
    engine = StaticServingEngine(model64, batch_size=4, num_slots=64)
    first = engine.add_request(PROMPTS[0], 6)
    engine.step()  # the group [first] is in flight
    late = engine.add_request(PROMPTS[1], 3)  # room for it in the batch, but a group admits nobody once it runs
    run_all(engine)
    assert groups(engine) == [[first], [late]]
    in_flight = [r for r in engine.records if first in r.plan.request_ids]
    assert len(in_flight) == 6 and all(r.waiting == [late] for r in in_flight[1:])
    assert engine.request(late).output_ids == greedy(model64, PROMPTS[1], 3)


def test_a_group_admits_only_what_its_padded_rows_fit_in_the_pool(model64):
    engine = StaticServingEngine(model64, batch_size=8, num_slots=16)
    for p in PROMPTS:
        engine.add_request(p, 4)  # padded rows of 5 + 4 - 1 = 8 slots: two fit in 16, the third waits
    engine.step()
    assert groups(engine) == [[0, 1]] and engine.records[0].waiting == [2]
    run_all(engine)
    assert groups(engine) == [[0, 1], [2]]


def test_abort_and_finish_end_rows_and_the_group_frees_its_kv_when_its_last_row_ends(model64):
    engine = StaticServingEngine(model64, batch_size=2, num_slots=64)
    a, b, c = (engine.add_request(p, 8) for p in PROMPTS)
    engine.step()
    engine.abort(c)  # still waiting: it just leaves the queue
    engine.finish(a)  # in the group: its row computes padding from now on
    assert engine.request(a).finish_reason == "stop" and engine.request(c).finish_reason == "abort"
    record = engine.step()
    assert record.sampled.keys() == {b} and record.extra["padding_tokens"] == 1 and engine.kv.usage().reserved_slots > 0
    engine.abort(b)  # the last row ends: the group's KV goes back at once
    assert engine.kv.usage().reserved_slots == 0 and not engine.has_unfinished()
    assert engine.request(b).finish_reason == "abort" and len(engine.request(b).output_ids) == 2
    engine.abort(b)  # ending an ended request changes nothing
    assert [engine.forget(r).request_id for r in (a, b, c)] == [a, b, c] and not engine.requests


def test_a_group_ends_when_every_row_has_hit_its_end_token(model64):
    want = greedy(model64, PROMPTS[1], 6)
    engine = StaticServingEngine(model64, batch_size=2, num_slots=64, eos_token_id=want[1])
    rid = engine.add_request(PROMPTS[1], 6)
    run_all(engine)
    assert engine.request(rid).output_ids == want[:2] and engine.request(rid).finish_reason == "stop"
    assert len(engine.records) == 2


def test_a_request_group_is_n_rows_seeded_one_apart(model64):
    engine = StaticServingEngine(model64, batch_size=4, num_slots=64)
    base = SamplingParams(temperature=1.0, seed=3)
    ids = engine.add_request_group(PROMPTS[0], 3, 5, base)
    run_all(engine)
    alone = Engine(model64, EngineConfig()).generate([PROMPTS[0]] * 3, 5, [replace(base, seed=3 + i) for i in range(3)])
    assert [engine.request(i).output_ids for i in ids] == alone and groups(engine) == [ids]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: StaticServingEngine(m, batch_size=0), ConfigError, r"^batch_size must be an int >= 1, got 0$"),
        (lambda m: StaticServingEngine(m, num_slots=2.5), ConfigError, r"num_slots must be an int >= 1.*got 2\.5$"),
        (lambda m: StaticServingEngine(m, pad_token_id=97), ConfigError, r"pad_token_id .*\[0, 97\), got 97$"),
        (lambda m: StaticServingEngine(m, keep_records=0), ConfigError, r"keep_records .*got 0$"),
        (lambda m: StaticServingEngine(m).add_request([1, 2], 0), RequestError, r"max_new_tokens .* >= 1, got 0$"),
        (lambda m: StaticServingEngine(m).add_request([1, 200], 2), RequestError, r"token ids \[200\] are outside"),
        (lambda m: StaticServingEngine(m, num_slots=8).add_request([1, 2], 8), CapacityError, r"needs 9 KV slots"),
        (lambda m: StaticServingEngine(m).add_request_group([1, 2], 0), RequestError, r"^n must be .*got 0$"),
        (lambda m: StaticServingEngine(m).abort(7), UnknownRequestError, r"^unknown request id 7$"),
        (lambda m: StaticServingEngine(m).step(), CBLabError, r"^nothing to run"),
    ],
)
def test_the_stepped_engine_refuses_bad_input_with_its_value(model64, call, error, message):
    with pytest.raises(error, match=message):
        call(model64)


def test_forget_refuses_a_request_still_waiting_and_keep_records_bounds_the_records(model64):
    engine = StaticServingEngine(model64, batch_size=1, num_slots=64, keep_records=2)
    rid = engine.add_request(PROMPTS[0], 5)
    with pytest.raises(RequestError, match="has not finished"):
        engine.forget(rid)
    run_all(engine)
    assert [r.step for r in engine.records] == [3, 4] and engine.num_steps == 5
