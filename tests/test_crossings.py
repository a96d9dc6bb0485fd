"""Where two features cross: the reproducers a mixed-feature fuzz found, each as a test.

Every feature was correct alone; each case below broke only where two met (groups and preemption,
swap and prefix caching, sampling seeds and the step loop, the hand-over and the pool's dtype). The oracle is
always the same: each request's tokens equal the request run alone (greedy: the no-cache reference of
``tests/reference.py``; sampled: a fresh engine with the same seed), the run ends in bounded steps, and every
device and host block is free at the end. A refused call leaves the engine exactly as it was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from cblab_teach import CBLabError, Engine, EngineConfig, ModelConfig, RequestError, SamplingParams, TinyLM
from cblab_teach.advanced import DisaggregatedServer
from cblab_teach.core.kv_cache import PagedAllocator
from cblab_teach.core.request import SAMPLING_EPS
from cblab_teach.errors import KVCacheError

from .reference import greedy


@pytest.fixture(scope="module")
def model() -> TinyLM:
    cfg = ModelConfig(vocab_size=19, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                      intermediate_size=24, max_position=64, dtype=torch.float64)  # fmt: skip
    return TinyLM(cfg, seed=7)


def alone(model: TinyLM, prompt: list[int], n: int, sampling: SamplingParams | None = None) -> list[int]:
    if sampling is None or sampling.greedy:
        return greedy(model, prompt, n)
    return Engine(model, EngineConfig()).generate([prompt], n, sampling=sampling)[0]


def run_bounded(engine: Engine, limit: int = 200) -> None:
    for _ in range(limit):
        if not engine.has_unfinished():
            return
        engine.step()
    raise AssertionError(f"still unfinished after {limit} steps")


def assert_all_free(engine: Engine) -> None:
    assert not engine.kv.lengths
    if isinstance(engine.kv, PagedAllocator):
        parked = list(engine.kv.prefix.evictable) if engine.kv.prefix else []
        assert sorted(engine.kv.free_blocks + parked) == list(range(engine.kv.num_blocks))
        assert not any(engine.kv.ref_counts)
    if engine.swap is not None:
        assert sorted(engine.swap.free_blocks) == list(range(engine.swap.num_blocks))


# -- 1. a group, preemption and a pool that holds one sequence ---------------------------------------------
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_group_on_a_pool_for_one_sequence_preempts_one_and_finishes_both(model, mode):
    """Each sequence needs 7 of the 8 slots: one is preempted, the other finishes, the first runs again. The
    ledger used to count a victim's blocks as freed only at reference count 1, and kept charging the copy of a
    block whose other holder was gone: 'the scheduler made no progress', for good."""
    cfg = EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, block_size=4, num_blocks=2, preemption=mode)
    engine = Engine(model, cfg)
    base = SamplingParams(temperature=1.0, seed=0)
    ids = engine.add_request_group([1, 2, 3, 4, 5], n=2, max_new_tokens=3, sampling=base)
    run_bounded(engine)
    assert [engine.output(i) for i in ids] == [alone(model, [1, 2, 3, 4, 5], 3, replace(base, seed=i)) for i in (0, 1)]
    assert engine.stats.preemptions >= 1
    assert_all_free(engine)


def test_the_ledger_asks_what_sharers_free_together():
    """Two tables sharing both blocks: neither alone frees a block, both together free two; once one of them
    is leaving, the other writes its shared last block in place (no copy needed)."""
    kv = PagedAllocator(1, 1, 2, num_blocks=2, block_size=4)
    kv.admit(0, 8, reserve=False)
    kv.ensure(0, 5)
    kv.fork(0, 1, 8, reserve=False)
    assert kv.blocks_released_by(0) == kv.blocks_released_by(1) == 0
    assert kv.blocks_released_by([0, 1]) == 2
    assert kv.blocks_needed(0, 6) == 1  # block 1 is shared: a copy first
    assert kv.blocks_needed(0, 6, leaving=[1]) == 0  # not once request 1 lets go


# -- 2. swap and prefix caching admitted in one step ----------------------------------------------------
def test_a_swap_in_never_evicts_a_prefix_block_the_plan_promised(model):
    """Found by the fuzz: a swapped request and a prefix-cache hit are admitted in one step; the swap-in took
    fresh blocks first and evicted the idle cached block the hit was planned on (a bare assert, gone under -O)."""
    cfg = EngineConfig(max_tokens_per_step=2, prefill_chunk_size=4, block_size=1, num_blocks=7, preemption="swap",
                       enable_prefix_caching=True, num_host_blocks=32)  # fmt: skip
    arrivals = [(1, [9, 5, 0], 4), (1, [9, 10, 3, 18], 3), (2, [9, 10, 3, 2, 2], 2), (3, [9, 10, 13], 3), (3, [9], 4)]
    engine = Engine(model, cfg)
    ids = {}
    for step in range(200):
        for at, prompt, n in arrivals:
            if at == step:
                ids[engine.add_request(prompt, n)] = (prompt, n)
        if len(ids) == len(arrivals) and not engine.has_unfinished():
            break
        if engine.has_unfinished():
            engine.step()
    assert engine.stats.swap_outs > 0 and engine.stats.prefix_hit_tokens > 0  # both features were exercised
    assert {rid: engine.output(rid) for rid in ids} == {rid: greedy(model, p, n) for rid, (p, n) in ids.items()}
    assert_all_free(engine)


def test_engine_invariants_are_not_bare_asserts():
    """``python -O`` strips asserts: the engine's own checks must be typed errors, so none may be an assert."""
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "cblab_teach" / "core"
    found = [
        f"{path.name}:{node.lineno}"
        for path in core.glob("*.py")
        if path.name != "scheduler.py"  # check_plan is a test helper that asserts on purpose
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert)
    ]
    assert not found, f"bare asserts in core/: {found}"


