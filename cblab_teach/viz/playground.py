"""A live playground: move a slider, the engine re-runs a small workload, every view redraws.

The engine is the real one (a very small TinyLM), so what you see is what the
scheduler actually did with those settings. Re-running is synchronous: setting
``playground.controls[name].value`` from Python re-runs and redraws before it returns.

The checkboxes switch on the advanced serving features. Shrink ``num_blocks``
with ``preemption`` on to watch requests lose their KV (red crosses in the
timeline) and recompute it; give the prompts a ``shared prefix`` with
``prefix caching`` on to see blocks shared by several tables; turn on
``speculative (n-gram)`` to see draft tokens in the budget bars.
``kv_slots`` and ``num_blocks`` are two views of one pool size
(``kv_slots = num_blocks * block_size``): moving one moves the other.
"""

from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from ..core.config import EngineConfig
from ..core.engine import Engine, StepRecord
from ..errors import CBLabError
from ..model.config import ModelConfig
from ..model.tiny_lm import TinyLM
from ..workloads import make_workload
from .animate import replace_figure
from .budget import budget_overview
from .labels import text
from .lang import resolve
from .players import StepPlayer
from .timeline import timeline_figure


def _int(description: str, value: int, lo: int, hi: int) -> widgets.IntSlider:
    return widgets.IntSlider(value=value, min=lo, max=hi, description=description, continuous_update=False,
                             style={"description_width": "150px"}, layout={"width": "420px"})  # fmt: skip


def _check(description: str, value: bool) -> widgets.Checkbox:
    return widgets.Checkbox(value=value, description=description, indent=False, layout={"width": "240px"})


def _range(description: str, value: tuple[int, int], lo: int, hi: int) -> widgets.IntRangeSlider:
    return widgets.IntRangeSlider(value=value, min=lo, max=hi, description=description, continuous_update=False,
                                  style={"description_width": "150px"}, layout={"width": "420px"})  # fmt: skip


