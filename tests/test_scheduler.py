"""The scheduler's promises: everyone finishes, the budget holds, decode goes first, nobody starves."""

from __future__ import annotations

import copy
import re
import time

import pytest

from cblab_teach import ConfigError, Engine, EngineConfig, Request, Scheduler
from cblab_teach.core.kv_cache import PagedAllocator
from cblab_teach.core.request import RequestState
from cblab_teach.core.scheduler import check_plan


def decoding(rid: int, arrival: int, last: int = -1) -> Request:
    r = Request(rid, [1, 2], 10, arrival=arrival)
    r.output_ids, r.num_computed, r.last_scheduled_step = [3], 2, last
    return r


def test_all_requests_finish_and_budget_holds(model64, workload):
    for budget, chunk in [(1, 1), (3, 2), (8, 8), (20, 5)]:
        engine = Engine(model64, EngineConfig(max_tokens_per_step=budget, prefill_chunk_size=chunk))
        ids = [engine.add_request(p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]
        records = engine.run()
        assert all(r.used <= budget for r in records)
        assert all(r.plan.prefill_tokens == 0 or all(c.length <= chunk for c in r.plan.chunks) for r in records)
        finished = [rid for r in records for rid in r.finished]
        assert sorted(finished) == sorted(ids)  # each exactly once
        assert all(len(engine.output(i)) == n for i, n in zip(ids, workload.max_new_tokens))


def test_decode_goes_first():
    s = Scheduler(max_tokens_per_step=4, prefill_chunk_size=4)
    prefill = Request(9, list(range(10)), 5, arrival=0)
    prefill.num_computed = 2
    plan = s.plan([prefill, decoding(1, 1), decoding(2, 2)], [])
    assert [c.kind for c in plan.chunks] == ["decode", "decode", "prefill"]
    assert plan.prefill_tokens == 2  # what the decodes left
    check_plan(plan, {9: prefill, 1: decoding(1, 1), 2: decoding(2, 2)})


def test_decode_over_budget_is_capped_and_rest_wait():
    s = Scheduler(max_tokens_per_step=2, prefill_chunk_size=4)
    reqs = [decoding(i, i) for i in range(3)]
    plan = s.plan(reqs, [Request(7, [1, 2, 3], 2, arrival=5)])
    assert plan.used == 2 and plan.decode_tokens == 2
    assert plan.admitted == []  # no budget left for a new prefill


def test_nobody_starves_with_budget_2_and_3_decoders(model64):
    engine = Engine(model64, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=8))
    ids = [engine.add_request([i + 1, i + 2], 30) for i in range(3)]
    engine.step()  # all three prefill together and start decoding
    assert all(len(engine.request(i).output_ids) == 1 for i in ids)
    engine.budget = 2  # e.g. an adaptive-batching plugin lowers the budget
    served = {i: 0 for i in ids}
    for _ in range(4):
        for c in engine.step().plan.chunks:
            served[c.request_id] += 1
    assert all(n >= 2 for n in served.values()), served  # every decoder advanced
    # a naive engine took the first N decoders every step; request 2 would never advance there


def test_drafts_are_cut_to_a_binding_budget():
    """Every draft token costs budget: one decoder with 5 guesses and budget 3 verifies 2 of them, no more."""
    r = decoding(0, 0)
    plan = Scheduler(3, 4).plan([r], [], drafts={0: [7, 8, 9, 10, 11]})
    assert plan.used == 3 and plan.chunks[0].drafts == (7, 8)
    assert plan.chunks[0].length == 1 + len(plan.chunks[0].drafts)
    check_plan(plan, {0: r})
    # two decoders with guesses, budget 6: 1 + 3 guesses for the first, what is left (1 + 1) for the second
    a, b = decoding(1, 1, last=0), decoding(2, 2, last=1)
    plan = Scheduler(6, 4).plan([a, b], [], drafts={1: [5, 5, 5], 2: [6, 6, 6]})
    assert plan.used == 6 and [(c.request_id, c.drafts) for c in plan.chunks] == [(1, (5, 5, 5)), (2, (6,))]
    check_plan(plan, {1: a, 2: b})
    # a budget of exactly one token leaves no room for any guess
    assert Scheduler(1, 4).plan([decoding(3, 3)], [], drafts={3: [1, 2]}).chunks[0].drafts == ()


def test_least_recently_served_decoder_goes_first():
    s = Scheduler(max_tokens_per_step=1, prefill_chunk_size=1)
    plan = s.plan([decoding(0, 0, last=5), decoding(1, 1, last=3)], [])
    assert plan.request_ids == [1]


def test_prefill_chunks_in_arrival_order_and_admission_limit():
    s = Scheduler(max_tokens_per_step=10, prefill_chunk_size=3, max_running=2)
    waiting = [Request(i, [1] * 5, 2, arrival=i) for i in (2, 0, 1)]
    plan = s.plan([], waiting)
    assert plan.admitted == [0, 1]  # arrival order, capped by max_running
    assert Scheduler(2, 1).plan([], waiting).admitted == [0, 1]  # one token each, and no more than the budget
    assert [c.length for c in plan.chunks] == [3, 3]