# -- 3. seeds ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [[1], "abc", None, 1.5, True])
def test_a_seed_that_is_not_an_int_is_refused_and_the_engine_carries_on(model, seed):
    engine = Engine(model, EngineConfig(max_tokens_per_step=8, block_size=4, num_blocks=8))
    good = engine.add_request([1, 2, 3], 4)
    engine.step()
    for add in (lambda s: engine.add_request([4, 5], 3, sampling=s), lambda s: engine.add_request_group([4, 5], 2, 3, s)):
        message = r"^request 1: invalid sampling parameters .*the seed must be an int, got " + re.escape(repr(seed))
        with pytest.raises(RequestError, match=message):
            add(SamplingParams(temperature=1.0, seed=seed))
    assert list(engine.requests) == [good] and engine.intake.next_id == 1  # nothing added, no id consumed
    run_bounded(engine)
    assert engine.output(good) == greedy(model, [1, 2, 3], 4)
    assert_all_free(engine)


def test_a_numpy_seed_is_an_int_and_samples_as_the_same_python_int(model):
    engine = Engine(model, EngineConfig())
    a = engine.add_request([1, 2, 3], 6, sampling=SamplingParams(temperature=1.0, seed=np.int64(5)))
    b = engine.add_request([1, 2, 3], 6, sampling=SamplingParams(temperature=1.0, seed=5))
    run_bounded(engine)
    assert engine.output(a) == engine.output(b)
    assert type(engine.request(a).sampling.seed) is int


def test_seeded_tokens_are_the_same_in_a_fresh_process(model):
    """The noise is keyed on the seed: a new interpreter (a new hash salt for strings) draws the same tokens."""
    code = (
        "import torch; from cblab_teach import *; "
        "m = TinyLM(ModelConfig(vocab_size=19, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1, "
        "intermediate_size=24, max_position=64, dtype=torch.float64), seed=7); "
        "print(Engine(m).generate([[1, 2, 3]], 8, sampling=SamplingParams(temperature=1.0, seed=11))[0])"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}  # fmt: skip
    here = str(alone(model, [1, 2, 3], 8, SamplingParams(temperature=1.0, seed=11)))
    assert runs == {here}


# -- 4. the hand-over is checked before it is admitted -------------------------------------------------------
@pytest.fixture
def handoff(model):
    source = Engine(model, EngineConfig(block_size=4))
    rid = source.add_request([3, 1, 4, 1, 5], 6, request_id=7)
    source.step()
    return source.export_prefilled(rid)


