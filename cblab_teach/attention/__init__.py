"""Attention kernels in plain PyTorch: masked, ragged, segmented and paged."""

from .masked import attention_probs, expand_kv_heads, leaky_clamp_attention, masked_attention
from .paged import gather_by_flatten, gather_from_block_table
from .ragged import ragged_attention, segment_layout, segmented_attention

__all__ = [
    "attention_probs",
    "expand_kv_heads",
    "gather_by_flatten",
    "gather_from_block_table",
    "leaky_clamp_attention",
    "masked_attention",
    "ragged_attention",
    "segment_layout",
    "segmented_attention",
]
