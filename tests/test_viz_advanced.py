"""Preemption, shared blocks and speculative drafts in the figures: checked against the records, step by step."""

from __future__ import annotations

import math
import pathlib
from collections import defaultdict

import numpy as np
import pytest

from cblab_teach import Engine, EngineConfig, ModelConfig, SamplingParams, TinyLM
from cblab_teach.viz import (
    Playground,
    block_map_figure,
    budget_figure,
    budget_overview,
    compare_timelines,
    timeline_figure,
)
from cblab_teach.viz.blocks import FREE
from cblab_teach.viz.colors import lighten, request_color
from cblab_teach.workloads import make_workload

BLOCK_SIZE = 4
SYSTEM = [(5 * i + 2) % 64 for i in range(13)]  # a shared "system prompt": three full blocks of 4


@pytest.fixture(scope="module")
def tiny() -> TinyLM:
    return TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0)


def run(model, prompts, max_new, **cfg):
    engine = Engine(model, EngineConfig(**{"max_tokens_per_step": 16, "prefill_chunk_size": 8,
                                           "block_size": BLOCK_SIZE, **cfg}))  # fmt: skip
    engine.generate(prompts, max_new)
    return engine


@pytest.fixture(scope="module")
def preempting(tiny):
    w = make_workload(8, (3, 20), (2, 12), vocab_size=64, seed=5)
    engine = run(tiny, w.prompts, w.max_new_tokens, num_blocks=12, preemption=True)
    assert engine.stats.preemptions >= 3, "the pool should be small enough to preempt"
    return engine


@pytest.fixture(scope="module")
def swapping(tiny):
    """preemption="swap" with a host pool of 3 blocks: some victims are swapped, the others recomputed."""
    w = make_workload(8, (3, 20), (2, 12), vocab_size=64, seed=5)
    engine = run(tiny, w.prompts, w.max_new_tokens, num_blocks=12, preemption="swap", num_host_blocks=3)
    s = engine.stats
    assert 0 < s.swap_outs < s.preemptions and s.recomputed_tokens > 0, "want swapped and recomputed victims"
    return engine


@pytest.fixture(scope="module")
def forking(tiny):
    """Parallel sampling: a group of 4 on a 10-token prompt (blocks of 4: the last one partly filled)."""
    engine = Engine(tiny, EngineConfig(max_tokens_per_step=16, prefill_chunk_size=8, block_size=BLOCK_SIZE,
                                       num_blocks=40))  # fmt: skip
    engine.add_request(list(range(20, 26)), 5)  # a neighbour
    engine.add_request_group(list(range(3, 13)), 4, max_new_tokens=6, sampling=SamplingParams(temperature=1.0, seed=3))
    engine.run()
    assert engine.stats.cow_copies == 3
    return engine


@pytest.fixture(scope="module")
def sharing(tiny):
    w = make_workload(6, (1, 9), (2, 8), vocab_size=64, seed=9)
    engine = Engine(tiny, EngineConfig(max_tokens_per_step=16, prefill_chunk_size=8, block_size=BLOCK_SIZE,
                                       num_blocks=40, enable_prefix_caching=True))  # fmt: skip
    engine.add_request(SYSTEM + w.prompts[0], 4)
    engine.step()
    engine.step()  # the first request's system-prompt blocks are cached before the others arrive
    engine.add_request(SYSTEM + w.prompts[1], w.max_new_tokens[1])
    engine.step()  # two owners...
    for p, n in zip(w.prompts[2:], w.max_new_tokens[2:]):
        engine.add_request(SYSTEM + p, n)
    engine.run()  # ...then many
    assert engine.stats.prefix_hit_tokens > 0
    owners = [len(rids) for r in engine.records for rids in owners_of(r).values()]
    assert 2 in owners and max(owners) > 2
    return engine


@pytest.fixture(scope="module")
def speculating(tiny):
    w = make_workload(6, (3, 15), (8, 24), vocab_size=64, seed=2)
    engine = run(tiny, w.prompts, w.max_new_tokens, max_tokens_per_step=20, num_blocks=60, speculative="ngram")
    assert 0 < engine.stats.accepted_tokens < engine.stats.draft_tokens, "want accepted and rejected drafts"
    return engine