def serving(model) -> tuple[Engine, int]:
    target = Engine(model, EngineConfig(block_size=4, num_blocks=16))
    other = target.add_request([7, 7, 7], 4)
    target.step()
    return target, other


def _retyped(h, dtype):
    return replace(h, blocks=[replace(b, k=b.k.to(dtype), v=b.v.to(dtype)) for b in h.blocks])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: _retyped(h, torch.float32), r"is torch\.float32/torch\.float32 but this engine's pool is torch\.float64"),
        (lambda h: replace(h, output_ids=[19]), r"output_ids \[19\] are outside the vocabulary \[0, 19\)"),
        (lambda h: replace(h, output_ids=[2.0]), r"token ids must be integers, got 2\.0"),
        (lambda h: replace(h, output_ids=[True]), r"token ids must be integers, got True"),
        (lambda h: replace(h, max_new_tokens=1), r"the hand-over is already finished \(1 of max_new_tokens=1"),
        (lambda h: replace(h, eos_token_id=h.output_ids[-1]), r"already finished .*nothing to decode"),
        (lambda h: replace(h, eos_token_id="x"), r"eos_token_id must be None or a token id >= 0, got 'x'"),
    ],
    ids=["dtype", "outside vocab", "float id", "bool id", "max reached", "ends in eos", "bad eos"],
)
def test_a_bad_handoff_is_refused_before_admission(model, handoff, change, message):
    target, other = serving(model)
    free_before = sorted(target.kv.free_blocks)
    with pytest.raises(CBLabError, match=message):
        target.import_prefilled(change(handoff))
    assert handoff.request_id not in target.requests and handoff.request_id not in target.kv.lengths
    assert sorted(target.kv.free_blocks) == free_before  # no orphan KV
    assert target.import_prefilled(handoff) == handoff.request_id  # the id was not consumed
    run_bounded(target)
    assert target.output(other) == greedy(model, [7, 7, 7], 4)
    assert target.output(handoff.request_id) == greedy(model, [3, 1, 4, 1, 5], 6)
    assert_all_free(target)


