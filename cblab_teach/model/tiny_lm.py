"""A tiny Llama-style decoder that runs one forward pass over a whole ragged batch.

Prefill chunks and decode tokens of many requests go through every layer
together: projections and MLP see one ``[N, hidden]`` matrix, attention reads
each request's cached keys from the KV cache. Same weights and numerics as
Hugging Face's ``LlamaForCausalLM``, so :meth:`TinyLM.from_hf` loads one.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..attention.fast import pool_attention, pool_layout
from ..attention.paged import gather_by_flatten
from ..attention.ragged import ragged_attention, segment_layout, segmented_attention
from ..core.batch_builder import RaggedBatch
from ..core.kv_cache import KVCache
from .config import ModelConfig
from .layers import RMSNorm, RotaryEmbedding, SwiGLU

AttentionImpl = Literal["segmented", "ragged"]
HEAD_SLICE = 1024  # columns of the LM head per matmul on CPU (TinyLM.logits)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, kv = cfg.head_dim, cfg.num_heads, cfg.kv_heads
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)


class StepContext:
    """What every layer of one forward shares: the batch, its slots, its attention layout."""

    def __init__(self, batch: RaggedBatch, cache: KVCache, impl: AttentionImpl, via_flatten: bool) -> None:
        self.batch = batch
        self.cache = cache
        self.impl = impl
        self.via_flatten = via_flatten
        self.layout = segment_layout(batch) if impl == "segmented" else None
        # every key the batch reads, in batch order; this step's own tokens are among them, so their slots are too
        self.read_slots = cache.slots(batch.request_ids, batch.key_seq_ids, batch.key_positions)
        key_starts = torch.cumsum(batch.context_lens, 0) - batch.context_lens
        self.write_slots = self.read_slots[key_starts[batch.seq_ids] + batch.positions]
        self._pool_groups = None

    @property
    def fast(self) -> bool:
        """The default path: segmented groups read straight from the pool (``kv_read="block_table"``)."""
        return self.impl == "segmented" and not self.via_flatten

    @property
    def pool_groups(self):
        """Pool slots and masks of the fast path's groups: the same for every layer, so built once per step."""
        if self._pool_groups is None:
            self._pool_groups = pool_layout(self.layout, self.read_slots, self.cache.k.dtype)
        return self._pool_groups

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every key and value the batch reads at ``layer``, in batch order: the one read the default
        attention and every attention plugin share (by flatten, or by slot with :attr:`read_slots`)."""
        if self.via_flatten:
            return gather_by_flatten(self.cache, layer, self.batch)
        return self.cache.read(layer, self.read_slots)


class TinyLM(nn.Module):
    """Embedding, RoPE, RMSNorm, (grouped-query) attention, SwiGLU, LM head."""

    def __init__(self, config: ModelConfig | None = None, seed: int | None = 0) -> None:
        super().__init__()
        cfg = config or ModelConfig()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.attention_hook = None  # set by the engine for AttentionPlugins
        if seed is not None:  # None: the weights come next (from_weights), do not draw them
            self._init_weights(seed)
        self.to(cfg.dtype)

    def _init_weights(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight") or "layernorm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02 * (3.0 if "embed" in name else 1.0))

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @torch.no_grad()
    def forward(
        self,
        batch: RaggedBatch,
        cache: KVCache,
        impl: AttentionImpl = "segmented",
        via_flatten: bool = False,
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Logits at the batch's sample rows ``[S, vocab]`` (every row if ``all_logits``)."""
        ctx = StepContext(batch, cache, impl, via_flatten)
        cos, sin = self.rotary.cos_sin(batch.positions, self.dtype)
        signed_sin = RotaryEmbedding.signed_sin(sin)  # once per step, for every layer's q and k
        x = self.embed_tokens(batch.token_ids)  # a new tensor: the residual adds below may write into it
        for layer, block in enumerate(self.layers):
            x.add_(self._attend(layer, block, block.input_layernorm(x), cos, signed_sin, ctx))
            x.add_(block.mlp(block.post_attention_layernorm(x)))
        if not all_logits:
            x = x[batch.sample_rows]
        return self.logits(self.norm(x))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """``lm_head(h)``; on CPU, a large vocabulary is computed in slices of :data:`HEAD_SLICE` columns.

        Each logit is the same dot product either way (checked bit for bit in ``tests/test_fused_layers.py``),
        but a slice of the head's weight stays in the CPU's cache while every row reads it: at 64 rows over
        SmolLM2's 49,152 columns the slices take about 0.8x the time of one matmul. One row is a
        matrix-vector product that slicing does not help."""
        weight = self.lm_head.weight
        if h.device.type != "cpu" or h.shape[0] < 2 or weight.shape[0] <= 4 * HEAD_SLICE or h.dim() != 2:
            return self.lm_head(h)
        out = h.new_empty(h.shape[0], weight.shape[0])
        for start in range(0, weight.shape[0], HEAD_SLICE):
            out[:, start : start + HEAD_SLICE] = nn.functional.linear(h, weight[start : start + HEAD_SLICE])
        return out

    def qkv(
        self, block: Block, x: torch.Tensor, cos, sin, signed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A layer's queries, keys and values ``[n, heads, head_dim]``, q and k rotated to their positions.

        ``signed``: ``sin`` is :meth:`RotaryEmbedding.signed_sin` of the table (the forward's fast rotation,
        the same numbers as :meth:`RotaryEmbedding.apply` with the plain table)."""
        cfg, attn, n = self.config, block.self_attn, x.shape[0]
        rotate = RotaryEmbedding.apply_signed if signed else RotaryEmbedding.apply
        q = rotate(attn.q_proj(x).view(n, cfg.num_heads, cfg.head_dim), cos, sin)
        k = rotate(attn.k_proj(x).view(n, cfg.kv_heads, cfg.head_dim), cos, sin)
        return q, k, attn.v_proj(x).view(n, cfg.kv_heads, cfg.head_dim)

    def _attend(self, layer: int, block: Block, x: torch.Tensor, cos, signed_sin, ctx: StepContext) -> torch.Tensor:
        q, k, v = self.qkv(block, x, cos, signed_sin, signed=True)
        ctx.cache.write(layer, ctx.write_slots, k, v, ctx.batch)
        if self.attention_hook is not None:
            out = self.attention_hook(layer, q, ctx)
        else:
            out = self.attend_cached(layer, q, ctx)
        return block.self_attn.o_proj(out.reshape(x.shape[0], -1))

    @staticmethod
    def attend_cached(layer: int, q: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Default attention: this step's queries against every cached + new key of their request.

        The fast path (:mod:`..attention.fast`) reads each group's keys straight from the pool; the readable
        references (``impl="ragged"``, ``via_flatten``) read every key once into batch order, then attend.
        """
        if ctx.fast:
            return pool_attention(q, ctx.cache, layer, ctx.pool_groups)
        k, v = ctx.keys_values(layer)
        if ctx.impl == "ragged":
            return ragged_attention(q, k, v, ctx.batch)
        return segmented_attention(q, k, v, ctx.batch, ctx.layout)

    @classmethod
    def from_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> TinyLM:
        """A model holding ``weights`` (TinyLM's names), built without drawing random weights first: for a real
        model's 135M parameters that alone takes seconds."""
        with torch.device("meta"):
            model = cls(config, seed=None)
        model.load_state_dict(weights, strict=True, assign=True)
        model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)  # a buffer, not in the weights
        return model.to(config.dtype)

    @classmethod
    def from_hf(cls, hf_model) -> TinyLM:
        """Copy the weights of a Hugging Face ``LlamaForCausalLM`` (same math, same outputs)."""
        from .hf import config_from_hf, state_dict_from_hf

        model = cls(config_from_hf(hf_model.config, next(hf_model.parameters()).dtype))
        model.load_state_dict(state_dict_from_hf(hf_model), strict=True)
        return model.to(next(hf_model.parameters()).device)
