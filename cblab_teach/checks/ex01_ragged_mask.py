"""Exercise 1: the ragged causal mask, ``mask[i, j] = seq(i) == seq(j) and pos(j) <= pos(i)``.

Cases come from real step plans (via :func:`plan_layout`): decode rows that see
a long cached prefix, prefill chunks that start mid-prompt, several requests
side by side. The reference is :func:`cblab_teach.core.batch_builder.ragged_causal_mask`.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from ..core.batch_builder import plan_layout, ragged_causal_mask
from ..core.scheduler import ScheduledChunk, StepPlan
from ._base import Case, Exercise, Mismatch


def layout_inputs(chunks: list[tuple[int, int, str]]) -> dict[str, Any]:
    """Inputs of the mask for a step whose chunks are ``(start, length, kind)``."""
    plan = StepPlan(budget=sum(n for _, n, _ in chunks))
    plan.chunks = [ScheduledChunk(i, s, n, k, True) for i, (s, n, k) in enumerate(chunks)]
    lay = plan_layout(plan)
    return {
        "seq_ids": lay.seq_ids,
        "positions": lay.positions,
        "key_seq_ids": lay.key_seq_ids,
        "key_positions": lay.key_positions,
    }


class RaggedMask(Exercise):
    name = "ex01_ragged_mask"
    title = "The ragged causal mask"
    entry = "ragged_mask"
    course = "04_ragged_batching_mask"
    hint = "compare seq_ids[:, None] with key_seq_ids[None, :], and key_positions[None, :] with positions[:, None]"

    @property
    def reference(self):
        return ragged_causal_mask

    def fixed_cases(self) -> list[Case]:
        return [
            Case("one prompt, prefilled at once", layout_inputs([(0, 4, "prefill")])),
            Case("two prompts side by side", layout_inputs([(0, 3, "prefill"), (0, 2, "prefill")])),
            Case("a decode row over its cached prefix", layout_inputs([(5, 1, "decode")])),
            Case("decode + a later prefill chunk", layout_inputs([(3, 1, "decode"), (4, 3, "prefill")])),
            Case(
                "three requests, mixed",
                layout_inputs([(6, 1, "decode"), (2, 1, "decode"), (0, 4, "prefill")]),
            ),
        ]

    def random_case(self, rng: random.Random) -> dict[str, Any]:
        chunks = []
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.5:
                chunks.append((rng.randint(1, 9), 1, "decode"))
            else:
                chunks.append((rng.choice([0, 0, rng.randint(1, 8)]), rng.randint(1, 6), "prefill"))
        return layout_inputs(chunks)

    def judge(self, learner, case: Case) -> Mismatch | None:
        expected = self.reference(**case.inputs)
        inputs = {k: v.clone() for k, v in case.inputs.items()}
        got = learner(**inputs)
        if not isinstance(got, torch.Tensor):
            return Mismatch(expected, got, f"return a torch.Tensor, not {type(got).__name__}")
        if tuple(got.shape) != tuple(expected.shape):
            return Mismatch(
                f"shape {list(expected.shape)} (queries x keys)",
                f"shape {list(got.shape)}",
                "one row per query token (len(seq_ids)), one column per key (len(key_seq_ids))",
            )
        if got.dtype != torch.bool:
            return Mismatch(
                "dtype torch.bool", f"dtype {got.dtype}", "the mask is a yes/no table: return a bool tensor"
            )
        if torch.equal(got, expected):
            return None
        return Mismatch(expected, got, _diagnose(got, expected, case.inputs))


def _diagnose(got: torch.Tensor, expected: torch.Tensor, inputs: dict[str, torch.Tensor]) -> str:
    """Name the mistake from the first wrong entry."""
    i, j = (got != expected).nonzero()[0].tolist()
    q_seq, q_pos = int(inputs["seq_ids"][i]), int(inputs["positions"][i])
    k_seq, k_pos = int(inputs["key_seq_ids"][j]), int(inputs["key_positions"][j])
    where = f"mask[{i}, {j}]: query (request {q_seq}, pos {q_pos}) vs key (request {k_seq}, pos {k_pos}): "
    if q_seq != k_seq:
        return where + "a token must never see another request's keys (compare sequence ids)"
    if k_pos > q_pos:
        return where + "a key in the query's future must be hidden (causality: pos(j) <= pos(i))"
    if k_pos == q_pos:
        return where + "a token sees itself: the comparison is pos(j) <= pos(i), not <"
    return where + "a token sees every earlier key of its own request, cached prefix included (use positions)"


EXERCISE = RaggedMask()
