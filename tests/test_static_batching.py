"""The static-batching baseline: what its records say, what it refuses, and that its padding is real work."""

from __future__ import annotations

import pytest

from cblab_teach import ConfigError, RequestError, SamplingParams, StaticBatchingEngine

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
