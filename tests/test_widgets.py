"""Widgets, driven from Python: moving a slider redraws the figure with exactly that step's data."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from cblab_teach import Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.core.batch_builder import plan_layout
from cblab_teach.viz import Playground, StepOutOfRangeError, StepPlayer, UnknownViewError
from cblab_teach.viz._common import decode_array
from cblab_teach.viz.mask import MASKED
from cblab_teach.workloads import make_workload


@pytest.fixture(scope="module")
def records():
    model = TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    work = make_workload(6, (3, 15), (1, 8), vocab_size=64, seed=2)
    engine = Engine(model, EngineConfig(max_tokens_per_step=16, prefill_chunk_size=5, block_size=4, num_blocks=40))
    engine.generate(work.prompts, work.max_new_tokens)
    assert len(engine.records) > 6
    return engine.records


def shown_tokens(figure) -> dict:
    out: dict = defaultdict(int)
    for trace in figure.data[:3]:
        for (name, kind, _n, _), x in zip(trace.customdata, trace.x):
            if kind != "unused":
                out[(name, kind)] += x
    return dict(out)


def scheduled(record) -> dict:
    out: dict = defaultdict(int)
    for c in record.plan.chunks:
        out[(f"r{c.request_id}", c.kind)] += c.length
    return dict(out)


def test_budget_player_slider_shows_that_step(records):
    player = StepPlayer(records, view="budget")
    figure = player.figure
    assert shown_tokens(figure) == scheduled(records[0])
    for step in (4, 1, len(records) - 1):
        player.slider.value = step
        assert player.figure is figure and player.step == step
        assert shown_tokens(figure) == scheduled(records[step])
        assert figure.layout.title.text.startswith(f"step {records[step].step}:")
    assert scheduled(records[1]) != scheduled(records[4]), "pick steps that differ, or the test proves nothing"


def test_mask_player_slider_shows_that_steps_mask(records):
    player = StepPlayer(records, view="mask")
    for step in (3, 0, 5):
        player.slider.value = step
        z = decode_array(player.figure.data[0].z)
        assert np.array_equal(z != MASKED, plan_layout(records[step].plan).mask.numpy())


def test_block_player_show_step_moves_slider(records):
    player = StepPlayer(records, view="blocks", num_blocks=40, block_size=4)
    player.show_step(-1)
    last = records[-1]
    assert player.slider.value == len(records) - 1
    tables = {y: [t for t in row if t] for y, row in zip(player.figure.data[1].y, player.figure.data[1].text)}
    expected = {f"r{r}": [str(b) for b in t] for r, t in last.block_tables.items()}
    assert tables == (expected or {"(none)": []})
    player.slider.value = 2
    tables = {y: [t for t in row if t] for y, row in zip(player.figure.data[1].y, player.figure.data[1].text)}
    assert tables == {f"r{r}": [str(b) for b in t] for r, t in records[2].block_tables.items()}


def test_player_rejects_bad_arguments(records):
    with pytest.raises(UnknownViewError, match="'heatmap'"):
        StepPlayer(records, view="heatmap")
    player = StepPlayer(records)
    with pytest.raises(StepOutOfRangeError, match=str(len(records))):
        player.show_step(len(records))
    assert player.slider.max == len(records) - 1 and player.play.max == len(records) - 1


def test_playground_rerun_redraws(records):
    pg = Playground(max_tokens_per_step=24, num_requests=5, prompt_len=(4, 20), new_tokens=(2, 6))
    overview, timeline = pg.overview, pg.timeline
    pg.controls["max_tokens_per_step"].value = 7
    assert {r.plan.budget for r in pg.records} == {7}
    assert all(r.plan.used <= 7 for r in pg.records)
    assert pg.overview is overview and pg.timeline is timeline
    assert list(overview.data[3].y) == [7] * len(pg.records)
    drawn: dict = defaultdict(int)
    for trace in overview.data[:2]:
        for _name, _kind, n, step in trace.customdata:
            drawn[step] += n
    assert dict(drawn) == {r.step: r.plan.used for r in pg.records if r.plan.used}
    pg.controls["num_requests"].value = 3
    labels = {y for t in timeline.data for y in (t.y or ())}
    assert labels == {"r0", "r1", "r2"}
    pg.controls["prefill_chunk_size"].value = 2
    assert max(c.length for r in pg.records for c in r.plan.chunks if c.kind == "prefill") == 2
    pg.controls["block_size"].value = 2
    pg.blocks.slider.value = 1
    tables = {y: [t for t in row if t] for y, row in zip(pg.blocks.figure.data[1].y, pg.blocks.figure.data[1].text)}
    assert tables == {f"r{r}": [str(b) for b in t] for r, t in pg.records[1].block_tables.items()}


def test_playground_bad_setting_reports_and_keeps_last_run():
    pg = Playground(num_requests=3, prompt_len=(10, 20), new_tokens=(4, 8))
    before = pg.records
    pg.controls["kv_slots"].value = 16  # smaller than one request
    assert pg.error is not None and "CapacityError" in pg.status.value
    assert pg.records is before
    pg.controls["kv_slots"].value = 512
    assert pg.error is None and pg.records is not before