@pytest.fixture(scope="module")
def rejecting(tiny):
    """A draft model that guesses wrong: every draft is verified and thrown away."""
    draft = TinyLM(tiny.config, seed=3)
    w = make_workload(6, (3, 15), (4, 16), vocab_size=64, seed=2)
    engine = Engine(tiny, EngineConfig(max_tokens_per_step=20, prefill_chunk_size=8, block_size=BLOCK_SIZE,
                                       num_blocks=60, speculative="draft", num_speculative_tokens=3),
                    draft_model=draft)  # fmt: skip
    engine.generate(w.prompts, w.max_new_tokens)
    assert engine.stats.draft_tokens > engine.stats.accepted_tokens
    return engine


def trace(fig, name: str):
    return next(t for t in fig.data if t.name == name)


def timeline_cells(fig) -> dict:
    """(request label, step) -> state drawn by the bars."""
    cells = {}
    for t in fig.data:
        if t.type == "bar":
            for y, base, n in zip(t.y, t.base, t.x):
                for s in range(round(base + 0.5), round(base + 0.5 + n)):
                    assert (y, s) not in cells, "two states drawn for one cell"
                    cells[(y, s)] = t.name
    return cells


# -- preemption ---------------------------------------------------------------------------------


def lost_tokens(records) -> list[tuple[int, int, int]]:
    """Reference: (step, request, tokens of KV it held) per preemption, by summing chunk lengths since admission."""
    held: dict = defaultdict(int)
    out = []
    for r in records:
        for rid in r.preempted:
            out.append((r.step, rid, held.pop(rid, 0)))
        for c in r.plan.chunks:
            held[c.request_id] += c.length
    return out


def test_timeline_marks_every_preemption(preempting):
    records = preempting.records
    fig = timeline_figure(records)
    marks = trace(fig, "preempted")
    drawn = [(y, round(x), step, n) for y, x, (step, n) in zip(marks.y, marks.x, marks.customdata)]
    expected = [(f"r{rid}", step, step, n) for step, rid, n in lost_tokens(records)]
    assert sorted(drawn) == sorted(expected)
    assert {(y, s) for y, s, _, _ in drawn} == {(f"r{rid}", r.step) for r in records for rid in r.preempted}
    assert sum(n for *_, n in drawn) == preempting.stats.recomputed_tokens  # the engine's own count
    assert "KV freed, will recompute %{customdata[1]} tokens" in marks.hovertemplate
    assert fig.data[-1].name == "finished"
    cells = timeline_cells(fig)
    for step, rid, _ in lost_tokens(records):
        assert cells[(f"r{rid}", step)] == "waiting", "a preempted request goes back to waiting"


def test_recompute_prefill_is_told_apart_from_first_prefill(preempting):
    records = preempting.records
    cells = timeline_cells(timeline_figure(records))
    lost: dict = {}
    held: dict = defaultdict(int)
    counts = defaultdict(int)
    for r in records:
        for rid in r.preempted:
            lost[rid] = max(lost.get(rid, 0), held.pop(rid, 0))
        for c in r.plan.chunks:
            recompute = c.kind == "prefill" and c.start < lost.get(c.request_id, 0)
            expected = "recompute" if recompute else c.kind
            assert cells[(f"r{c.request_id}", r.step)] == expected, (r.step, c)
            counts[expected] += 1
            held[c.request_id] += c.length
    assert counts["recompute"] > 0 and counts["prefill"] > 0


def test_no_preemption_no_marks(tiny):
    w = make_workload(5, (3, 12), (2, 6), vocab_size=64, seed=1)
    records = run(tiny, w.prompts, w.max_new_tokens, num_blocks=64).records
    fig = timeline_figure(records)
    assert len(trace(fig, "preempted").x) == 0 and len(trace(fig, "recompute").x) == 0
    assert not trace(fig, "preempted").showlegend
    for name in ("swap out", "swap in"):
        assert len(trace(fig, name).x) == 0 and not trace(fig, name).showlegend


def test_recompute_runs_draw_no_swaps(preempting):
    fig = timeline_figure(preempting.records)
    assert len(trace(fig, "swap out").x) == len(trace(fig, "swap in").x) == 0
    assert not trace(fig, "swap out").showlegend