def test_priority_policy_orders_by_priority_then_arrival():
    s = Scheduler(max_tokens_per_step=4, prefill_chunk_size=4, policy="priority")
    waiting = [Request(0, [1] * 4, 2, arrival=0, priority=5), Request(1, [1] * 4, 2, arrival=1, priority=0)]
    assert s.plan([], waiting).admitted == [1]


def test_plan_is_pure():
    s = Scheduler(max_tokens_per_step=5, prefill_chunk_size=2)
    running = [decoding(0, 0), decoding(1, 1)]
    waiting = [Request(5, [1] * 7, 3, arrival=2)]
    before = copy.deepcopy((running, waiting))
    s.plan(running, waiting)
    assert [vars(r) | {"generator": None} for r in running + waiting] == [
        vars(r) | {"generator": None} for r in before[0] + before[1]
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_tokens_per_step=0), dict(prefill_chunk_size=0), dict(max_running=-1), dict(policy="lifo"),
        dict(max_tokens_per_step=2.5), dict(prefill_chunk_size=True), dict(max_running="4"),
    ],
)
def test_bad_scheduler_settings_are_rejected(kwargs):
    """The error names the setting and its value: a float, a bool or a string is not a token count."""
    args = dict(max_tokens_per_step=4, prefill_chunk_size=2) | kwargs
    (name, value), = kwargs.items()
    with pytest.raises(ConfigError, match="^" + re.escape(name) + ".*" + re.escape(repr(value))):
        Scheduler(**args)


def _urgent_after_ordinary(kind: str) -> tuple[Scheduler, list[Request]]:
    """An ordinary request ahead of an urgent one, with the whole budget reserved for urgent requests."""
    s = Scheduler(max_tokens_per_step=2, prefill_chunk_size=4)
    s.reserved_tokens, s.reserved_priority = 2, 0
    if kind == "decode":
        reqs = [decoding(0, 0), decoding(1, 1)]
    else:
        reqs = [Request(0, [1] * 4, 2, arrival=0), Request(1, [1] * 4, 2, arrival=1)]
        if kind == "prefill":
            for r in reqs:
                r.num_computed = 1
    reqs[0].priority = 5
    return s, reqs


@pytest.mark.parametrize("kind", ["decode", "prefill", "admission"])
def test_an_ordinary_request_without_room_does_not_block_an_urgent_one_behind_it(kind):
    """Every pass skips a request whose share of the budget is spent and goes on: the urgent one still runs."""
    s, reqs = _urgent_after_ordinary(kind)
    plan = s.plan([], reqs) if kind == "admission" else s.plan(reqs, [])
    assert plan.request_ids == [1] and plan.used == (1 if kind == "decode" else 2)
    assert plan.admitted == ([1] if kind == "admission" else [])


def test_a_decoder_preempted_this_step_is_skipped_and_the_next_one_still_decodes():
    """Pool of 4 blocks of 2, none free. A (oldest) needs a block and preempts C (newest); C comes before B in
    decode order (served longer ago), and B, which needs no new block, must still decode."""
    kv = PagedAllocator(1, 1, 2, num_blocks=4, block_size=2)
    a, c = decoding(0, 0, last=0), decoding(2, 2, last=0)  # 2 tokens held, the 3rd needs a second block
    b = Request(1, [1, 2, 3], 10, arrival=1)
    b.output_ids, b.num_computed, b.last_scheduled_step = [4], 3, 1  # 3 of 4 slots used: room in its block
    for r in (a, b, c):
        kv.admit(r.request_id, r.max_total_tokens, reserve=False)
        kv.ensure(r.request_id, r.num_computed)
    assert kv.num_free_blocks == 0
    plan = Scheduler(16, 4).plan([a, b, c], [], kv, preemption=True)
    assert plan.preempted == [2]
    assert [(ch.request_id, ch.kind) for ch in plan.chunks] == [(0, "decode"), (1, "decode")]


def test_a_preemption_frees_a_running_seat_for_a_waiting_request():
    """max_running 2, both seats taken and no free block: A's decode preempts B, so one seat and one of B's
    two blocks are free again, and the waiting C (one block) is admitted in the same step."""
    kv = PagedAllocator(1, 1, 2, num_blocks=3, block_size=2)
    a, b = decoding(0, 0), Request(1, [1, 2, 3], 10, arrival=1)
    b.output_ids, b.num_computed = [4], 3  # two blocks held
    for r in (a, b):
        kv.admit(r.request_id, r.max_total_tokens, reserve=False)
        kv.ensure(r.request_id, r.num_computed)
    c = Request(2, [4, 5], 3, arrival=2)
    plan = Scheduler(16, 4, max_running=2).plan([a, b], [c], kv, preemption=True)
    assert plan.preempted == [1] and plan.admitted == [2]


