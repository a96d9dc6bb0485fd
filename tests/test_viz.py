"""The figures show exactly what the engine recorded: checked against the records, not against a past run."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from cblab_teach import Engine, EngineConfig, ModelConfig, StaticBatchingEngine, TinyLM
from cblab_teach.core.batch_builder import plan_layout
from cblab_teach.errors import CBLabError
from cblab_teach.plugins.attention_recorder import AttentionRecorder
from cblab_teach.viz import (
    NoRecordsError,
    NotPagedError,
    StepOutOfRangeError,
    VizError,
    attention_figure,
    block_map_figure,
    budget_figure,
    budget_overview,
    compare_timelines,
    mask_figure,
    metrics_figure,
    request_colors,
    setup_notebook,
    timeline_figure,
)
from cblab_teach.viz._common import decode_array
from cblab_teach.viz.blocks import FREE
from cblab_teach.viz.mask import MASKED
from cblab_teach.workloads import make_workload

BLOCK_SIZE, NUM_BLOCKS = 4, 48


@pytest.fixture(scope="module")
def tiny() -> TinyLM:
    return TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                              intermediate_size=64), seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def work():
    return make_workload(7, (3, 17), (1, 9), vocab_size=64, seed=5, long_tail=True)


def config(**kw) -> EngineConfig:
    base = dict(max_tokens_per_step=20, prefill_chunk_size=6, block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS)
    return EngineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def records(tiny, work):
    engine = Engine(tiny, config())
    engine.generate(work.prompts, work.max_new_tokens)
    return engine.records


def frame_data(fig, step: int):
    """The data a figure shows at ``step``: its frame when animated."""
    return fig.frames[step].data if fig.frames else fig.data


def scheduled(record) -> dict:
    """Reference: (request id, kind) -> tokens, straight from the plan's chunks."""
    out: dict = defaultdict(int)
    for c in record.plan.chunks:
        out[(f"r{c.request_id}", c.kind)] += c.length
    return dict(out)


def test_run_is_interesting(records):
    kinds = {c.kind for r in records for c in r.plan.chunks}
    assert kinds == {"decode", "prefill"}
    assert any(r.plan.decode_tokens and r.plan.prefill_tokens for r in records), "no mixed step to draw"
    assert any(r.waiting for r in records)


def test_budget_figure_bars_equal_tokens_scheduled(records):
    fig = budget_figure(records)
    assert len(fig.frames) == len(records)
    assert [s.label for s in fig.layout.sliders[0].steps] == [str(r.step) for r in records]
    assert {b.label for b in fig.layout.updatemenus[0].buttons} == {"▶ play", "❚❚ pause"}
    for record, frame in zip(records, fig.frames):
        shown: dict = defaultdict(int)
        pieces = []
        for trace in frame.data:
            for (name, kind, n, step), x, base in zip(trace.customdata, trace.x, trace.base):
                assert step == record.step and n == x
                pieces.append((base, x))
                if kind != "unused":
                    shown[(name, kind)] += x
                else:
                    assert x == record.plan.budget - record.plan.used
        assert dict(shown) == scheduled(record)
        pieces.sort()
        assert [b for b, _ in pieces] == list(np.cumsum([0] + [x for _, x in pieces])[:-1]), "segments overlap"
        assert sum(x for _, x in pieces) == max(record.plan.budget, record.plan.used)


def test_budget_overview_has_every_step(records):
    fig = budget_overview(records)
    shown: dict = defaultdict(lambda: defaultdict(int))
    for trace in fig.data[:3]:
        for (name, kind, n, step), x in zip(trace.customdata, trace.x):
            assert x == step
            if kind != "unused":
                shown[step][(name, kind)] += n
    for record in records:
        assert dict(shown[record.step]) == scheduled(record)
    assert list(fig.data[3].y) == [r.plan.budget for r in records]


def brute_force_mask(record) -> tuple[np.ndarray, np.ndarray, list]:
    """Reference mask from the chunks, with Python loops: query (r, p) sees key (r', p') iff r == r' and p' <= p."""
    chunks = record.plan.chunks
    queries = [(c.request_id, p) for c in chunks for p in range(c.start, c.end)]
    keys = [(c.request_id, p, p < c.start) for c in chunks for p in range(c.end)]
    mask = np.array([[qr == kr and kp <= qp for kr, kp, _ in keys] for qr, qp in queries])
    return mask, np.array([cached for _, _, cached in keys]), keys


