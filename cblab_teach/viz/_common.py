"""Shared reading of StepRecords: argument checks, request order, KV lengths. No scheduling here."""

from __future__ import annotations

import base64
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import plotly.graph_objects as go

from .errors import NoRecordsError, StepOutOfRangeError, VizError

if TYPE_CHECKING:
    from ..core.engine import StepRecord

Frame = tuple[list[dict], dict]  # (trace updates in view order, layout updates)


class StepView(Protocol):
    """A view drawn one step at a time: a base figure, then per-step updates of its traces."""

    records: Sequence[StepRecord]
    trace_indices: list[int]
    lang: str  # "en" or "zh": the words of its titles, axes, legend and controls

    def base(self) -> go.Figure: ...

    def frame(self, step: int) -> Frame: ...


def check_records(records: Sequence[StepRecord]) -> list[StepRecord]:
    records = list(records)
    if not records:
        raise NoRecordsError("no StepRecords to draw: run the engine first (engine.run() returns them)")
    return records


def check_step(records: Sequence[StepRecord], step: int) -> int:
    """A valid index into ``records`` (negative counts from the end, like a list)."""
    n = len(records)
    if not isinstance(step, numbers.Integral) or isinstance(step, bool) or not -n <= step < n:
        raise StepOutOfRangeError(f"step {step!r} is out of range: this run has {n} steps (0..{n - 1})")
    return int(step) % n


def run_request_ids(records: Sequence[StepRecord]) -> list:
    """Every request id seen in the run, in order of first appearance (waiting, then scheduled)."""
    seen: dict = {}
    for r in records:
        for rid in r.waiting:
            seen.setdefault(rid, None)
        for c in r.plan.chunks:
            seen.setdefault(c.request_id, None)
        for rid in list(r.running) + list(r.finished) + list(r.block_tables):
            seen.setdefault(rid, None)
    return list(seen)


def kv_lengths(records: Sequence[StepRecord]) -> list[dict]:
    """Per step, tokens each request holds in the KV cache after the step.

    A chunk ``[start, end)`` leaves the request with ``end`` tokens of KV; a request
    keeps that until it is scheduled again, finishes, or loses its KV (preemption).
    """
    lengths: dict = {}
    out = []
    for r in records:
        for c in r.plan.chunks:
            lengths[c.request_id] = kept_end(r, c)
        holding = set(r.block_tables) if r.block_tables else set(r.running)
        lengths = {rid: n for rid, n in lengths.items() if rid in holding}
        out.append(dict(lengths))
    return out


def kept_end(record: StepRecord, chunk) -> int:
    """KV length a chunk leaves behind: its end, less the speculative drafts that were rejected.

    A verified decode chunk ``[start, start + 1 + k)`` keeps ``start + len(new_tokens)`` tokens
    (the accepted drafts plus the target's own token); the engine truncates the rest.
    """
    drafts = getattr(chunk, "drafts", ())
    if drafts and chunk.request_id in record.new_tokens:
        return chunk.start + len(record.new_tokens[chunk.request_id])
    return chunk.end


PREEMPTION_KINDS = ("recompute", "swap")


def preemption_events(records: Sequence[StepRecord], kind: str | None = None) -> list[tuple[int, object, int]]:
    """``[(step index, request id, tokens of KV freed)]`` for every preemption in the run.

    The tokens freed are what the request held after the step before. A victim named in ``record.swapped``
    (``preemption="swap"``) parked them in the host pool and gets them back; any other victim must compute
    them again. ``kind="recompute"`` or ``kind="swap"`` keeps only those victims (None: all of them).
    """
    if kind not in (None, *PREEMPTION_KINDS):
        raise VizError(f"kind must be None or one of {PREEMPTION_KINDS}, got {kind!r}")
    lengths = kv_lengths(records)
    events = []
    for s, r in enumerate(records):
        swapped = set(getattr(r, "swapped", ()))
        for rid in getattr(r.plan, "preempted", ()):
            if kind is None or (kind == "swap") == (rid in swapped):
                events.append((s, rid, lengths[s - 1].get(rid, 0) if s else 0))
    return events


