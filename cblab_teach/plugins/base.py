"""Plugin interfaces: extend the engine without editing it.

The engine calls every hook itself, in registration order:

* :class:`SchedulerPlugin` -- ``before_step(engine)`` before planning (it may
  reorder the waiting queue or change ``engine.budget``), ``after_step(engine,
  record)`` after the step is committed, ``on_request_completion(engine,
  request)`` once per finished request.
* :class:`AttentionPlugin` -- ``attend(layer, q, ctx, default)`` replaces the
  attention of every layer; call ``default(layer, q, ctx)`` to augment it.
  Attention plugins nest: the first registered wraps the engine's attention,
  the next wraps that, so the last registered is called first. The chain is
  set on the model only during its engine's forward, so engines sharing a
  model never see each other's plugins.
* :class:`CachePlugin` -- ``before_append(layer, k, v, batch)`` may transform
  the K/V about to be stored, ``after_append(layer, k, v, batch)`` sees them.
  ``before_append`` must return the ``(k, v)`` pair, of the same shapes: an
  observer that forgets to (returns ``None``) gets a ``PluginError`` naming the
  plugin and the hook, not a silent "unchanged" nor a crash inside the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..core.batch_builder import RaggedBatch
    from ..core.engine import Engine, StepRecord
    from ..core.request import Request
    from ..model.tiny_lm import StepContext

# An attention function: (layer, queries [N, heads, head_dim], step context) -> output of the same shape.
AttentionFn = Callable[[int, torch.Tensor, "StepContext"], torch.Tensor]


class Plugin:
    """Common base: a readable name for error messages."""

    @property
    def name(self) -> str:
        return type(self).__name__


class SchedulerPlugin(Plugin):
    def before_step(self, engine: Engine) -> None:
        """Called before the scheduler plans a step."""

    def after_step(self, engine: Engine, record: StepRecord) -> None:
        """Called after a step is committed, with its record."""

    def on_request_completion(self, engine: Engine, request: Request) -> None:
        """Called once when a request finishes."""


class AttentionPlugin(Plugin):
    def attend(self, layer: int, q: torch.Tensor, ctx: StepContext, default: AttentionFn) -> torch.Tensor:
        """Return the attention output ``[N, heads, head_dim]``; by default, the engine's own."""
        return default(layer, q, ctx)


class CachePlugin(Plugin):
    def before_append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the K/V to store (transformed or not; never ``None``: a ``PluginError`` says so)."""
        return k, v

    def after_append(self, layer: int, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch) -> None:
        """Observe the K/V just stored."""