def test_mask_figure_is_the_batch_builders_mask(records):
    fig = mask_figure(records)
    assert len(fig.frames) == len(records)
    run_ids = []
    for r in records:
        run_ids += [i for i in r.waiting + [c.request_id for c in r.plan.chunks] if i not in run_ids]
    for record, frame in zip(records, fig.frames):
        z = decode_array(frame.data[0].z).astype(int)
        mask, cached, keys = brute_force_mask(record)
        assert np.array_equal(z != MASKED, mask)
        assert np.array_equal(z != MASKED, plan_layout(record.plan).mask.numpy())
        visible = np.where(mask)
        codes = z[visible]
        key_idx = visible[1]
        assert np.array_equal((codes - 1) % 2 == 1, cached[key_idx]), "cached keys are not told apart"
        owners = [keys[j][0] for j in key_idx]
        assert [run_ids[(c - 1) // 2] for c in codes] == owners
        assert list(frame.data[0].x) == [f"r{r}·k{p} {'cached' if c else 'new'}" for r, p, c in keys]


def test_mask_one_step_and_bad_step(records):
    fig = mask_figure(records, step=len(records) - 1)
    assert not fig.frames
    z = decode_array(fig.data[0].z)
    assert np.array_equal(z != MASKED, plan_layout(records[-1].plan).mask.numpy())
    for bad in (len(records), -len(records) - 1, 1.5, "3"):
        with pytest.raises(StepOutOfRangeError, match="out of range"):
            mask_figure(records, step=bad)


def kv_tokens_after(records, step: int) -> dict:
    """Reference: tokens of KV each running request holds after ``step`` = all its chunk lengths so far."""
    total: dict = defaultdict(int)
    for r in records[: step + 1]:
        for c in r.plan.chunks:
            total[c.request_id] += c.length
    return total


def test_block_map_cells_are_the_block_tables(records):
    fig = block_map_figure(records, NUM_BLOCKS, BLOCK_SIZE)
    assert len(fig.frames) == len(records)
    width = math.ceil(math.sqrt(NUM_BLOCKS))
    owner_code = {}
    for step, (record, frame) in enumerate(zip(records, fig.frames)):
        pool = np.array(frame.data[0].z, dtype=float).reshape(-1)
        held = kv_tokens_after(records, step)
        owned = set()
        for row, (rid, table) in enumerate(record.block_tables.items()):
            assert list(frame.data[1].text[row][: len(table)]) == [str(b) for b in table]
            assert frame.data[1].y[row] == f"r{rid}"
            n = held[rid]
            assert len(table) == math.ceil(n / BLOCK_SIZE)
            for i, block in enumerate(table):
                code = int(pool[block])
                partial = i == len(table) - 1 and n % BLOCK_SIZE != 0
                assert code != FREE and (code - 1) % 2 == partial, f"block {block} of r{rid}"
                assert owner_code.setdefault(rid, (code - 1) // 2) == (code - 1) // 2, "owner colour changed"
                assert frame.data[1].z[row][i] == code
                owned.add(block)
        free = [b for b in range(NUM_BLOCKS) if b not in owned]
        assert all(pool[b] == FREE for b in free)
        assert np.isnan(pool[NUM_BLOCKS:]).all() and len(pool) == width * math.ceil(NUM_BLOCKS / width)
    assert len(set(owner_code.values())) == len(owner_code)


def test_block_map_infers_sizes_and_rejects_dense(tiny, work, records):
    fig = block_map_figure(records, step=2)
    assert fig.layout.title.text.startswith("step 2: ") and f"of {NUM_BLOCKS} blocks" in fig.layout.title.text
    dense = Engine(tiny, config(kv_layout="dense"))
    dense.generate(work.prompts[:2], 2)
    with pytest.raises(NotPagedError, match="kv_layout='paged'"):
        block_map_figure(dense.records, NUM_BLOCKS, BLOCK_SIZE)
    with pytest.raises(VizError, match="num_blocks"):
        block_map_figure(records, 3, BLOCK_SIZE)


def timeline_cells(traces) -> dict:
    """(request label, step) -> state, read back from the drawn bars."""
    cells = {}
    for trace in traces:
        if trace.type != "bar":
            continue
        for y, base, n in zip(trace.y, trace.base, trace.x):
            for s in range(round(base + 0.5), round(base + 0.5 + n)):
                assert (y, s) not in cells, "two states drawn for one cell"
                cells[(y, s)] = trace.name
    return cells


def test_timeline_states_follow_the_records(records):
    fig = timeline_figure(records)
    cells = timeline_cells(fig.data)
    finished_at = {}
    for record in records:
        kinds = {c.request_id: c.kind for c in record.plan.chunks}
        for rid in set(kinds) | set(record.waiting) | set(record.running):
            state = cells.get((f"r{rid}", record.step))
            if rid in kinds:
                assert state == kinds[rid]
            elif rid in record.waiting:
                assert state == "waiting"
            else:
                assert state == "idle"
        finished_at.update({f"r{rid}": record.step for rid in record.finished})
    drawn = sum(1 for (y, s) in cells)
    expected = sum(len({c.request_id for c in r.plan.chunks} | set(r.waiting) | set(r.running)) for r in records)
    assert drawn == expected
    marks = fig.data[-1]
    assert dict(zip(marks.y, marks.customdata)) == finished_at


def test_compare_timelines_shows_static_padding(tiny, work, records):
    static = StaticBatchingEngine(tiny, batch_size=4)
    static.generate(work.prompts, work.max_new_tokens)
    fig = compare_timelines(records, static.records)
    left = [t for t in fig.data if t.xaxis == "x"]
    right = [t for t in fig.data if t.xaxis == "x2"]
    assert "padding" not in set(timeline_cells(left).values())
    cells = timeline_cells(right)
    done = set()
    for record in static.records:
        for c in record.plan.chunks:
            expected = "padding" if c.request_id in done else c.kind
            assert cells[(f"r{c.request_id}", record.step)] == expected
        done.update(record.finished)
        not_started = [i for i in range(len(work.prompts)) if all(
            i not in [c.request_id for c in r.plan.chunks] for r in static.records[: record.step + 1])]  # fmt: skip
        for i in not_started:
            assert cells[(f"r{i}", record.step)] == "waiting"
    assert "padding" in set(cells.values()), "long-tail workload should leave padding in static batches"


def test_request_colours_agree_across_views(records):
    ids = sorted({c.request_id for r in records for c in r.plan.chunks})
    colors = request_colors(ids)
    assert len(set(colors.values())) == len(ids)
    step = next(i for i, r in enumerate(records) if r.plan.decode_tokens and r.plan.prefill_tokens)
    budget = budget_figure(records).frames[step].data
    for trace in budget[:2]:
        for (name, *_), color in zip(trace.customdata, trace.marker.color):
            assert color == colors[int(name[1:])]
    timeline = timeline_figure(records)
    decode = next(t for t in timeline.data if t.name == "decode")
    for y, color in zip(decode.y, decode.marker.color):
        assert color == colors[int(y[1:])]
    mask = mask_figure(records, step=step)
    scale = [c for _, c in mask.data[0].colorscale][2::4]  # masked first; two stops per colour, two per request
    order = []
    for r in records:
        order += [i for i in r.waiting + [c.request_id for c in r.plan.chunks] if i not in order]
    assert [s.lower() for s in scale] == [colors[i].lower() for i in order]


def test_attention_recorder_keeps_outputs_and_records_true_probabilities(tiny, work):
    plain = Engine(tiny, config()).generate(work.prompts, work.max_new_tokens)
    recorder = AttentionRecorder()
    engine = Engine(tiny, config(), plugins=[recorder])
    assert engine.generate(work.prompts, work.max_new_tokens) == plain
    assert set(recorder.maps) == {(r.step, layer) for r in engine.records for layer in range(2)}
    for record in engine.records[:6]:
        mask = plan_layout(record.plan).mask
        for layer in range(2):
            probs = recorder.maps[(record.step, layer)]
            assert probs.shape == (4, *mask.shape)
            assert torch.all(probs[:, ~mask] == 0), "probability leaked to a masked key"
            assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]), atol=1e-5)
    # request 0's first chunk at step 0 must attend the same, batched or alone
    alone = AttentionRecorder(layer=1)
    Engine(tiny, config(), plugins=[alone]).generate([work.prompts[0]], work.max_new_tokens[0])
    first = engine.records[0].plan.chunks[0]
    assert first.request_id == 0 and first.start == 0
    n = first.length
    assert torch.allclose(recorder.maps[(0, 1)][:, :n, :n], alone.maps[(0, 1)][:, :n, :n], atol=1e-5)
    assert set(alone.maps) == {(s, 1) for s in range(len(alone.layouts))}
    fig = attention_figure(recorder, step=1, layer=1, head=2)
    z = np.array(fig.data[0].z, dtype=float)
    m = plan_layout(engine.records[1].plan).mask.numpy()
    assert np.array_equal(~np.isnan(z), m)
    assert np.allclose(z[m], recorder.maps[(1, 1)][2].numpy()[m])
    with pytest.raises(StepOutOfRangeError):
        attention_figure(recorder, step=999)
    with pytest.raises(VizError, match="head=9"):
        attention_figure(recorder, step=0, head=9)


