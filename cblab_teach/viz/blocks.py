"""The paged KV pool as a grid of blocks, and each request's block table.

Left: every block of the pool (``num_blocks`` cells, row by row). A block is
free (grey) or owned by a request (its colour); a request's last block, when
only partly filled, is drawn pale: those empty slots are the waste paging
keeps to at most one block per request. Right: the block tables, one row per
request, cell ``i`` naming the pool block that holds its tokens
``[i * block_size, (i + 1) * block_size)``.

With prefix caching one block can sit in several tables at once (shared by
reference, never copied). Such a block keeps the colour of its first owner and
gets a black outline, in the pool and in every table that points at it; its
hover lists all owners. A table row's hover also tells how many prompt tokens
the request found in the prefix cache when it was admitted.

Parallel sampling shares a prompt's blocks the same way, and a sequence about
to write into a shared, partly filled block first copies it (copy-on-write,
``record.copied_blocks``): at that step the new copy gets an orange outline, in
the pool and in the table of the sequence that owns it; its hover names the
block it was copied from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import Frame, block_owners, check_records, check_step, kv_lengths, prefix_hits, run_request_ids
from .animate import animated_figure
from .colors import FREE_COLOR, discrete_colorscale, lighten, request_color
from .errors import NotPagedError, VizError
from .labels import text as words
from .lang import resolve

if TYPE_CHECKING:
    from ..core.engine import StepRecord

FREE = 0  # code of a free block; request k owns codes 1 + 2k (full) and 2 + 2k (partly filled)
COPIED_COLOR = "#f07800"  # outline of a block copied on write at this step


def infer_block_size(records: Sequence[StepRecord]) -> int:
    """Slots per block: reserved slots divided by blocks in use, from any step that holds KV."""
    for r in records:
        blocks = {b for table in r.block_tables.values() for b in table}
        if blocks and r.kv.reserved_slots:
            return r.kv.reserved_slots // len(blocks)
    raise VizError("cannot infer block_size: no step holds any block; pass block_size=")


def block_fill(table: Sequence[int], length: int, block_size: int) -> list[int]:
    """Tokens held by each block of a table, for a request holding ``length`` tokens."""
    return [min(block_size, max(0, length - i * block_size)) for i in range(len(table))]


class BlockView:
    def __init__(
        self,
        records: Sequence[StepRecord],
        num_blocks: int | None = None,
        block_size: int | None = None,
        show_blocks: int | None = None,
        lang: str | None = None,
    ) -> None:
        self.lang = resolve(lang)
        self.records = check_records(records)
        if not any(r.block_tables for r in self.records):
            raise NotPagedError(
                "these records have no block tables (a dense KV run, or a static batch): "
                "run the engine with EngineConfig(kv_layout='paged') to see a block map"
            )
        self.block_size = block_size or infer_block_size(self.records)
        self.num_blocks = num_blocks or self.records[0].kv.total_slots // self.block_size
        for name, value in (("num_blocks", self.num_blocks), ("block_size", self.block_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise VizError(f"{name} must be an int >= 1, got {value!r}")
        highest = max((b for r in self.records for t in r.block_tables.values() for b in t), default=0)
        if highest >= self.num_blocks:
            raise VizError(f"block {highest} appears in a block table but num_blocks={self.num_blocks}")
        self.width = max(1, math.ceil(math.sqrt(self.num_blocks)))
        if show_blocks is None:
            show_blocks = self.num_blocks if self.num_blocks <= 256 else (highest + 1)
        shown_rows = math.ceil(max(1, min(show_blocks, self.num_blocks)) / self.width)
        self.shown = min(self.num_blocks, shown_rows * self.width)
        self.rows = shown_rows
        self.request_ids = run_request_ids(self.records)
        self.code_of = {rid: k for k, rid in enumerate(self.request_ids)}
        self.lengths = kv_lengths(self.records)
        self.table_width = max((len(t) for r in self.records for t in r.block_tables.values()), default=1) or 1
        self.hits = prefix_hits(self.records)
        self.trace_indices = [0, 1, 2, 3, 4, 5]

    def base(self) -> go.Figure:
        colors = [FREE_COLOR]
        for rid in self.request_ids:
            colors += [request_color(rid), lighten(request_color(rid))]
        common = dict(
            colorscale=discrete_colorscale(colors),
            zmin=-0.5,
            zmax=len(colors) - 0.5,
            showscale=False,
            xgap=2,
            ygap=2,
            hoverongaps=False,
            texttemplate="%{text}",
            textfont={"size": 9},
        )
        fig = make_subplots(
            rows=1,
            cols=2,
            column_widths=[0.55, 0.45],
            horizontal_spacing=0.08,
            subplot_titles=(words(self.lang, "pool_panel"), words(self.lang, "tables_panel")),
        )
        fig.add_trace(go.Heatmap(name="pool", hovertemplate="%{customdata}<extra></extra>", **common), 1, 1)
        fig.add_trace(go.Heatmap(name="tables", hovertemplate="%{customdata}<extra></extra>", **common), 1, 2)
        for what, color in (("shared", "black"), ("copied", COPIED_COLOR)):  # outlines: traces 2, 3 then 4, 5
            for col, name in ((1, f"{what} block"), (2, f"{what} (table)")):
                fig.add_trace(
                    go.Scatter(
                        name=name,
                        mode="markers",
                        showlegend=False,
                        marker={"symbol": "square-open", "size": 15, "color": color, "line": {"width": 2.5}},
                        hovertemplate="%{customdata}<extra></extra>",
                    ),
                    1,
                    col,
                )
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=1, col=1)
        fig.update_yaxes(autorange="reversed", showticklabels=False, showgrid=False, zeroline=False, row=1, col=1)
        fig.update_xaxes(
            title=words(self.lang, "table_index_axis"), showgrid=False, zeroline=False, dtick=1, row=1, col=2
        )
        fig.update_yaxes(autorange="reversed", type="category", showgrid=False, row=1, col=2)
        fig.update_layout(height=max(380, 22 * self.rows + 160), plot_bgcolor="white")
        return fig

    def pool_codes(self, step: int) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
        """``[rows, width]`` codes of the shown blocks (NaN past the pool), hover text, cell text."""
        record = self.records[step]
        codes = np.full(self.rows * self.width, np.nan)
        codes[: self.shown] = FREE
        hover = [f"block {b}: free" if b < self.shown else "" for b in range(self.rows * self.width)]
        lengths = self.lengths[step]
        owners = block_owners(record)
        for rid, table in record.block_tables.items():
            fills = block_fill(table, lengths.get(rid, len(table) * self.block_size), self.block_size)
            for block, fill in zip(table, fills):
                if block >= self.shown or codes[block] != FREE:
                    continue
                codes[block] = 1 + 2 * self.code_of[rid] + (fill < self.block_size)
                hover[block] = self.owner_text(block, owners[block], step) + f", {fill}/{self.block_size} slots"
        w = self.width
        text = [[str(b) if b < self.shown else "" for b in range(r * w, (r + 1) * w)] for r in range(self.rows)]
        hover_rows = [hover[r * w : (r + 1) * w] for r in range(self.rows)]
        return codes.reshape(self.rows, w), hover_rows, text

    def owner_text(self, block: int, rids: list, step: int) -> str:
        """``block 5: r0`` or ``block 5: shared by r0, r3 (prefix-cache hit for r3)``."""
        if len(rids) == 1:
            return f"block {block}: r{rids[0]}"
        reused = [f"r{rid}" for rid in rids if block in self.cached_blocks(step, rid)]
        note = f" (prefix-cache hit for {', '.join(reused)})" if reused else ""
        return f"block {block}: shared by {', '.join(f'r{rid}' for rid in rids)}{note}"

    def cached_blocks(self, step: int, rid) -> set[int]:
        """Blocks of ``rid``'s table that it found in the prefix cache at admission (its leading full blocks)."""
        n = self.hits[step].get(rid, 0) // self.block_size
        return set(self.records[step].block_tables.get(rid, [])[:n])

    def shared_markers(self, step: int) -> tuple[dict, dict]:
        """Outlines over shared blocks: pool cells ``(x=column, y=row)`` and table cells ``(x=index, y=label)``."""
        record = self.records[step]
        owners = block_owners(record)
        shared = sorted(b for b, rids in owners.items() if len(rids) > 1 and b < self.shown)
        pool = {
            "x": [b % self.width for b in shared],
            "y": [b // self.width for b in shared],
            "customdata": [self.owner_text(b, owners[b], step) for b in shared],
        }
        table = {"x": [], "y": [], "customdata": []}
        for rid, blocks in record.block_tables.items():
            for i, b in enumerate(blocks):
                if len(owners[b]) > 1:
                    table["x"].append(i)
                    table["y"].append(f"r{rid}")
                    table["customdata"].append(f"r{rid}[{i}] -> " + self.owner_text(b, owners[b], step))
        return pool, table

    def copied_markers(self, step: int) -> tuple[dict, dict]:
        """Outlines over the blocks copied on write at this step (``record.copied_blocks``), where the
        sequence that made the copy still holds it: pool cells and its table cells."""
        record = self.records[step]
        pool = {"x": [], "y": [], "customdata": []}
        table = {"x": [], "y": [], "customdata": []}
        for rid, pairs in getattr(record, "copied_blocks", {}).items():
            blocks = record.block_tables.get(rid, [])
            for old, new in pairs:
                if new not in blocks:  # the sequence finished this very step: its blocks are free again
                    continue
                text = f"block {new}: r{rid}'s copy of block {old} (copy-on-write: r{rid} writes into it)"
                if new < self.shown:
                    pool["x"].append(new % self.width)
                    pool["y"].append(new // self.width)
                    pool["customdata"].append(text)
                i = blocks.index(new)
                table["x"].append(i)
                table["y"].append(f"r{rid}")
                table["customdata"].append(f"r{rid}[{i}] -> {text}")
        return pool, table

    def table_codes(self, step: int) -> tuple[np.ndarray, list[str], list[list[str]], list[list[str]]]:
        record = self.records[step]
        rids = list(record.block_tables)
        codes = np.full((max(len(rids), 1), self.table_width), np.nan)
        text = [["" for _ in range(self.table_width)] for _ in range(max(len(rids), 1))]
        hover = [["" for _ in range(self.table_width)] for _ in range(max(len(rids), 1))]
        for row, rid in enumerate(rids):
            table = record.block_tables[rid]
            fills = block_fill(table, self.lengths[step].get(rid, len(table) * self.block_size), self.block_size)
            for i, (block, fill) in enumerate(zip(table, fills)):
                codes[row, i] = 1 + 2 * self.code_of[rid] + (fill < self.block_size)
                text[row][i] = str(block)
                lo = i * self.block_size
                hover[row][i] = f"r{rid} tokens {lo}..{lo + self.block_size - 1} -> block {block} ({fill} filled)"
        for row, rid in enumerate(rids):
            hit = self.hits[step].get(rid, 0)
            for i in range(min(len(record.block_tables[rid]), hit // self.block_size)):
                hover[row][i] += f"; prefix-cache hit: {hit} prompt tokens reused at admission"
        labels = [f"r{rid}" for rid in rids] or [words(self.lang, "no_tables")]
        return codes, labels, text, hover

    def frame(self, step: int) -> Frame:
        record = self.records[step]
        pool, pool_hover, pool_text = self.pool_codes(step)
        tables, labels, text, hover = self.table_codes(step)
        used = int(np.sum(pool[~np.isnan(pool)] != FREE))
        waste = record.kv.waste_slots
        title = words(
            self.lang, "blocks_step_title", step=record.step, used=used, num_blocks=self.num_blocks, waste=waste
        )
        pool_shared, table_shared = self.shared_markers(step)
        shared = sum(len(rids) > 1 for rids in block_owners(record).values())
        if shared:
            title += words(self.lang, "blocks_shared_title", shared=shared)
        pool_copied, table_copied = self.copied_markers(step)
        if table_copied["x"]:
            title += words(self.lang, "blocks_copied_title", copied=len(table_copied["x"]))
        return [
            {"z": pool, "text": pool_text, "customdata": pool_hover},
            {"z": tables, "y": labels, "text": text, "customdata": hover},
            pool_shared,
            table_shared,
            pool_copied,
            table_copied,
        ], {"title": {"text": title}}


def block_map_figure(
    records: Sequence[StepRecord],
    num_blocks: int | None = None,
    block_size: int | None = None,
    step: int | None = None,
    show_blocks: int | None = None,
    frame_ms: int = 500,
    lang: str | None = None,
) -> go.Figure:
    """Block pool and block tables, animated over the run (or one ``step``). Paged records only."""
    view = BlockView(records, num_blocks, block_size, show_blocks, lang)
    if step is None:
        return animated_figure(view, frame_ms)
    fig = view.base()
    data, layout = view.frame(check_step(view.records, step))
    for trace, update in zip(fig.data, data):
        trace.update(update)
    fig.update_layout(layout)
    return fig