def test_swapped_victims_are_drawn_apart_from_recomputed_ones(swapping):
    records, stats = swapping.records, swapping.stats
    fig = timeline_figure(records)
    swapped = {(r.step, rid) for r in records for rid in r.swapped}
    lost = {(step, rid): n for step, rid, n in lost_tokens(records)}
    out, crosses = trace(fig, "swap out"), trace(fig, "preempted")
    drawn_out = {(step, int(y[1:])): n for y, (step, n) in zip(out.y, out.customdata)}
    drawn_cross = {(step, int(y[1:])): n for y, (step, n) in zip(crosses.y, crosses.customdata)}
    assert set(drawn_out) == swapped and set(drawn_cross) == set(lost) - swapped  # every victim, drawn once
    assert all(drawn_out[e] == lost[e] for e in drawn_out) and all(drawn_cross[e] == lost[e] for e in drawn_cross)
    per_token = swapping.kv.bytes_per_slot
    assert sum(drawn_out.values()) * per_token == stats.swapped_out_bytes  # the engine's own counts
    assert sum(drawn_cross.values()) == stats.recomputed_tokens
    assert out.marker.symbol != crosses.marker.symbol and out.marker.color != crosses.marker.color
    assert out.showlegend and crosses.showlegend and "host pool" in out.hovertemplate
    assert all(round(x) == step for x, (step, _) in zip(out.x, out.customdata))


def test_swap_in_is_the_next_admission_and_resumes_without_recompute(swapping):
    records = swapping.records
    fig = timeline_figure(records)
    back = trace(fig, "swap in")
    drawn = [(step, int(y[1:]), n) for y, (step, n) in zip(back.y, back.customdata)]
    expected, parked = [], {}
    for r in records:  # reference: the admission after a swap-out copies back what the victim held
        for rid in r.swapped:
            parked[rid] = next(n for s, v, n in lost_tokens(records) if s == r.step and v == rid)
        for rid in r.plan.admitted:
            if rid in parked:
                expected.append((r.step, rid, parked.pop(rid)))
    assert drawn == expected and len(drawn) == swapping.stats.swap_outs and not parked
    assert sum(n for *_, n in drawn) * swapping.kv.bytes_per_slot == swapping.stats.swapped_in_bytes
    cells = timeline_cells(fig)
    for step, rid, n in drawn:
        chunk = next(c for c in records[step].plan.chunks if c.request_id == rid)
        assert chunk.start == n, "a swapped request resumes at the tokens it had"
        assert cells[(f"r{rid}", step)] != "recompute"
    recomputed = {rid for r in records for rid in r.preempted if rid not in r.swapped}
    only_swapped = {rid for _, rid, _ in drawn} - recomputed
    assert only_swapped, "some request was only ever swapped"
    assert all(cells[(f"r{rid}", s)] != "recompute" for rid in only_swapped for s in range(len(records))
               if (f"r{rid}", s) in cells)  # fmt: skip


def test_compare_timelines_names_the_two_runs(preempting, swapping):
    fig = compare_timelines(preempting.records, swapping.records, names=("recompute", "swap"), title="two modes")
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"recompute: {len(preempting.records)} steps", f"swap: {len(swapping.records)} steps"]
    assert fig.layout.title.text == "two modes"
    legend = [t.name for t in fig.data if t.showlegend]
    assert len(legend) == len(set(legend)), "each legend entry once"
    assert {"preempted", "recompute", "swap out", "swap in"} <= set(legend)
    right = next(t for t in fig.data if t.xaxis == "x2" and t.name == "swap out")
    assert len(right.x) == swapping.stats.swap_outs


# -- shared blocks and the prefix cache -----------------------------------------------------------


def owners_of(record) -> dict:
    out: dict = defaultdict(list)
    for rid, table in record.block_tables.items():
        for b in table:
            out[b].append(rid)
    return out