class _Step:
    def __init__(self, step, decode, prefill, duration):
        self.step, self.decode_tokens, self.prefill_tokens, self.duration_s = step, decode, prefill, duration
        self.kv_used_blocks = self.kv_bytes = self.memory_bytes = 0


class _Req:
    def __init__(self, rid, ttft, tpot, n):
        self.request_id, self.ttft_s, self.tpot_s, self.num_output_tokens = rid, ttft, tpot, n
        self.itl_s, self.e2e_s, self.ttft_steps = [], ttft + tpot * (n - 1), 1


class StandInCollector:
    """The MetricsCollector contract's two methods, with known numbers."""

    def step_metrics(self):
        return [_Step(0, 0, 10, 0.5), _Step(1, 2, 4, 0.25), _Step(2, 3, 0, 0.25)]

    def request_metrics(self):
        return [_Req(0, 0.5, 0.25, 3), _Req(1, 0.75, 0.0, 1)]


def test_metrics_figure_from_collector_contract():
    fig = metrics_figure(StandInCollector())
    assert list(fig.data[0].y) == [0, 2, 3] and list(fig.data[1].y) == [10, 4, 0]
    assert np.allclose(fig.data[2].x, [0.5, 0.75, 1.0]) and np.allclose(fig.data[2].y, [20, 16 / 0.75, 19])
    assert np.allclose(fig.data[3].x, [500, 750]) and np.allclose(fig.data[4].x, [250])  # 1-token request: no TPOT
    with pytest.raises(VizError):
        metrics_figure(object())


