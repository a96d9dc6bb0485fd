"""Record the attention probabilities of every step, for drawing; the outputs stay the engine's own.

The recorder recomputes the probabilities next to the normal path, from the
same queries and the same gathered keys, with the same masked softmax
(:func:`cblab_teach.attention.masked.attention_probs`), and returns whatever
``default`` returns: adding it never changes a generated token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from ..attention.masked import attention_probs, expand_kv_heads
from ..core.batch_builder import PlanLayout, batch_mask
from .base import AttentionFn, AttentionPlugin, SchedulerPlugin

if TYPE_CHECKING:
    from ..core.engine import Engine
    from ..model.tiny_lm import StepContext


class AttentionRecorder(AttentionPlugin, SchedulerPlugin):
    """``maps[(step, layer)]`` -> ``[heads, N, M]`` probabilities; ``layouts[step]`` -> the step's PlanLayout.

    ``layer=None`` records every layer; ``steps`` (optional) limits which steps are kept, to save memory.
    """

    def __init__(self, layer: int | None = None, steps: Iterable[int] | None = None) -> None:
        self.layer = layer
        self.steps = None if steps is None else set(steps)
        self.maps: dict[tuple[int, int], torch.Tensor] = {}
        self.layouts: dict[int, PlanLayout] = {}
        self.request_ids: dict[int, list[int]] = {}
        self._step = -1
        self._told_step = False

    def before_step(self, engine: Engine) -> None:
        self._step = len(engine.records)
        self._told_step = True

    def attend(self, layer: int, q: torch.Tensor, ctx: StepContext, default: AttentionFn) -> torch.Tensor:
        if layer == 0 and not self._told_step:
            self._step += 1  # used outside an Engine: count forwards instead
        step = self._step
        if (self.layer is None or layer == self.layer) and (self.steps is None or step in self.steps):
            self.maps[(step, layer)] = self.probabilities(layer, q, ctx)
            batch = ctx.batch
            self.layouts[step] = PlanLayout(
                batch.positions.cpu(),
                batch.seq_ids.cpu(),
                batch.key_positions.cpu(),
                batch.key_seq_ids.cpu(),
                batch.cu_seqlens.cpu(),
                batch.cached_lens.cpu(),
                batch.context_lens.cpu(),
            )
            self.request_ids[step] = list(batch.request_ids)
        return default(layer, q, ctx)

    @staticmethod
    def probabilities(layer: int, q: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``[heads, N, M]``: every query of the step against every key of the step's requests."""
        k, _ = ctx.keys_values(layer)
        k = expand_kv_heads(k, q.shape[-2])
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
        return attention_probs(scores, batch_mask(ctx.batch)[None]).detach().float().cpu()
