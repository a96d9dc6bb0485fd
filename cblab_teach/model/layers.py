"""The three small layers a Llama block is made of: RMSNorm, RoPE, SwiGLU.

Each has a readable reference (``RMSNorm.reference``, ``RotaryEmbedding.apply``, ``SwiGLU.reference``) and the
path the model runs, which does the same float operations in the same order with fewer temporaries (in-place
ops, one signed ``sin`` table per step instead of a negated copy of half of every q and k): bit for bit the
same numbers, so the same tokens as Hugging Face, with fewer allocations and kernel launches per layer.
``tests/test_fused_layers.py`` compares each pair exactly.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Scale by the root-mean-square; computed in float32 (or wider) like Llama."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition, as Hugging Face's ``LlamaRMSNorm`` writes it."""
        dtype = x.dtype
        h = x.to(torch.promote_types(dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`reference` with its temporaries reused (``w * y == y * w`` exactly); a narrower dtype, which
        the reference widens and narrows again, takes the reference."""
        if x.dtype not in (torch.float32, torch.float64) or self.weight.dtype != x.dtype:
            return self.reference(x)
        scale = x.pow(2).mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        return torch.mul(x, scale).mul_(self.weight)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: each token's position rotates its q and k.

    Positions come per token, so a ragged batch (tokens of many requests at
    different positions) is rotated in one call.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [tokens, heads, head_dim]; cos/sin: [tokens, head_dim]. The reference."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos[:, None, :] + rotated * sin[:, None, :]

    @staticmethod
    def signed_sin(sin: torch.Tensor) -> torch.Tensor:
        """``sin`` with its first half negated: ``(-a) * s == a * (-s)`` exactly, so :meth:`apply_signed` can
        rotate without negating half of every q and k."""
        half = sin.shape[-1] // 2
        return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

    @staticmethod
    def apply_signed(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` bit for bit (``a + b == b + a`` exactly), with ``signed_sin`` from :meth:`signed_sin`
        computed once per step: two temporaries instead of five."""
        half = x.shape[-1] // 2
        swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
        return swapped.mul_(signed_sin[:, None, :]).add_(x * cos[:, None, :])


class SwiGLU(nn.Module):
    """The gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`reference` with SiLU and the gate product done in place on the gate's output."""
        return self.down_proj(nn.functional.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))