def test_a_write_that_fails_after_admission_frees_what_it_took(model, handoff, monkeypatch):
    import cblab_teach.core.kv_transfer as kv_transfer

    target, _ = serving(model)
    free_before = sorted(target.kv.free_blocks)

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(kv_transfer, "write_blocks", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        target.import_prefilled(handoff)
    assert sorted(target.kv.free_blocks) == free_before and handoff.request_id not in target.requests


def test_a_refused_import_stays_in_flight(model):
    """The disaggregated server pops a hand-over only once its import succeeded."""
    server = DisaggregatedServer(model, EngineConfig(block_size=4), EngineConfig(block_size=4, num_blocks=16))
    rid = server.add_request([3, 1, 4], 4)
    server.prefill.step()
    (h,) = server.export_ready()
    server.in_flight[0] = replace(h, output_ids=[99])
    with pytest.raises(RequestError, match="outside the vocabulary"):
        server.import_in_flight()
    assert len(server.in_flight) == 1  # still there, not lost
    server.in_flight[0] = h
    server.run()
    assert server.output(rid) == greedy(model, [3, 1, 4], 4)


def test_the_disaggregated_server_takes_an_iterator_and_an_adapter(model):
    from cblab_teach.advanced.lora import LoRAAdapter

    server = DisaggregatedServer(model, EngineConfig(block_size=4), EngineConfig(block_size=4))
    assert server.generate([iter([3, 1, 4])], 3) == [greedy(model, [3, 1, 4], 3)]
    adapter = LoRAAdapter.random(model, rank=2, seed=1)
    for engine in (server.prefill, server.decode):
        engine.add_adapter("a", adapter)
    rid = server.add_request([3, 1, 4], 3, adapter="a")
    server.run()
    merged = Engine(adapter.merged_into(model)).generate([[3, 1, 4]], 3)[0]
    assert server.output(rid) == merged


# -- 5. smaller seams -----------------------------------------------------------------------------------------
def test_a_temperature_below_the_epsilon_is_greedy(model):
    engine = Engine(model, EngineConfig())
    out = engine.generate([[1, 2, 3]] * 2, 6, sampling=[SamplingParams(temperature=1e-320),
                                                         SamplingParams(temperature=SAMPLING_EPS / 2, seed=3)])  # fmt: skip
    assert out == [greedy(model, [1, 2, 3], 6)] * 2
    assert not SamplingParams(temperature=SAMPLING_EPS).greedy


@pytest.mark.parametrize("n", [np.int64(2), 2])
def test_generate_takes_any_int_max_new_tokens(model, n):
    assert Engine(model).generate([[1, 2]], n) == [greedy(model, [1, 2], 2)]


@pytest.mark.parametrize("bad", [2.0, "2", None])
def test_generate_refuses_a_max_new_tokens_that_is_not_an_int_and_queues_nothing(model, bad):
    engine = Engine(model)
    with pytest.raises(RequestError, match="max_new_tokens must be an int >= 1"):
        engine.generate([[1, 2]], bad)
    assert not engine.requests and not engine.has_unfinished()


def test_generate_checks_every_prompt_before_queueing_any(model):
    engine = Engine(model)
    with pytest.raises(RequestError, match=r"^request 1: token ids \[99\]"):
        engine.generate([[1, 2], [99]], 2)
    with pytest.raises(RequestError, match=r"^request 1: max_new_tokens must be an int >= 1, got 0$"):
        engine.generate([[1, 2], [3]], [2, 0])
    assert not engine.requests and engine.intake.next_id == 0


@pytest.mark.parametrize("eos", ["x", True, -3, 1.0])
def test_a_request_eos_follows_the_engine_rule(model, eos):
    engine = Engine(model)
    with pytest.raises(RequestError, match="^request 0: eos_token_id must be None or a token id >= 0, got " + re.escape(repr(eos))):
        engine.add_request([1, 2], 3, eos_token_id=eos)
    assert not engine.requests


# -- abort: what a server does when its client goes away -----------------------------------------------------
@pytest.mark.parametrize("mode", [False, "recompute", "swap"])
def test_abort_frees_at_once_and_the_others_are_unchanged(model, mode):
    cfg = EngineConfig(max_tokens_per_step=6, prefill_chunk_size=4, block_size=2, num_blocks=24, preemption=mode)
    engine = Engine(model, cfg)
    keep = engine.add_request([1, 2, 3, 4], 6)
    gone = engine.add_request([5, 6, 7, 8, 9], 6)
    group = engine.add_request_group([2, 4, 6], 3, 5, SamplingParams(temperature=1.0, seed=2))
    engine.step()
    engine.abort(gone)
    engine.abort(group[0])  # the parent, before its forks joined: they stop with it
    assert gone not in engine.kv.lengths and engine.request(gone).aborted
    assert all(engine.request(i).is_finished and engine.request(i).aborted for i in group)
    engine.abort(gone)  # twice is harmless
    run_bounded(engine)
    assert engine.output(keep) == greedy(model, [1, 2, 3, 4], 6)
    assert engine.stats.aborted == 4
    assert_all_free(engine)


def test_finish_ends_a_request_as_stopped_not_aborted(model):
    """A stop string found by the text layer ends a request with finish_reason "stop": KV freed at once, not
    counted as aborted; the other requests' tokens do not change."""
    cfg = EngineConfig(max_tokens_per_step=6, prefill_chunk_size=4, block_size=2, num_blocks=24)
    engine = Engine(model, cfg)
    keep, done, gone = (engine.add_request(p, 6) for p in ([1, 2, 3, 4], [5, 6, 7], [8, 9]))
    engine.step()
    engine.step()
    engine.finish(done)
    engine.abort(gone)
    assert done not in engine.kv.lengths and engine.request(done).is_finished
    engine.finish(done)  # twice is harmless
    run_bounded(engine)
    assert engine.output(keep) == greedy(model, [1, 2, 3, 4], 6)
    reasons = [engine.request(i).finish_reason for i in (keep, done, gone)]
    assert reasons == ["length", "stop", "abort"] and engine.stats.aborted == 1
    assert_all_free(engine)


def test_finish_reason_is_stop_at_the_end_token(model):
    first = greedy(model, [3, 1, 4], 4)
    engine = Engine(model, EngineConfig(eos_token_id=first[1]))
    rid = engine.add_request([3, 1, 4], 4)
    assert engine.request(rid).finish_reason is None
    run_bounded(engine)
    assert engine.output(rid) == first[: first.index(first[1]) + 1] and engine.request(rid).finish_reason == "stop"


def test_abort_of_a_swapped_request_frees_its_host_blocks(model):
    cfg = EngineConfig(max_tokens_per_step=8, prefill_chunk_size=8, block_size=2, num_blocks=4, preemption="swap")
    engine = Engine(model, cfg)
    old = engine.add_request([1, 2, 3], 5)
    new = engine.add_request([4, 5, 6], 5)
    while not engine.swap.holds(new):
        engine.step()
    engine.abort(new)
    assert engine.swap.used_blocks == 0 and new not in [r.request_id for r in engine.waiting]
    run_bounded(engine)
    assert engine.output(old) == greedy(model, [1, 2, 3], 5)
    assert_all_free(engine)


def test_abort_of_an_unknown_id_is_a_typed_error(model):
    from cblab_teach.errors import UnknownRequestError

    with pytest.raises(UnknownRequestError, match="unknown request id 7"):
        Engine(model).abort(7)


def test_kv_cache_errors_stay_typed():
    kv = PagedAllocator(1, 1, 2, num_blocks=1, block_size=2)
    with pytest.raises(KVCacheError, match="dropped but no table holds it"):
        kv.pool.drop(0)


def test_a_parent_s_forks_hold_their_seats_before_they_join(model):
    """max_running counts a group's sequences from its admission: the forks join at the parent's first sample,
    and requests admitted in between must not take their seats (the fuzz saw 4 running with max_running=3)."""
    cfg = EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4, max_running=3, block_size=4, num_blocks=64)
    engine = Engine(model, cfg)
    base = SamplingParams(temperature=1.0, seed=4)
    group = engine.add_request_group([1, 2, 3, 4, 5, 6, 7, 8], 2, 3, base)
    singles = [engine.add_request([9, 10], 3), engine.add_request([11, 12], 3)]
    for _ in range(100):
        if not engine.has_unfinished():
            break
        assert len(engine.step().running) <= cfg.max_running
    assert [engine.output(i) for i in group] == [alone(model, [1, 2, 3, 4, 5, 6, 7, 8], 3, replace(base, seed=4 + i))
                                                 for i in (0, 1)]  # fmt: skip
    assert [engine.output(i) for i in singles] == [greedy(model, [9, 10], 3), greedy(model, [11, 12], 3)]
    assert_all_free(engine)