def test_metrics_figure_with_real_collector(tiny, work):
    from cblab_teach.monitoring import MetricsCollector

    collector = MetricsCollector()
    engine = Engine(tiny, config(), plugins=[collector])
    engine.generate(work.prompts, work.max_new_tokens)
    fig = metrics_figure(collector)
    assert list(fig.data[0].y) == [r.plan.decode_tokens for r in engine.records]
    assert list(fig.data[1].y) == [r.plan.prefill_tokens for r in engine.records]


def test_bad_arguments_raise_typed_errors(records):
    for fn in (budget_figure, budget_overview, mask_figure, timeline_figure):
        with pytest.raises(NoRecordsError):
            fn([])
    assert issubclass(NoRecordsError, CBLabError) and issubclass(StepOutOfRangeError, VizError)
    with pytest.raises(StepOutOfRangeError, match="step 99"):
        block_map_figure(records, NUM_BLOCKS, BLOCK_SIZE, step=99)


def test_figures_work_offline(records, tmp_path):
    assert setup_notebook() == "plotly_mimetype+notebook"
    import plotly.io as pio

    assert pio.renderers.default == "plotly_mimetype+notebook"
    path = tmp_path / "budget.html"
    budget_figure(records).write_html(path, include_plotlyjs=True, auto_play=False)
    html = path.read_text()
    assert '<script src="http' not in html, "the figure must not load plotly.js from a CDN"
    assert "Plotly.newPlot" in html and "Plotly.addFrames" in html and len(html) > 1_000_000  # plotly.js inlined


def test_timeline_marks_running_requests_without_tokens_idle(records):
    """The scheduler here never skips a running request, so build the case: drop one decode chunk from a step."""
    import dataclasses

    from cblab_teach.viz import request_states

    s = next(i for i, r in enumerate(records) if r.plan.decode_tokens and r.plan.prefill_tokens)
    record = records[s]
    skipped = next(c for c in record.plan.chunks if c.kind == "decode" and c.request_id in record.running)
    plan = dataclasses.replace(record.plan, chunks=[c for c in record.plan.chunks if c is not skipped])
    edited = list(records)
    edited[s] = dataclasses.replace(record, plan=plan)
    states = request_states(edited)
    assert states[skipped.request_id][s] == "idle"
    assert request_states(records)[skipped.request_id][s] == "decode"
    cells = timeline_cells(timeline_figure(edited).data)
    assert cells[(f"r{skipped.request_id}", s)] == "idle"


def test_timeline_by_time_spaces_steps_by_duration(records):
    fig = timeline_figure(records, x="time")
    t0 = records[0].start_time
    marks = fig.data[-1]
    for step, x in zip(marks.customdata, marks.x):
        r = records[step]
        assert x == pytest.approx(1e3 * (r.start_time - t0 + r.duration_s))
    bars = [t for t in fig.data if t.type == "bar"]
    ends = sorted(b + w for t in bars for b, w in zip(t.base, t.x))
    assert ends[-1] == pytest.approx(1e3 * (records[-1].start_time - t0 + records[-1].duration_s))
    with pytest.raises(VizError, match="'tokens'"):
        timeline_figure(records, x="tokens")
