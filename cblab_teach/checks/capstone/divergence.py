"""When outputs differ: find the first step whose batch is wrong, and draw its mask beside the right one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.batch_builder import PlanLayout, ragged_causal_mask
from .run import Run, learner_mask


@dataclass
class Divergence:
    step: int
    request_ids: list[int]
    layout: PlanLayout
    yours: torch.Tensor  # [N, M] the engine's mask
    reference: torch.Tensor  # [N, M] the library's ragged causal mask of the same batch
    what: str
    hint: str
    same_plan_as_engine: bool

    def text(self, limit: int = 40) -> str:
        """Both masks as 0/1 grids, side by side (only when small enough to read)."""
        n, m = self.yours.shape
        if m > limit or n > limit:
            return f"(masks are {n} x {m}; show_divergence() draws them)"
        rows = ["yours".ljust(m + 3) + "reference"]
        for a, b in zip(self.yours.int().tolist(), self.reference.int().tolist()):
            rows.append("".join(map(str, a)) + "   " + "".join(map(str, b)))
        return "\n".join(rows)


def layout_of(batch) -> PlanLayout:
    return PlanLayout(
        batch.positions,
        batch.seq_ids,
        batch.key_positions,
        batch.key_seq_ids,
        batch.cu_seqlens,
        batch.cached_lens,
        batch.context_lens,
    )


def find_divergence(run: Run, full_ids: dict[int, list[int]], reference_run: Run | None) -> Divergence | None:
    """The first step where a fed token or a mask row is wrong; ``full_ids``: the right prompt + output per id."""
    for step, seen in enumerate(run.steps):
        for batch in seen.batches:
            found = _check_batch(run.engine, batch, full_ids)
            if found is None:
                continue
            what, hint = found
            ref_plan = reference_run.steps[step].plan if reference_run and step < len(reference_run.steps) else None
            same = ref_plan is not None and _chunks(ref_plan) == _chunks(seen.plan)
            return Divergence(
                step,
                list(batch.request_ids),
                layout_of(batch),
                learner_mask(run.engine, batch).bool(),
                ragged_causal_mask(batch.seq_ids, batch.positions, batch.key_seq_ids, batch.key_positions),
                what,
                hint,
                same,
            )
    return None


def _chunks(plan) -> list[tuple]:
    return [(c.request_id, c.start, c.length) for c in getattr(plan, "chunks", [])]


def _check_batch(engine, batch, full_ids: dict[int, list[int]]) -> tuple[str, str] | None:
    rids = list(batch.request_ids)
    seq, pos = batch.seq_ids.tolist(), batch.positions.tolist()
    for row, (s, p) in enumerate(zip(seq, pos)):
        rid, token = rids[s], int(batch.token_ids[row])
        full = full_ids.get(rid, [])
        if p < len(full) and token != full[p]:
            again = p >= 1 and token == full[p - 1]
            return (
                f"request {rid} fed token {token} at position {p}; the right token there is {full[p]}",
                "the previous token is fed again (at the first decode: the last prompt token, whose K/V is then "
                "stored twice); a decode step feeds the token sampled last step"
                if again
                else "the batch must carry each request's own tokens all_ids[start:end]",
            )
    mine = learner_mask(engine, batch).bool()
    right = ragged_causal_mask(batch.seq_ids, batch.positions, batch.key_seq_ids, batch.key_positions)
    if tuple(mine.shape) != tuple(right.shape):
        return f"mask of shape {list(mine.shape)}, the batch has {list(right.shape)}", "the mask is [queries, keys]"
    if torch.equal(mine, right):
        return None
    kseq, kpos = batch.key_seq_ids.tolist(), batch.key_positions.tolist()
    q_lens = batch.query_lens.tolist()
    missing, extra = (right & ~mine), (mine & ~right)
    own_missing = [(i, j) for i, j in missing.nonzero().tolist() if kpos[j] == pos[i]]
    rows_own = {i for i, _ in own_missing}
    first = int((missing | extra).any(dim=1).nonzero()[0])
    where = f"query r{rids[seq[first]]}·q{pos[first]}"
    if extra.any():
        i, j = extra.nonzero()[0].tolist()
        if kseq[j] != seq[i]:
            return f"{where} sees a key of request {rids[kseq[j]]}", (
                "requests see each other: a query may only read keys of its own request (compare seq ids)"
            )
        return f"{where} sees the future key at position {kpos[j]}", "causality: key position <= query position"
    if missing.sum() == len(own_missing):
        decode_rows = {i for i in range(len(seq)) if q_lens[seq[i]] == 1}
        if rows_own and rows_own <= decode_rows and len(rows_own) < len(seq):
            return f"{where} does not see its own key", (
                "a decode query skips its own key: the token fed this step is written to the cache before "
                "attention, and its query must see it (key position == query position)"
            )
        return f"{where} does not see its own key", (
            "`<` instead of `<=` in the mask: a query must see the key at its own position (pos(j) <= pos(i))"
        )
    return f"{where} misses earlier keys of its own request", (
        "a later prefill chunk or a decode must see the request's whole cached prefix, not only this step's keys"
    )


def divergence_figure(d: Divergence):
    """Your mask and the reference mask of the same step, side by side, coloured like the course's mask view."""
    from plotly.subplots import make_subplots

    from ...viz.colors import discrete_colorscale, lighten, request_color
    from ...viz.mask import axis_labels, mask_codes

    code_of = {rid: k for k, rid in enumerate(d.request_ids)}
    colors = ["#ffffff"]
    for rid in d.request_ids:
        colors += [request_color(rid), lighten(request_color(rid))]
    queries, keys = axis_labels(d.layout, d.request_ids)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("your mask", "reference mask (pos(j) <= pos(i))"), horizontal_spacing=0.08
    )
    for col, mask in ((1, d.yours), (2, d.reference)):
        drawn = _with_mask(d.layout, mask)
        fig.add_heatmap(
            z=mask_codes(drawn, d.request_ids, code_of),
            x=keys,
            y=queries,
            row=1,
            col=col,
            colorscale=discrete_colorscale(colors),
            zmin=-0.5,
            zmax=len(colors) - 0.5,
            showscale=False,
            xgap=1,
            ygap=1,
            hovertemplate="query %{y}<br>key %{x}<extra></extra>",
        )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", showticklabels=len(keys) <= 48)
    fig.update_layout(height=480, title=f"step {d.step}: {d.what}", plot_bgcolor="white")
    return fig


class _Drawn(PlanLayout):
    """A layout whose mask is given (the learner's), not recomputed from positions."""

    given: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:  # type: ignore[override]
        return self.given


def _with_mask(layout: PlanLayout, mask: torch.Tensor) -> PlanLayout:
    drawn = _Drawn(**vars(layout))
    drawn.given = mask
    return drawn