def test_aborting_a_fork_before_it_joins_leaves_the_rest_of_the_group(model):
    engine = Engine(model, EngineConfig(max_tokens_per_step=8, prefill_chunk_size=2, block_size=2, num_blocks=32))
    base = SamplingParams(temperature=1.0, seed=9)
    ids = engine.add_request_group([3, 4, 5, 6], 3, 4, base)
    engine.step()  # the parent is prefilling; its forks wait for its first sample
    engine.abort(ids[1])
    assert engine.request(ids[0]).forks == [ids[2]] and engine.request(ids[1]).aborted
    run_bounded(engine)
    assert [engine.output(i) for i in (ids[0], ids[2])] == [alone(model, [3, 4, 5, 6], 4, replace(base, seed=9 + i))
                                                            for i in (0, 2)]  # fmt: skip
    assert engine.output(ids[1]) == [] and not engine.request(ids[0]).aborted
    assert_all_free(engine)


def test_an_attention_plugin_that_overrides_nothing_changes_nothing(model):
    from cblab_teach.plugins.base import AttentionPlugin

    engine = Engine(model, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3), plugins=[AttentionPlugin()])
    assert engine.generate([[1, 2, 3, 4], [5, 6]], 4) == [greedy(model, [1, 2, 3, 4], 4), greedy(model, [5, 6], 4)]


@pytest.mark.parametrize("prompts", [5, None])
def test_generate_needs_a_list_of_prompts(model, prompts):
    with pytest.raises(RequestError, match=rf"^generate needs a list of prompts, got {prompts!r}$"):
        Engine(model).generate(prompts, 2)
