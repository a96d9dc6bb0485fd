"""Plugins: extend the engine without editing it (hooks in :mod:`.base`), and the built-in ones."""

from .adaptive import AdaptiveBatchSizePlugin
from .base import AttentionPlugin, CachePlugin, Plugin, SchedulerPlugin
from .kv_quant import Int8KVPool, KVQuantizationPlugin
from .logging_plugin import LoggingPlugin
from .priority import PriorityPlugin
from .sliding_window import SlidingWindowPlugin

__all__ = [
    "AdaptiveBatchSizePlugin",
    "AttentionPlugin",
    "CachePlugin",
    "Int8KVPool",
    "KVQuantizationPlugin",
    "LoggingPlugin",
    "Plugin",
    "PriorityPlugin",
    "SchedulerPlugin",
    "SlidingWindowPlugin",
]

try:  # the recorder lives in its own module; a missing one must not break the others
    from .attention_recorder import AttentionRecorder  # noqa: F401  (exported through __all__ below)
except ImportError:  # pragma: no cover
    pass
else:
    __all__.append("AttentionRecorder")
