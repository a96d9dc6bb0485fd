"""An independent reference: greedy decoding by full recompute over TinyLM's weights, with no cache at all.

Nothing from the engine is used except the parameter tensors: no KV cache, no batch builder, no
attention module, no RMSNorm or RoPE layer. Every step runs the whole sequence through the model again
with the causal mask written directly (``key position <= query position``), so a bug in the engine's
masks, caches, chunking or scheduling cannot hide in its own reference. ``tests/test_correctness.py``
checks this reference against Hugging Face's ``LlamaForCausalLM``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cblab_teach import TinyLM


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    wide = x.to(torch.promote_types(x.dtype, torch.float32))  # Llama normalises in at least float32
    return weight * (wide / torch.sqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x: [heads, T, d]. Llama's rotation of dimension pairs (i, i + d/2); angles in float32 as Llama has them."""
    t, d = x.shape[1], x.shape[2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    angles = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [T, d/2]
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(x.dtype)
    sin = torch.cat((angles.sin(), angles.sin()), -1).to(x.dtype)
    half = d // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@torch.no_grad()
def full_logits(model: TinyLM, ids: Sequence[int]) -> torch.Tensor:
    """Logits ``[T, vocab]`` of every position of ``ids``, computed from scratch."""
    cfg = model.config
    p = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    heads, kv_heads, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    x = p["embed_tokens.weight"][torch.tensor(list(ids), dtype=torch.long)]
    t = x.shape[0]
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # query i sees keys 0..i
    for i in range(cfg.num_layers):
        pre = f"layers.{i}."
        h = _rms_norm(x, p[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(t, heads, d).transpose(0, 1)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(t, kv_heads, d).transpose(0, 1)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(t, kv_heads, d).transpose(0, 1)
        q, k = _rope(q, cfg.rope_theta), _rope(k, cfg.rope_theta)
        group = heads // kv_heads  # grouped-query attention: query head j reads kv head j // group
        k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(d)
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ v  # [heads, T, d]
        x = x + attn.transpose(0, 1).reshape(t, heads * d) @ p[pre + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, p[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate = h @ p[pre + "mlp.gate_proj.weight"].T
        up = h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ p[pre + "mlp.down_proj.weight"].T
    return _rms_norm(x, p["norm.weight"], cfg.rms_norm_eps) @ p["lm_head.weight"].T


def greedy(model: TinyLM, prompt: Sequence[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy continuation of ``prompt``: recompute everything, take the argmax, repeat; stop at EOS."""
    ids, out = list(prompt), []
    for _ in range(max_new_tokens):
        token = int(full_logits(model, ids)[-1].argmax())
        out.append(token)
        ids.append(token)
        if token == eos_token_id:
            break
    return out