def test_block_map_outlines_exactly_the_shared_blocks(sharing):
    records = sharing.records
    fig = block_map_figure(records, 40, BLOCK_SIZE)
    width = math.ceil(math.sqrt(40))
    seen_shared = 0
    for record, frame in zip(records, fig.frames):
        owners = owners_of(record)
        shared = {b for b, rids in owners.items() if len(rids) > 1}
        seen_shared += len(shared)
        pool_marks, table_marks = frame.data[2], frame.data[3]
        assert {int(y) * width + int(x) for x, y in zip(pool_marks.x, pool_marks.y)} == shared
        for x, y, text in zip(pool_marks.x, pool_marks.y, pool_marks.customdata):
            block = int(y) * width + int(x)
            assert all(f"r{rid}" in text for rid in owners[block]) and "shared by" in text
        expected_cells = {
            (f"r{rid}", i) for rid, t in record.block_tables.items() for i, b in enumerate(t) if b in shared
        }
        assert set(zip(table_marks.y, table_marks.x)) == expected_cells
        pool = np.array(frame.data[0].z, dtype=float).reshape(-1)
        for b in shared:  # still coloured as one of its owners, and full
            assert pool[b] != FREE and (pool[b] - 1) % 2 == 0
        if shared:
            assert f"{len(shared)} shared" in frame.layout.title.text
    assert seen_shared > 0, "the workload should share the system prompt's blocks"


def test_block_map_marks_the_copies_made_on_write(forking):
    records = forking.records
    fig = block_map_figure(records, 40, BLOCK_SIZE)
    width = math.ceil(math.sqrt(40))
    copies = 0
    for record, frame in zip(records, fig.frames):
        pool_marks, table_marks = frame.data[4], frame.data[5]
        expected = {new: (rid, old) for rid, pairs in record.copied_blocks.items() for old, new in pairs}
        assert {int(y) * width + int(x) for x, y in zip(pool_marks.x, pool_marks.y)} == set(expected)
        for x, y, text in zip(pool_marks.x, pool_marks.y, pool_marks.customdata):
            rid, old = expected[int(y) * width + int(x)]
            assert f"r{rid}'s copy of block {old}" in text
        cells = {(f"r{rid}", record.block_tables[rid].index(new)) for new, (rid, _) in expected.items()}
        assert set(zip(table_marks.y, table_marks.x)) == cells
        owners = owners_of(record)
        assert all(owners[new] == [rid] for new, (rid, _) in expected.items()), "a fresh copy has one owner"
        assert ("copied on write" in frame.layout.title.text) == bool(expected)
        copies += len(expected)
    assert copies == forking.stats.cow_copies == 3


def test_whole_block_prompts_copy_nothing(tiny):
    engine = Engine(tiny, EngineConfig(max_tokens_per_step=16, block_size=BLOCK_SIZE, num_blocks=40))
    engine.add_request_group(list(range(3, 11)), 3, max_new_tokens=4, sampling=SamplingParams(temperature=1.0))
    engine.run()
    fig = block_map_figure(engine.records, 40, BLOCK_SIZE)
    assert engine.stats.cow_copies == 0 and any(r.forked for r in engine.records)
    assert all(len(f.data[4].x) == len(f.data[5].x) == 0 for f in fig.frames)


def test_block_map_hover_tells_prefix_cache_hits(sharing):
    records = sharing.records
    fig = block_map_figure(records, 40, BLOCK_SIZE)
    hits: dict = {}
    checked = 0
    for record, frame in zip(records, fig.frames):
        for rid in record.plan.admitted:
            hits[rid] = record.plan.cached_tokens.get(rid, 0)
        tables = frame.data[1]
        for row, y in enumerate(tables.y):
            if y == "(none)":
                continue
            rid = int(y[1:])
            reused = hits.get(rid, 0) // BLOCK_SIZE
            for i, text in enumerate(tables.customdata[row][: len(record.block_tables[rid])]):
                says = "prefix-cache hit" in text
                assert says == (i < reused), (record.step, rid, i, text)
                if says:
                    assert f"prefix-cache hit: {hits[rid]} prompt tokens" in text
                    checked += 1
    assert checked > 0


# -- speculative drafts ----------------------------------------------------------------------------


def test_budget_draft_segments_are_the_drafts(speculating):
    records = speculating.records
    fig = budget_figure(records)
    accepted_total = 0
    for record, frame in zip(records, fig.frames):
        decode, draft = frame.data[0], frame.data[3]
        drafts = {f"r{c.request_id}": c for c in record.plan.chunks if c.drafts}
        shown = {cd[0]: (cd[2], cd[4], base, x) for cd, base, x in zip(draft.customdata, draft.base, draft.x)}
        assert set(shown) == set(drafts)
        decode_at = {cd[0]: (base, x) for cd, base, x in zip(decode.customdata, decode.base, decode.x)}
        for name, c in drafts.items():
            n, accepted, base, x = shown[name]
            assert n == x == len(c.drafts)
            assert accepted == len(record.new_tokens[c.request_id]) - 1
            accepted_total += accepted
            assert decode_at[name] == (base - 1, 1), "the plain decode token sits just before its drafts"
        colors = dict(zip([cd[0] for cd in draft.customdata], draft.marker.color or ()))
        for name in drafts:
            assert colors[name] == lighten(request_color(int(name[1:])), 0.5) != request_color(int(name[1:]))
        tokens: dict = defaultdict(int)
        for t in frame.data:
            for cd, x in zip(t.customdata, t.x):
                if cd[1] != "unused":
                    tokens[cd[0]] += x
        assert dict(tokens) == {f"r{c.request_id}": c.length for c in record.plan.chunks}
    assert accepted_total == speculating.stats.accepted_tokens
    assert "%{customdata[4]} accepted" in fig.data[3].hovertemplate


