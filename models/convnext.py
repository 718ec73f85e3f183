"""1-D ConvNeXt encoder: the EVA-GAN "context aware module" (fishaudio ``ConvNeXtEncoder`` layout).

No temporal downsampling: (B, in_channels, F) → (B, dims[-1], F). Keys:
``downsample_layers.0.{0: conv, 1: norm}``, ``downsample_layers.{i≥1}.{0: norm, 1: 1×1 conv}``,
``stages.{s}.{b}.{dwconv, norm, pwconv1, pwconv2, gamma}``, ``norm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNormChannelsFirst(nn.Module):
    """LayerNorm over C of a (B, C, T) tensor, with ``weight`` / ``bias`` of shape (C,)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        return F.layer_norm(x.transpose(1, 2), (x.shape[1],), self.weight, self.bias, self.eps).transpose(
            1, 2
        )


class ConvNeXtBlock1d(nn.Module):
    """depthwise conv(k) → LN → Linear(d, 4d) → GELU → Linear(4d, d) → ×γ → drop-path → residual."""

    def __init__(
        self, dim: int, kernel_size: int, *, layer_scale_init: float = 1e-6, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        y = self.dwconv(x).transpose(1, 2)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        y = y.transpose(1, 2)
        if self.training and self.drop_path > 0:
            keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return x + y


class ConvNeXtEncoder(nn.Module):
    """Stem → stages of ConvNeXt blocks with 1×1 width changes between them → final norm.

    Args:
        in_channels: Input feature channels (e.g. mel bands).
        dims: Width of each stage.
        depths: Blocks per stage.
        kernel_size: Kernel of the stem and of every depthwise convolution.
        layer_scale_init: Initial γ.
        drop_path_rate: Stochastic depth rate reached by the last block (training only).
    """

    def __init__(
        self,
        in_channels: int,
        dims: Sequence[int],
        depths: Sequence[int],
        *,
        kernel_size: int = 7,
        layer_scale_init: float = 1e-6,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {tuple(dims)} and depths {tuple(depths)} must have the same length")
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv1d(in_channels, dims[0], kernel_size, padding=kernel_size // 2),
                    LayerNormChannelsFirst(dims[0]),
                )
            ]
        )
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(LayerNormChannelsFirst(dims[i - 1]), nn.Conv1d(dims[i - 1], dims[i], 1))
            )
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        cursor = 0
        for dim, depth in zip(dims, depths):
            self.stages.append(
                nn.Sequential(
                    *[
                        ConvNeXtBlock1d(
                            dim, kernel_size, layer_scale_init=layer_scale_init, drop_path=rates[cursor + j]
                        )
                        for j in range(depth)
                    ]
                )
            )
            cursor += depth
        self.norm = LayerNormChannelsFirst(dims[-1])
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, F) → (B, dims[-1], F)."""
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x)
