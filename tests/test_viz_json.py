"""Everything the visual layer sends to the browser is strict JSON: no NaN, no infinity.

A kernel packs widget messages and display data with ``allow_nan=False``; a NaN makes it print
"Message serialization failed" under the figure. These tests catch every message a widget sends
(construction and every step) and every figure's display bundle, and pack them the same way.
"""

from __future__ import annotations

import json

import ipywidgets
import plotly.io as pio
import pytest

from cblab_teach import Engine, EngineConfig, ModelConfig, TinyLM
from cblab_teach.plugins import AttentionRecorder
from cblab_teach.viz import (
    Playground,
    StepPlayer,
    attention_figure,
    block_map_figure,
    budget_figure,
    compare_timelines,
    mask_figure,
    timeline_figure,
)
from cblab_teach.workloads import make_workload


def strict(payload) -> None:
    json.dumps(payload, allow_nan=False, default=repr)  # raises ValueError on NaN / inf, as the kernel's packer


@pytest.fixture
def sent(monkeypatch) -> list[dict]:
    """Every message any widget sends (the dict the kernel would pack), recorded instead of sent."""
    messages: list[dict] = []
    monkeypatch.setattr(ipywidgets.Widget, "_send", lambda self, msg, buffers=None: messages.append(msg))
    return messages


@pytest.fixture(scope="module")
def paged_run():
    """A paged run with a pool smaller than the largest table width, so the block map has gaps to draw."""
    model = TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    recorder = AttentionRecorder()
    work = make_workload(5, (3, 14), (2, 7), vocab_size=64, seed=4)
    config = EngineConfig(max_tokens_per_step=12, prefill_chunk_size=5, kv_layout="paged", block_size=4, num_blocks=13)
    engine = Engine(model, config, plugins=[recorder])
    engine.generate(work.prompts, work.max_new_tokens)
    return engine, recorder


@pytest.mark.parametrize("view", ["budget", "mask", "blocks"])
def test_step_player_messages_are_strict_json(view, paged_run, sent) -> None:
    engine, _ = paged_run
    player = StepPlayer(engine.records, view=view)
    for step in range(len(engine.records)):
        player.show_step(step)
    assert sent, "the player sent no messages: the recorder did not see them, so this test proves nothing"
    for msg in sent:
        strict(msg)
    strict(player.figure.get_state())


def test_block_view_has_gaps_and_sends_them_as_null(paged_run, sent) -> None:
    engine, _ = paged_run
    player = StepPlayer(engine.records, view="blocks")
    pool = player.figure.data[0].z
    assert any(v is None for row in pool for v in row), "no gap in the pool grid: pick a pool that is not a square"
    strict(player.figure.get_state())


def test_playground_messages_are_strict_json(sent) -> None:
    pg = Playground(num_requests=4, prompt_len=(3, 12), new_tokens=(2, 5), num_blocks=9, block_size=4)
    pg.controls["preemption"].value = True
    assert sent
    for msg in sent:
        strict(msg)


def test_figures_display_bundles_are_strict_json(paged_run) -> None:
    engine, recorder = paged_run
    step = next(s for s, _layer in recorder.maps)
    figures = [
        attention_figure(recorder, step=step),
        block_map_figure(engine.records),
        budget_figure(engine.records),
        mask_figure(engine.records),
        timeline_figure(engine.records),
        compare_timelines(engine.records, engine.records),
    ]
    for fig in figures:
        strict(json.loads(pio.to_json(fig, validate=False)))
        strict(fig.to_plotly_json())
