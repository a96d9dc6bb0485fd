"""The course's five animated or legend-carrying figures, built on small runs, for the layout tests.

Shared by ``test_viz_layout.py`` (the figure's JSON) and ``browser/test_figure_layout.py``
(the drawn boxes in Chromium). The runs are shaped like the notebooks': mixed decode and
prefill steps (so the budget bar has every kind), a paged pool, a static baseline, and
preemptions (so the timeline's legend has every entry).
"""

from __future__ import annotations

from collections.abc import Callable

import plotly.graph_objects as go

from cblab_teach import Engine, EngineConfig, ModelConfig, StaticBatchingEngine, TinyLM
from cblab_teach.viz import block_map_figure, budget_figure, compare_timelines, mask_figure, timeline_figure
from cblab_teach.workloads import make_workload

VIEWPORTS = ((1280, 800), (1024, 768))  # a laptop, and a projector


def _runs() -> dict[str, list]:
    model = TinyLM(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0)
    work = make_workload(10, prompt_len=(4, 30), new_tokens=(2, 12), seed=1)
    engine = Engine(model, EngineConfig(max_tokens_per_step=16, prefill_chunk_size=8, kv_layout="paged"))
    engine.generate(work.prompts, work.max_new_tokens)
    static = StaticBatchingEngine(model, batch_size=4)
    static.generate(work.prompts, work.max_new_tokens)
    small_pool = EngineConfig(
        max_tokens_per_step=32, prefill_chunk_size=8, block_size=4, num_blocks=16, preemption="swap", num_host_blocks=8
    )
    cramped = Engine(model, small_pool)  # victims swapped out and back in: every timeline legend entry
    cramped.generate(work.prompts, work.max_new_tokens)
    return {"continuous": engine.records, "static": static.records, "cramped": cramped.records}


def figures() -> dict[str, Callable[[], go.Figure]]:
    """name -> a function building the figure (the runs are made once, on first use)."""
    runs: dict[str, list] = {}

    def run(name: str) -> list:
        if not runs:
            runs.update(_runs())
        return runs[name]

    return {
        "budget": lambda: budget_figure(run("continuous")),
        "mask": lambda: mask_figure(run("continuous")),
        "blocks": lambda: block_map_figure(run("continuous")),
        "timeline": lambda: timeline_figure(
            run("cramped"), title="16 blocks, 8 host blocks: victims swapped out and back in"
        ),
        "comparison": lambda: compare_timelines(run("continuous"), run("static")),
    }