def test_a_group_larger_than_max_running_still_starts_alone():
    """Waiting for seats that can never exist would hang: with nobody running, the group starts."""
    group = Request(0, [1, 2, 3], 4, group_size=3)
    s = Scheduler(16, 4, max_running=2)
    assert s.plan([], [group]).admitted == [0]
    assert s.plan([decoding(1, 1)], [group]).admitted == []  # with someone running, it waits for seats


@pytest.mark.parametrize("computed", [1, 3])
def test_a_swapped_request_resumes_where_it_stopped_and_is_not_a_prefix_hit(computed):
    """A request that comes back from the host pool has K/V for ``computed`` tokens: its chunk starts there,
    and those tokens are not reported as a prefix-cache hit (nor is a fresh request's empty prefix)."""
    back = Request(0, [1, 2, 3, 4, 5], 2, arrival=0)
    back.num_computed = computed
    fresh = Request(1, [6, 7], 2, arrival=1)
    plan = Scheduler(16, 8).plan([], [back, fresh])
    assert [(c.request_id, c.start, c.length) for c in plan.chunks] == [(0, computed, 5 - computed), (1, 0, 2)]
    assert plan.cached_tokens == {}


def test_check_plan_rejects_the_plans_a_broken_scheduler_makes():
    """check_plan guards the notebooks and the tests: each broken plan fails with its own message."""
    from cblab_teach.core.scheduler import ScheduledChunk, StepPlan

    prefill = Request(9, list(range(10)), 5, arrival=0)
    prefill.num_computed = 2
    reqs = {9: prefill, 1: decoding(1, 1), 2: decoding(2, 2)}
    good = [ScheduledChunk(1, 2, 1, "decode", True), ScheduledChunk(9, 2, 2, "prefill", False)]
    check_plan(StepPlan(budget=3, chunks=list(good)), reqs)
    done = decoding(3, 3)
    done.state = RequestState.FINISHED
    broken = {
        r"plan uses 3 > budget 2": StepPlan(budget=2, chunks=list(good)),
        r"request 1 scheduled twice": StepPlan(budget=9, chunks=[good[0], ScheduledChunk(1, 3, 1, "decode", True)]),
        r"decode must come before prefill": StepPlan(budget=9, chunks=[good[1], good[0]]),
        r"request 9 starts wrong": StepPlan(budget=9, chunks=[ScheduledChunk(9, 0, 2, "prefill", False)]),
        r"request 9 computes tokens it does not have": StepPlan(
            budget=20, chunks=[ScheduledChunk(9, 2, 9, "prefill", True)]),
        r"finished request 3 scheduled": StepPlan(budget=9, chunks=[ScheduledChunk(3, 2, 1, "decode", True)]),
    }
    for message, plan in broken.items():
        with pytest.raises(AssertionError, match=f"^{message}$"):
            check_plan(plan, reqs | {3: done})
    cached = StepPlan(budget=9, chunks=[ScheduledChunk(9, 4, 2, "prefill", False)], cached_tokens={9: 4})
    check_plan(cached, reqs)  # an admitted request starts after its cached prefix


def test_run_returns_its_own_records_and_counts_finished_requests_on_its_bar(model64, capsys):
    engine = Engine(model64, EngineConfig(max_tokens_per_step=16))
    engine.add_request([1, 2, 3], 3)
    engine.add_request([4, 5], 5)
    engine.step()  # both running now, none waiting
    records = engine.run(progress=True)
    assert records == engine.records[1:] and len(records) == len(engine.records) - 1
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("requests: 100%") and "2/2 [" in bar and "req/s]" in bar, bar


def test_step_records_time_their_steps(model64):
    """Each record's start, duration and forward time lie within the run, in order, forward inside the step."""
    engine = Engine(model64, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4))
    engine.add_request([1, 2, 3, 4, 5, 6], 4)
    engine.add_request([7, 8], 6)
    before = time.perf_counter()
    records = engine.run()
    after = time.perf_counter()
    assert len(records) > 2
    for r, nxt in zip(records, records[1:] + [None]):
        assert before <= r.start_time and 0 < r.forward_s <= r.duration_s
        assert r.start_time + r.duration_s <= (nxt.start_time if nxt else after)


def test_a_requests_state_follows_its_tokens():
    """Decoding after its first token, finished at its budget or its end token, whichever comes first."""
    r = Request(0, [1, 2], 3, eos_token_id=9)
    assert r.state.value == "waiting"
    r.append_token(4)
    assert r.state.value == "decode"
    r.append_token(5)
    assert r.state.value == "decode"
    r.append_token(6)
    assert r.state.value == "finished" and r.output_ids == [4, 5, 6]
    early = Request(1, [1, 2], 3, eos_token_id=9)
    early.append_token(9)
    assert early.state.value == "finished"
