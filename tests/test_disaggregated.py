"""Disaggregated prefill/decode: same tokens as one engine, K/V moved block by block, bytes counted."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from cblab_teach import (
    CapacityError,
    CBLabError,
    DuplicateRequestError,
    Engine,
    EngineConfig,
    KVCacheError,
    RequestError,
    SamplingParams,
    TinyLM,
    UnknownRequestError,
)
from cblab_teach.advanced.disaggregated import DisaggregatedServer, run_two_processes
from cblab_teach.core.kv_transfer import KVBlock
from cblab_teach.viz import compare_timelines
from cblab_teach.viz.timeline import request_states

from .helpers import hf_llama, run_alone


@pytest.fixture(scope="module")
def alone(model64, workload):
    return [run_alone(model64, p, n) for p, n in zip(workload.prompts, workload.max_new_tokens)]


def kv_bytes_per_token(model: TinyLM) -> int:
    """K and V of one token over every layer, from the model's shapes (independent of the cache code)."""
    c = model.config
    return 2 * c.num_layers * c.kv_heads * c.head_dim * torch.empty((), dtype=c.dtype).element_size()


PAIRS = [
    (dict(kv_layout=p, max_tokens_per_step=b, prefill_chunk_size=c, block_size=bs), dict(kv_layout=d, block_size=dbs))
    for (p, d), (b, c), (bs, dbs) in itertools.product(
        [("paged", "paged"), ("dense", "paged"), ("paged", "dense"), ("dense", "dense")],
        [(3, 2), (16, 5), (64, 64)],
        [(4, 4), (2, 8)],
    )
]


@pytest.mark.parametrize("pre,dec", PAIRS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_disaggregated_equals_one_engine_token_for_token(model64, workload, alone, pre, dec):
    server = DisaggregatedServer(model64, EngineConfig(**pre), EngineConfig(**dec))
    assert server.generate(workload.prompts, workload.max_new_tokens) == alone
    moved = [i for i, n in enumerate(workload.max_new_tokens) if n > 1]  # one token: done before any hand-over
    assert sorted(server.transfers) == moved
    prompt_tokens = sum(len(workload.prompts[i]) for i in moved)
    assert server.bytes_transferred == prompt_tokens * kv_bytes_per_token(model64)
    per_block = pre["block_size"]
    assert server.blocks_transferred == sum(math.ceil(len(workload.prompts[i]) / per_block) for i in moved)


def test_prefill_never_decodes_and_decode_never_prefills(model64, workload):
    server = DisaggregatedServer(
        model64, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3, block_size=4), EngineConfig(block_size=4)
    )
    server.generate(workload.prompts, workload.max_new_tokens)
    assert {c.kind for r in server.prefill.records for c in r.plan.chunks} == {"prefill"}
    assert {c.kind for r in server.decode.records for c in r.plan.chunks} == {"decode"}
    assert not server.prefill.kv.lengths and not server.decode.kv.lengths  # every block given back
    assert sorted(server.prefill.kv.free_blocks) == list(range(server.prefill.config.num_blocks))


def test_requests_wait_in_flight_when_the_decode_pool_is_full(model64, workload, alone):
    """A small decode pool: prefilled K/V waits in flight until a decoder finishes; nothing is lost."""
    server = DisaggregatedServer(
        model64,
        EngineConfig(max_tokens_per_step=32, prefill_chunk_size=16, block_size=4),
        EngineConfig(block_size=4, num_blocks=8, max_running=2),
    )
    for p, n in zip(workload.prompts, workload.max_new_tokens):
        server.add_request(p, n)
    most_in_flight = 0
    while server.has_unfinished():
        server.step()
        most_in_flight = max(most_in_flight, len(server.in_flight))
    assert most_in_flight >= 2
    assert [server.output(i) for i in range(len(alone))] == alone


def test_sampled_requests_keep_their_random_stream(model64, workload):
    hot = [SamplingParams(temperature=1.0, top_k=20, seed=s) for s in range(len(workload.prompts))]
    ref = Engine(model64, EngineConfig()).generate(workload.prompts, workload.max_new_tokens, sampling=hot)
    server = DisaggregatedServer(model64, EngineConfig(block_size=4), EngineConfig(kv_layout="dense"))
    assert server.generate(workload.prompts, workload.max_new_tokens, sampling=hot) == ref


def test_decode_engine_with_preemption_and_prefix_caching(model64, workload, alone):
    shared = [[7, 7, 7, 7, 1, 2, 3, 4] + p for p in workload.prompts]
    ref = [run_alone(model64, p, n) for p, n in zip(shared, workload.max_new_tokens)]
    server = DisaggregatedServer(
        model64,
        EngineConfig(block_size=4, enable_prefix_caching=True, max_tokens_per_step=8, prefill_chunk_size=8),
        EngineConfig(block_size=4, num_blocks=12, preemption=True, enable_prefix_caching=True),
    )
    assert server.generate(shared, workload.max_new_tokens) == ref
    assert server.prefill.stats.prefix_hit_tokens > 0


