"""Advanced serving beyond one device: KV sharding with an exact log-sum-exp merge."""

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
    run_distributed,
    shard_sizes,
    sharded_attention,
    sharded_ragged_attention,
)

__all__ = [
    "ShardedAttentionPlugin",
    "ShardingError",
    "demo_sharding_figure",
    "key_shards",
    "merge_pair",
    "merge_partials",
    "merge_partials_with_lse",
    "merge_weights",
    "partial_attention",
    "run_distributed",
    "shard_sizes",
    "sharded_attention",
    "sharded_ragged_attention",
]
