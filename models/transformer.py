"""GPT-2-style transformer blocks with adaptive LayerNorm (VAR/AAR ``AdaLNSelfAttn`` layout).

Keys per block: ``attn.{mat_qkv.weight, q_bias, v_bias, scale_mul_1H11, proj.*}``,
``ffn.{fc1, fc2}.*``, ``ada_lin.1.*``. Attention is cosine attention (q, k L2-normalised, a
learnable per-head log-scale clamped at log 100), or with ``cos_attn=False`` scaled dot-product
attention with scale ``1 / (sqrt(head_dim) * tau)``, tau = 4, and no ``scale_mul_1H11`` (AAR's
``build_aar`` defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    """Keys / values of earlier scales for one block during next-scale inference."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)


ATTENTION_TAU = 4.0


class SelfAttention(nn.Module):
    """Multi-head (cosine) self-attention with separate q / v biases."""

    def __init__(self, dim: int, num_heads: int, *, cos_attn: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.cos_attn = cos_attn
        if cos_attn:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(dim, dim)
        self.max_log_scale = math.log(100.0)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """(B, S, C) → (B, S, C).

        Args:
            attn_mask: Additive (S, S_total) mask, or None.
            cache: If given, this call's keys / values are appended and attention covers every
                cached position plus the current ones.
        """
        batch, length, dim = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.cos_attn:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=self.max_log_scale).exp()
            k = F.normalize(k, dim=-1)
            scale = 1.0
        else:
            scale = 1.0 / (math.sqrt(self.head_dim) * ATTENTION_TAU)
        if cache is not None:
            cache.keys.append(k)
            cache.values.append(v)
            k = torch.cat(cache.keys, dim=2)
            v = torch.cat(cache.values, dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """Linear(C, rC) → GELU(tanh) → Linear(rC, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, S, C) → (B, S, C)."""
        return self.fc2(self.act(self.fc1(x)))


class AdaLNSelfAttnBlock(nn.Module):
    """Pre-norm block whose LayerNorm scale / shift and residual gains come from the condition."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, cos_attn: bool = True) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, num_heads, cos_attn=cos_attn)
        self.ffn = FeedForward(dim, int(round(dim * mlp_ratio)))
        self.ln = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self, x: Tensor, cond: Tensor, attn_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """x (B, S, C), cond (B, C) → (B, S, C)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (
            self.ada_lin(cond).view(-1, 1, 6, x.shape[-1]).unbind(2)
        )
        x = x + self.attn(self.ln(x) * (1 + scale1) + shift1, attn_mask, cache) * gamma1
        return x + self.ffn(self.ln(x) * (1 + scale2) + shift2) * gamma2


class AdaLNBeforeHead(nn.Module):
    """Conditioned LayerNorm before the output head (keys ``ada_lin.1.*``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, S, C), cond (B, C) → (B, S, C)."""
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, x.shape[-1]).unbind(2)
        return self.ln(x) * (1 + scale) + shift
