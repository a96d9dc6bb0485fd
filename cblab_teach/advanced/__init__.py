"""Advanced serving: KV sharding with an exact log-sum-exp merge, disaggregated prefill/decode, many LoRA adapters,
tensor parallelism across processes."""

from .disaggregated import DisaggregatedServer, Transfer, TwoProcessResult, run_two_processes
from .distributed import run_distributed
from .lora import LoRAAdapter, LoRALinear
from .sharding import (
    ShardedAttentionPlugin,
    ShardingError,
    demo_sharding_figure,
    key_shards,
    merge_pair,
    merge_partials,
    merge_partials_with_lse,
    merge_weights,
    partial_attention,
    shard_sizes,
    sharded_attention,
    sharded_ragged_attention,
)
from .tensor_parallel import TensorParallelResult, run_tensor_parallel, simulate_tensor_parallel

__all__ = [
    "DisaggregatedServer",
    "LoRAAdapter",
    "LoRALinear",
    "ShardedAttentionPlugin",
    "ShardingError",
    "Transfer",
    "TwoProcessResult",
    "demo_sharding_figure",
    "key_shards",
    "merge_pair",
    "merge_partials",
    "merge_partials_with_lse",
    "merge_weights",
    "partial_attention",
    "run_distributed",
    "run_tensor_parallel",
    "simulate_tensor_parallel",
    "TensorParallelResult",
    "run_two_processes",
    "shard_sizes",
    "sharded_attention",
    "sharded_ragged_attention",
]
