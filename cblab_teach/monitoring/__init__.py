"""Monitoring: serving metrics (TTFT, TPOT, ITL, throughput), memory profiles and leak detection."""

from .errors import MonitoringError
from .leak import LeakReport, MemoryLeakDetector, reachable_tensor_bytes
from .memory import DetailedMemoryProfiler, MemoryProfiler, MemorySnapshot, PhaseMemory, process_rss
from .metrics import MetricsCollector, RequestMetrics, StepMetrics, percentile

__all__ = [
    "DetailedMemoryProfiler",
    "LeakReport",
    "MemoryLeakDetector",
    "MemoryProfiler",
    "MemorySnapshot",
    "MetricsCollector",
    "MonitoringError",
    "PhaseMemory",
    "RequestMetrics",
    "StepMetrics",
    "percentile",
    "process_rss",
    "reachable_tensor_bytes",
]
