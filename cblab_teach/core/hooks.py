"""The hook protocol: the plugin base types the engine calls, and the guards that name a failing plugin.

They live in the core (``plugins/base.py`` re-exports them under the course's names) so that the engine can
recognise a plugin without importing the layer above it. The engine calls every hook itself, in
registration order:

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

A fourth, internal kind of hook is a :class:`ForwardHook`: something that must know which batch row belongs
to which request during one forward (the LoRA router of ``advanced/lora.py`` is one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import CBLabError, PluginError

if TYPE_CHECKING:
    from ..model.tiny_lm import StepContext
    from .batch_builder import RaggedBatch
    from .engine import Engine
    from .records import StepRecord
    from .request import Request

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


class ForwardHook(Protocol):
    """Told the batch before the engine's forward and called after it, even when the forward raises."""

    def begin(self, batch: RaggedBatch, requests: Mapping[int, Request]) -> None: ...

    def end(self) -> None: ...


def call_hook(plugin: Plugin, hook: str, *args):
    """Call ``plugin.hook(*args)``; anything but a CBLabError becomes a PluginError naming plugin and hook."""
    try:
        return getattr(plugin, hook)(*args)
    except CBLabError:
        raise
    except Exception as e:
        raise PluginError(f"plugin {plugin.name}.{hook}() raised {type(e).__name__}: {e}") from e


class GuardedCachePlugin:
    """Wrap a CachePlugin so an exception, or a wrong return value, names the plugin and the hook."""

    def __init__(self, plugin: CachePlugin) -> None:
        self.plugin = plugin

    def before_append(self, layer, k, v, *rest):
        out = call_hook(self.plugin, "before_append", layer, k, v, *rest)
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise PluginError(
                f"plugin {self.plugin.name}.before_append() must return the (k, v) to store, got {out!r}"
                " (an observer returns them unchanged: return k, v)"
            )
        if out[0].shape != k.shape or out[1].shape != v.shape:
            raise PluginError(
                f"plugin {self.plugin.name}.before_append() changed the K/V shapes {tuple(k.shape)}, "
                f"{tuple(v.shape)} to {tuple(out[0].shape)}, {tuple(out[1].shape)}"
            )
        return out

    def after_append(self, *args):
        return call_hook(self.plugin, "after_append", *args)


def attention_chain(plugins: list[Plugin], default: AttentionFn) -> AttentionFn | None:
    """The engine's attention wrapped by every AttentionPlugin, first registered innermost; None if none."""
    wrappers = [p for p in plugins if isinstance(p, AttentionPlugin)]
    if not wrappers:
        return None
    chain = default
    for plugin in wrappers:
        chain = _link(plugin, chain)
    return chain


def _link(plugin: AttentionPlugin, inner: AttentionFn) -> AttentionFn:
    def attend(layer, q, ctx):
        return call_hook(plugin, "attend", layer, q, ctx, inner)

    return attend