def test_budget_overview_draft_trace(speculating):
    records = speculating.records
    fig = budget_overview(records)
    assert fig.data[3].name == "budget" and fig.data[4].name == "speculative drafts"
    shown = {(cd[3], cd[0]): (x, cd[2], cd[4]) for cd, x in zip(fig.data[4].customdata, fig.data[4].y)}
    expected = {
        (r.step, f"r{c.request_id}"): (len(c.drafts), len(c.drafts), len(r.new_tokens[c.request_id]) - 1)
        for r in records
        for c in r.plan.chunks
        if c.drafts
    }
    assert shown == expected and expected


@pytest.mark.parametrize("which", ["speculating", "rejecting"])
def test_block_map_after_rejected_drafts(which, request):
    """Rejected drafts are truncated from the KV: the part-filled flag follows what was kept, not the chunk end."""
    records = request.getfixturevalue(which).records
    fig = block_map_figure(records, 60, BLOCK_SIZE)
    held: dict = defaultdict(int)
    for record, frame in zip(records, fig.frames):
        for c in record.plan.chunks:
            kept = len(record.new_tokens[c.request_id]) - 1 if c.drafts else len(c.drafts)
            held[c.request_id] += c.length - len(c.drafts) + kept
        pool = np.array(frame.data[0].z, dtype=float).reshape(-1)
        for rid, table in record.block_tables.items():
            assert len(table) == math.ceil(held[rid] / BLOCK_SIZE)
            last = pool[table[-1]]
            assert (last - 1) % 2 == (held[rid] % BLOCK_SIZE != 0), (record.step, rid)


# -- playground ----------------------------------------------------------------------------------


def test_playground_checkboxes_run_the_features():
    pg = Playground(num_requests=6, prompt_len=(4, 16), new_tokens=(8, 24), block_size=4, num_blocks=64)
    for name in ("preemption", "prefix_caching", "speculative", "num_blocks", "shared_prefix"):
        assert name in pg.controls
    assert not any(r.preempted for r in pg.records)
    pg.controls["preemption"].value = True
    pg.controls["num_blocks"].value = 10
    assert pg.error is None, pg.status.value
    assert pg.controls["kv_slots"].value == 10 * 4
    assert pg.engine.config.num_blocks == 10 and pg.engine.config.preemption
    events = {(f"r{rid}", r.step) for r in pg.records for rid in r.preempted}
    assert events, "10 blocks of 4 slots should force preemption"
    marks = next(t for t in pg.timeline.data if t.name == "preempted")
    assert {(y, round(x)) for y, x in zip(marks.y, marks.x)} == events
    pg.controls["kv_slots"].value = 256
    assert pg.controls["num_blocks"].value == 64
    pg.controls["shared_prefix"].value = 12
    pg.controls["prefix_caching"].value = True
    assert pg.engine.config.enable_prefix_caching and any(r.plan.cached_tokens for r in pg.records)
    pg.controls["speculative"].value = True
    assert pg.engine.config.speculative == "ngram"
    drafts = {(r.step, f"r{c.request_id}"): len(c.drafts) for r in pg.records for c in r.plan.chunks if c.drafts}
    shown = {(cd[3], cd[0]): cd[2] for cd in pg.overview.data[4].customdata}
    assert shown == drafts and drafts


def test_core_never_imports_viz():
    core = pathlib.Path(__file__).resolve().parents[1] / "cblab_teach" / "core"
    for path in core.glob("*.py"):
        assert "viz" not in path.read_text(), f"{path.name} mentions the visual layer"