def test_equals_huggingface_generate_with_an_attention_mask():
    hf = hf_llama(2)
    model = TinyLM.from_hf(hf)
    prompts, n = [[1, 2, 3, 4, 5], [7, 8], [9] * 20, [100, 3, 55]], [10, 4, 7, 12]
    server = DisaggregatedServer(
        model, EngineConfig(max_tokens_per_step=7, prefill_chunk_size=3, block_size=4), EngineConfig(block_size=8)
    )
    out = server.generate(prompts, n)
    for p, o, m in zip(prompts, out, n):
        ids = torch.tensor([p])
        ref = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=m,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        assert o == ref[0, len(p) :].tolist()


def test_both_timelines_draw_side_by_side(model64, workload):
    server = DisaggregatedServer(model64, EngineConfig(max_tokens_per_step=6, prefill_chunk_size=3), EngineConfig())
    server.generate(workload.prompts, workload.max_new_tokens)
    fig = compare_timelines(server.records["prefill"], server.records["decode"])
    assert len(fig.data) > 0 and len(fig.layout.annotations) == 2
    states_pre = {s for row in request_states(server.prefill.records).values() for s in row if s}
    states_dec = {s for row in request_states(server.decode.records).values() for s in row if s}
    assert "decode" not in states_pre and "prefill" not in states_dec


def test_two_processes_over_gloo_give_the_same_tokens_and_bytes(model64, workload, alone):
    pre, dec = EngineConfig(max_tokens_per_step=8, prefill_chunk_size=4, block_size=4), EngineConfig(block_size=8)
    res = run_two_processes(model64, workload.prompts, workload.max_new_tokens, pre, dec, timeout_s=100)
    assert res.outputs == alone
    local = DisaggregatedServer(model64, pre, dec)
    local.generate(workload.prompts, workload.max_new_tokens)
    assert res.bytes_sent == local.bytes_transferred and res.blocks_sent == local.blocks_transferred
    assert res.requests_sent == len(local.transfers)
    assert {c.kind for r in res.decode_records for c in r.plan.chunks} == {"decode"}


# -- bad input ------------------------------------------------------------------------------------------


def broken_blocks(server: DisaggregatedServer, rid: int):
    """A hand-over whose first block lost a layer."""
    h = server.prefill.export_prefilled(rid)
    b = h.blocks[0]
    h.blocks[0] = KVBlock(b.start, b.k[:1], b.v[:1])
    return server.decode.import_prefilled(h)


BAD = [
    ("export a request still prefilling", lambda s, rid: s.prefill.export_prefilled(rid), RequestError,
     r"request 0 cannot be handed over: .*state prefill"),
    ("export an unknown request", lambda s, rid: s.prefill.export_prefilled(99), UnknownRequestError,
     r"unknown request id 99"),
    ("import something else", lambda s, rid: s.decode.import_prefilled({"request_id": 5}), RequestError,
     r"needs a PrefilledRequest .*got \{'request_id': 5\}"),
    ("duplicate request id", lambda s, rid: s.add_request([1, 2], 2, request_id=rid), DuplicateRequestError,
     r"request id 0 is already in use"),
    ("never fits the decode pool", lambda s, rid: s.add_request([1] * 10, 30), CapacityError,
     r"needs 39 KV slots but the whole pool has 32"),
    ("unknown output id", lambda s, rid: s.output(42), UnknownRequestError, r"unknown request id 42"),
]  # fmt: skip


