"""Plugins: extend the engine without editing it (hooks in :mod:`.base`), and the built-in ones."""

from .adaptive import AdaptiveBatchSizePlugin
from .attention_recorder import AttentionRecorder
from .base import AttentionPlugin, CachePlugin, Plugin, SchedulerPlugin
from .kv_quant import Int8KVPool, KVQuantizationPlugin
from .logging_plugin import LoggingPlugin
from .priority import PriorityPlugin
from .sliding_window import SlidingWindowPlugin

__all__ = [
    "AdaptiveBatchSizePlugin",
    "AttentionPlugin",
    "AttentionRecorder",
    "CachePlugin",
    "Int8KVPool",
    "KVQuantizationPlugin",
    "LoggingPlugin",
    "Plugin",
    "PriorityPlugin",
    "SchedulerPlugin",
    "SlidingWindowPlugin",
]
