"""Plugin interfaces: extend the engine without editing it.

``SchedulerPlugin``, ``AttentionPlugin`` and ``CachePlugin`` are defined in
:mod:`cblab_teach.core.hooks`, beside the engine that calls them, so that the core
never imports the layers above it; they are imported here under the names the
course (and every plugin in this folder) uses. Subclass them and override the
hooks you need:

* :class:`SchedulerPlugin` -- ``before_step(engine)``, ``after_step(engine, record)``,
  ``on_request_completion(engine, request)``;
* :class:`AttentionPlugin` -- ``attend(layer, q, ctx, default)``;
* :class:`CachePlugin` -- ``before_append(layer, k, v, batch)`` (must return the
  ``(k, v)`` to store), ``after_append(layer, k, v, batch)``.

:mod:`cblab_teach.core.hooks` says when each is called and how attention plugins nest.
"""

from ..core.hooks import AttentionFn, AttentionPlugin, CachePlugin, Plugin, SchedulerPlugin

__all__ = ["AttentionFn", "AttentionPlugin", "CachePlugin", "Plugin", "SchedulerPlugin"]