@pytest.mark.parametrize("trigger,error,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_typed_error_and_the_others_finish(model64, trigger, error, message):
    server = DisaggregatedServer(
        model64,
        EngineConfig(max_tokens_per_step=4, prefill_chunk_size=2, block_size=4, num_blocks=64),
        EngineConfig(block_size=4, num_blocks=8),
    )
    good = {server.add_request([3, 1, 4, 1, 5, 9], 6): ([3, 1, 4, 1, 5, 9], 6),
            server.add_request([2, 7], 4): ([2, 7], 4)}  # fmt: skip
    server.step()  # request 0 is mid-prefill
    with pytest.raises(CBLabError) as info:
        trigger(server, 0)
    assert type(info.value) is error, f"got {type(info.value).__name__}: {info.value}"
    assert re.search(message, str(info.value)), str(info.value)
    server.run()
    for rid, (p, n) in good.items():
        assert server.output(rid) == run_alone(model64, p, n)


def test_a_malformed_hand_over_is_refused_before_anything_changes(model64):
    server = DisaggregatedServer(model64, EngineConfig(block_size=4), EngineConfig(block_size=4, num_blocks=8))
    rid = server.add_request([3, 1, 4, 1, 5, 9], 6)
    other = server.add_request([2, 7], 4)
    server.prefill.step()
    with pytest.raises(KVCacheError, match=r"request 0: KV block at position 0 has shape \(1, 4, 2, 8\)"):
        broken_blocks(server, rid)
    assert rid not in server.decode.requests and not server.decode.kv.lengths
    server.run()
    assert server.output(other) == run_alone(model64, [2, 7], 4)


def test_import_without_room_is_a_typed_error_and_the_request_can_wait(model64):
    server = DisaggregatedServer(model64, EngineConfig(block_size=4), EngineConfig(block_size=4, num_blocks=3))
    a = server.add_request([1, 2, 3, 4, 5, 6], 6)  # 11 slots: 3 blocks, the whole decode pool
    b = server.add_request([6, 5, 4], 5)
    server.prefill.step()
    first, second = server.prefill.export_prefilled(a), server.prefill.export_prefilled(b)
    server.decode.import_prefilled(first)
    assert not server.decode.can_import(second)
    with pytest.raises(KVCacheError, match=r"request 1: no room in this engine now"):
        server.decode.import_prefilled(second)
    server.decode.run()
    server.decode.import_prefilled(second)  # room again once the first has finished
    server.decode.run()
    assert server.decode.output(a) == run_alone(model64, [1, 2, 3, 4, 5, 6], 6)
    assert server.decode.output(b) == run_alone(model64, [6, 5, 4], 5)


@pytest.mark.parametrize("preemption", [False, True])
def test_an_imported_request_keeps_what_it_was_and_joins_the_queue_order(model64, preemption):
    source = Engine(model64, EngineConfig(block_size=4))
    rid = source.add_request([3, 1, 4, 1, 5], 6, request_id=7, priority=2, eos_token_id=96)
    source.step()
    arrived_at = source.request(rid).arrival_time
    handoff = source.export_prefilled(rid)
    assert handoff.arrival_time == arrived_at  # TTFT and E2E count from the first engine's arrival
    target = Engine(model64, EngineConfig(block_size=4, num_blocks=16, preemption=preemption))
    earlier = target.add_request([9, 9], 3)
    target.step()
    assert target.import_prefilled(handoff) == 7
    req = target.request(7)
    assert (req.priority, req.eos_token_id, req.state.value) == (2, 96, "decode")
    assert req.arrival == 1 and target.intake.arrivals == 2  # after the request already there, before any new one
    assert req.arrival_time == handoff.arrival_time and req.arrival_step == 1
    assert req.num_computed == 5 and req.output_ids == handoff.output_ids
    assert target.kv.reserved_blocks[7] == (0 if preemption else math.ceil((5 + 6 - 1) / 4))
    assert target.add_request([2, 2], 2) == 8  # new ids start past the imported one
    target.run()
    assert target.output(7) == run_alone(model64, [3, 1, 4, 1, 5], 6, eos_token_id=96)  # its own end token
    assert target.output(earlier) == run_alone(model64, [9, 9], 3)


def _shifted(h):
    b = h.blocks[0]
    h.blocks[0] = KVBlock(b.start + 1, b.k, b.v)  # shapes right, position wrong


def _v_lost_a_layer(h):
    b = h.blocks[0]
    h.blocks[0] = KVBlock(b.start, b.k, b.v[:1])


def _one_token_short(h):
    b = h.blocks[-1]
    h.blocks[-1] = KVBlock(b.start, b.k[:, :-1], b.v[:, :-1])


MALFORMED = [
    ("a block at the wrong position", _shifted, KVCacheError, r"KV block at position 1 has shape \(2, 4, 2, 8\)"),
    ("only V lost a layer", _v_lost_a_layer, KVCacheError, r"KV block at position 0 has shape \(2, 4, 2, 8\)"),
    ("K/V one token short", _one_token_short, KVCacheError, r"got K/V for 5 tokens and 1 sampled tokens"),
    ("sampling is a dict", lambda h: setattr(h, "sampling", {"temperature": 1.0}), RequestError,
     r"invalid sampling parameters \{'temperature': 1\.0\}"),
    ("priority is a string", lambda h: setattr(h, "priority", "high"), RequestError, r"priority must be an int"),
]  # fmt: skip


@pytest.mark.parametrize("damage,error,message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_each_kind_of_malformed_hand_over_is_refused(model64, damage, error, message):
    source = Engine(model64, EngineConfig(block_size=4))
    rid = source.add_request([3, 1, 4, 1, 5, 9], 4)
    source.step()
    handoff = source.export_prefilled(rid)
    damage(handoff)
    target = Engine(model64, EngineConfig(block_size=4, num_blocks=8))
    with pytest.raises(error, match=message):
        target.import_prefilled(handoff)
    assert not target.requests and not target.kv.lengths


@pytest.mark.parametrize("preemption", [False, True])
def test_can_import_asks_for_exactly_what_admission_needs(model64, preemption):
    """Without preemption a hand-over needs its worst case, prompt + max_new_tokens - 1 slots (here 9: three
    blocks of 4); with preemption only the K/V that arrives plus the next token's slot (7 + 1: two blocks)."""
    source = Engine(model64, EngineConfig(block_size=4))
    rid = source.add_request([3, 1, 4, 1, 5, 9, 2], 3)
    source.step()
    handoff = source.export_prefilled(rid)
    assert handoff.num_tokens == 7
    for blocks in (2, 3):
        target = Engine(model64, EngineConfig(block_size=4, num_blocks=blocks, preemption=preemption))
        assert target.can_import(handoff) == (preemption or blocks == 3), blocks
    seats = Engine(model64, EngineConfig(block_size=4, max_running=2, preemption=preemption))
    seats.add_request([1, 2], 4)
    seats.step()
    assert seats.can_import(handoff)  # one seat of two taken
    seats.add_request([2, 3], 4)
    seats.step()
    assert not seats.can_import(handoff)  # both taken: the hand-over waits for a seat


def test_the_server_keeps_each_requests_id_and_end_token_and_records_its_transfer(model64):
    """An explicit id is the id on both engines; a request whose first token is its end token finishes on the
    prefill engine and never moves; a moved request's transfer says when and what moved, and while in flight
    its output is the token it carries."""
    first = run_alone(model64, [3, 1, 4, 1, 5], 1)[0]
    server = DisaggregatedServer(model64, EngineConfig(block_size=4), EngineConfig(block_size=4, num_blocks=3))
    held = server.add_request([9, 9, 9, 9, 9, 9], 4, request_id=3)  # 9 slots: the whole decode pool
    ends = server.add_request([3, 1, 4, 1, 5], 5, request_id=7, eos_token_id=first)
    moved = server.add_request([2, 7, 1, 8], 3)
    assert (held, ends, moved) == (3, 7, 8) and sorted(server.prefill.requests) == [3, 7, 8]
    server.step()  # all three prefill in one step; 3 moves, 8 waits in flight, 7 has finished
    assert [h.request_id for h in server.in_flight] == [8] and server.output(8) == server.in_flight[0].output_ids
    assert server.output(7) == [first] and 7 not in server.transfers
    t = server.transfers[3]
    assert (t.request_id, t.blocks, t.tokens, t.prefill_step, t.decode_step) == (3, 2, 6, 0, 0)
    assert t.nbytes == 6 * kv_bytes_per_token(model64)
    assert server.transfers[8].decode_step is None  # still in flight
    server.run()
    assert server.output(3) == run_alone(model64, [9, 9, 9, 9, 9, 9], 4)
    assert server.output(8) == run_alone(model64, [2, 7, 1, 8], 3)
    assert server.transfers[8].decode_step == len(server.decode.records) - 2  # arrived when 3 had finished
    with pytest.raises(RequestError, match=r"^nothing to run: every request has finished; add_request\(\) first$"):
        server.step()


def test_import_waits_for_the_oldest_request_to_arrive(model64):
    """``arrived`` models a link: nothing overtakes the oldest request in flight, however much room there is."""
    server = DisaggregatedServer(model64, EngineConfig(block_size=4), EngineConfig(block_size=4))
    a, b = server.add_request([1, 2, 3], 3), server.add_request([4, 5], 3)
    server.prefill.step()
    assert [h.request_id for h in server.export_ready()] == [a, b]
    assert server.import_in_flight(arrived=lambda h: h.request_id != a) == []  # b is not allowed past a
    assert server.import_in_flight(arrived=lambda h: h.request_id == a) == [a]
    assert server.import_in_flight() == [b]
    server.run()
    assert [server.output(a), server.output(b)] == [run_alone(model64, [1, 2, 3], 3), run_alone(model64, [4, 5], 3)]


def test_generate_takes_one_length_for_all_or_one_per_prompt(model64):
    prompts = [[1, 2, 3], [4, 5]]
    server = DisaggregatedServer(model64, EngineConfig(block_size=4), EngineConfig(block_size=4))
    assert server.generate(prompts, 2) == [run_alone(model64, p, 2) for p in prompts]
    message = r"^got 2 prompts but 1 max_new_tokens and 2 sampling params$"
    with pytest.raises(RequestError, match=message):
        DisaggregatedServer(model64).generate(prompts, [3])
    with pytest.raises(RequestError, match=message):  # checked before any process starts
        run_two_processes(model64, prompts, [3])
    with pytest.raises(RequestError, match=r"^got 2 prompts but 2 max_new_tokens and 1 sampling params$"):
        run_two_processes(model64, prompts, 3, sampling=[SamplingParams()])