class Playground:
    """Sliders for the scheduler, the KV pool and the workload; a budget overview, a timeline and a block map."""

    def __init__(
        self,
        max_tokens_per_step: int = 32,
        prefill_chunk_size: int = 16,
        block_size: int = 8,
        kv_slots: int = 512,
        num_requests: int = 8,
        prompt_len: tuple[int, int] = (4, 32),
        new_tokens: tuple[int, int] = (2, 16),
        seed: int = 0,
        num_blocks: int | None = None,
        shared_prefix: int = 0,
        preemption: bool = False,
        prefix_caching: bool = False,
        speculative: bool = False,
        lang: str | None = None,
    ) -> None:
        self.lang = lang = resolve(lang)
        if num_blocks is not None:
            kv_slots = num_blocks * block_size
        self.model = TinyLM(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=seed)
        self.controls: dict[str, widgets.ValueWidget] = {
            "max_tokens_per_step": _int("max_tokens_per_step", max_tokens_per_step, 1, 256),
            "prefill_chunk_size": _int("prefill_chunk_size", prefill_chunk_size, 1, 128),
            "block_size": _int("block_size", block_size, 1, 64),
            "kv_slots": _int(text(lang, "kv_slots"), kv_slots, 1, 64 * 512),
            "num_blocks": _int("num_blocks", max(1, kv_slots // block_size), 1, 1024),
            "num_requests": _int(text(lang, "num_requests"), num_requests, 1, 64),
            "prompt_len": _range(text(lang, "prompt_len"), prompt_len, 1, 128),
            "new_tokens": _range(text(lang, "new_tokens"), new_tokens, 1, 128),
            "seed": _int(text(lang, "seed"), seed, 0, 99),
            "shared_prefix": _int(text(lang, "shared_prefix"), shared_prefix, 0, 64),
            "preemption": _check(text(lang, "preemption"), preemption),
            "prefix_caching": _check(text(lang, "prefix_caching"), prefix_caching),
            "speculative": _check(text(lang, "speculative"), speculative),
        }
        self._syncing = False
        self.status = widgets.HTML()
        self.records: list[StepRecord] = []
        self.error: CBLabError | None = None
        self.overview = go.FigureWidget()
        self.timeline = go.FigureWidget()
        self.rerun()
        self.blocks = StepPlayer(self.records or self._placeholder(), view="blocks", num_blocks=self._num_blocks(),
                                 block_size=self.controls["block_size"].value, lang=lang)  # fmt: skip
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        c = list(self.controls.values())
        self.widget = widgets.VBox(
            [
                widgets.HBox([widgets.VBox(c[:5]), widgets.VBox(c[5:10]), widgets.VBox(c[10:])]),
                self.status,
                self.overview,
                self.timeline,
                self.blocks.widget,
            ]
        )

    def _placeholder(self) -> list[StepRecord]:
        raise CBLabError(f"the first run failed: {self.error}")

    def _num_blocks(self) -> int:
        return self.controls["num_blocks"].value

    def settings(self) -> dict:
        return {name: c.value for name, c in self.controls.items()}

    def run_engine(self) -> list[StepRecord]:
        """Run the workload the sliders describe; returns the records (raises CBLabError on bad settings)."""
        s = self.settings()
        config = EngineConfig(
            max_tokens_per_step=s["max_tokens_per_step"],
            prefill_chunk_size=s["prefill_chunk_size"],
            block_size=s["block_size"],
            num_blocks=self._num_blocks(),
            preemption=s["preemption"],
            enable_prefix_caching=s["prefix_caching"],
            speculative="ngram" if s["speculative"] else None,
        )
        vocab = self.model.config.vocab_size
        work = make_workload(s["num_requests"], tuple(s["prompt_len"]), tuple(s["new_tokens"]),
                             vocab_size=vocab, seed=s["seed"])  # fmt: skip
        prefix = [(7 * i + 3) % vocab for i in range(s["shared_prefix"])]  # a "system prompt" every request starts with
        engine = Engine(self.model, config)
        for prompt, n in zip(work.prompts, work.max_new_tokens):
            engine.add_request(prefix + prompt, n)
        self.engine = engine
        return engine.run()

    def rerun(self) -> None:
        """Re-run and redraw every view in place; a bad setting shows its error and keeps the last drawing."""
        try:
            records = self.run_engine()
        except CBLabError as e:
            self.error = e
            self.status.value = f"<b style='color:#b00'>{type(e).__name__}:</b> {e}"
            return
        self.error = None
        self.records = records
        tokens = sum(r.plan.used for r in records)
        budget = sum(r.plan.budget for r in records)
        stats = self.engine.stats
        self.status.value = text(
            self.lang,
            "playground_status",
            steps=len(records),
            tokens=tokens,
            use=100 * tokens / max(budget, 1),
            peak=max(r.kv.reserved_slots for r in records),
            preemptions=stats.preemptions,
            recomputed=stats.recomputed_tokens,
            hits=stats.prefix_hit_tokens,
            accepted=stats.accepted_tokens,
            drafts=stats.draft_tokens,
        )
        replace_figure(self.overview, budget_overview(records, self.lang))
        replace_figure(self.timeline, timeline_figure(records, lang=self.lang))
        if hasattr(self, "blocks"):
            self.blocks.num_blocks = self._num_blocks()
            self.blocks.block_size = self.controls["block_size"].value
            self.blocks.set_records(records)

    def _on_change(self, change: dict) -> None:
        if self._syncing:
            return
        self._sync_pool_size(change["owner"])
        self.rerun()

    def _sync_pool_size(self, changed: widgets.ValueWidget) -> None:
        """Keep ``kv_slots == num_blocks * block_size``: num_blocks follows kv_slots and block_size, and back."""
        c = self.controls
        self._syncing = True
        try:
            if changed is c["num_blocks"]:
                c["kv_slots"].value = c["num_blocks"].value * c["block_size"].value
            elif changed is c["kv_slots"] or changed is c["block_size"]:
                c["num_blocks"].value = max(1, c["kv_slots"].value // c["block_size"].value)
                c["kv_slots"].value = c["num_blocks"].value * c["block_size"].value  # what the pool really holds
        finally:
            self._syncing = False

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
