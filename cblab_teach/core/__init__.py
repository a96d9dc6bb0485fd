"""The engine's core: requests, scheduling, ragged batches, KV caches, the loop."""

from .batch_builder import PlanLayout, RaggedBatch, batch_mask, build_batch, plan_layout, ragged_causal_mask
from .config import EngineConfig
from .engine import Engine, StepRecord
from .kv_cache import DenseKVCache, KVCache, KVUsage, PagedAllocator
from .request import Request, RequestState, SamplingParams
from .scheduler import ScheduledChunk, Scheduler, StepPlan
from .static_batching import StaticBatchingEngine

__all__ = [
    "DenseKVCache",
    "Engine",
    "EngineConfig",
    "KVCache",
    "KVUsage",
    "PagedAllocator",
    "PlanLayout",
    "RaggedBatch",
    "Request",
    "RequestState",
    "SamplingParams",
    "ScheduledChunk",
    "Scheduler",
    "StaticBatchingEngine",
    "StepPlan",
    "StepRecord",
    "batch_mask",
    "build_batch",
    "plan_layout",
    "ragged_causal_mask",
]