def swap_in_events(records: Sequence[StepRecord]) -> list[tuple[int, object, int]]:
    """``[(step index, request id, tokens copied back)]``: the admission that follows each swap-out.

    A swapped victim's K/V stays in the host pool until the request is admitted again; that admission
    copies it back, so the request resumes with the tokens it had (no recompute).
    """
    out_at: dict[int, list] = {}
    for s, rid, n in preemption_events(records, "swap"):
        out_at.setdefault(s, []).append((rid, n))
    parked: dict = {}
    events = []
    for s, r in enumerate(records):
        parked.update(out_at.get(s, ()))  # the engine preempts before it admits, within a step
        for rid in r.plan.admitted:
            if rid in parked:
                events.append((s, rid, parked.pop(rid)))
    return events


def recompute_marks(records: Sequence[StepRecord]) -> list[dict]:
    """Per step, ``{request id: tokens of its prefill chunk that recompute KV lost to preemption}``.

    After a preemption that threw away ``N`` tokens, the positions ``[0, N)`` are recomputed; a later prefill
    chunk ``[start, end)`` recomputes ``max(0, min(end, N) - start)`` of its tokens. A swapped victim lost
    nothing: it resumes at the tokens it had, and gets no marks.
    """
    lost: dict = {}
    by_step: dict[int, list] = {}
    for s, rid, n in preemption_events(records, "recompute"):  # a swapped victim keeps its K/V
        by_step.setdefault(s, []).append((rid, n))
    out = []
    for s, r in enumerate(records):
        for rid, n in by_step.get(s, ()):
            lost[rid] = max(lost.get(rid, 0), n)
        marks = {}
        for c in r.plan.chunks:
            if c.kind == "prefill" and c.start < lost.get(c.request_id, 0):
                marks[c.request_id] = min(c.end, lost[c.request_id]) - c.start
        out.append(marks)
    return out


def block_owners(record: StepRecord) -> dict[int, list]:
    """``{block id: [request ids whose table holds it]}``, in table order."""
    owners: dict[int, list] = {}
    for rid, table in record.block_tables.items():
        for block in table:
            owners.setdefault(block, []).append(rid)
    return owners


def shared_blocks(record: StepRecord) -> dict[int, list]:
    """Blocks owned by two or more requests at this step (prefix caching shares them by reference)."""
    return {b: rids for b, rids in block_owners(record).items() if len(rids) > 1}


def prefix_hits(records: Sequence[StepRecord]) -> list[dict]:
    """Per step, ``{request id: prompt tokens it reused from the prefix cache at its latest admission}``.

    Only requests holding KV after the step are listed; a request re-admitted after preemption gets its new count.
    """
    hits: dict = {}
    out = []
    for r in records:
        cached = getattr(r.plan, "cached_tokens", {})
        for rid in r.plan.admitted:
            hits[rid] = cached.get(rid, 0)
        holding = set(r.block_tables) if r.block_tables else set(r.running)
        out.append({rid: n for rid, n in hits.items() if rid in holding and n})
    return out


def label(rid) -> str:
    return f"r{rid}"


_DTYPES = {"u1": np.uint8, "u2": np.uint16, "i4": np.int32, "f4": np.float32, "f8": np.float64}


def typed_array(a: np.ndarray) -> dict:
    """plotly.js's binary array spec: a 2-D heatmap travels as one base64 buffer, not a nested list.

    A widget would otherwise turn a large ``z`` into lists of Python numbers on every slider move.
    """
    code = {v: k for k, v in _DTYPES.items()}[a.dtype.type]
    spec = {"dtype": code, "bdata": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")}
    if a.ndim > 1:
        spec["shape"] = ", ".join(str(n) for n in a.shape)
    return spec


def gaps_as_none(a: np.ndarray) -> list:
    """Nested lists with ``None`` where ``a`` is NaN: plotly draws a gap, and the JSON stays strict.

    A widget's messages go through strict JSON (no NaN, no infinity); a NaN sent to a FigureWidget makes
    the kernel print "Message serialization failed" under the figure.
    """
    return np.where(np.isfinite(a), a, None).tolist()


def decode_array(value) -> np.ndarray:
    """Back from :func:`typed_array` (or any array-like) to numpy, so tests can read a figure's data."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=_DTYPES[value["dtype"]])
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.asarray(value)
