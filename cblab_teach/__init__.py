"""cblab_teach: continuous batching for LLM inference, small enough to read, correct enough to trust."""

from .core import (
    DenseKVCache,
    Engine,
    EngineConfig,
    PagedAllocator,
    RaggedBatch,
    Request,
    RequestState,
    SamplingParams,
    Scheduler,
    StaticBatchingEngine,
    StepPlan,
    StepRecord,
    build_batch,
    ragged_causal_mask,
)
from .errors import (
    CapacityError,
    CBLabError,
    ConfigError,
    DuplicateRequestError,
    KVCacheError,
    PluginError,
    RequestError,
    UnknownRequestError,
)
from .model import ModelConfig, TinyLM
from .progress import progress  # the course map with what you have passed: cblab_teach.progress()

__version__ = "0.1.0"

__all__ = [
    "CBLabError",
    "CapacityError",
    "ConfigError",
    "DenseKVCache",
    "DuplicateRequestError",
    "Engine",
    "EngineConfig",
    "KVCacheError",
    "ModelConfig",
    "PagedAllocator",
    "PluginError",
    "RaggedBatch",
    "Request",
    "RequestError",
    "RequestState",
    "SamplingParams",
    "Scheduler",
    "StaticBatchingEngine",
    "StepPlan",
    "StepRecord",
    "TinyLM",
    "UnknownRequestError",
    "build_batch",
    "progress",
    "ragged_causal_mask",
]
