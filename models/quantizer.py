"""Multi-scale residual vector quantizer (SAT / VAR style), 1-D.

For a latent window ``z`` of ``L`` frames and scales ``s_0 < ... < s_{K-1} = L`` the quantizer
keeps a residual ``r = z`` and, for each scale k:

1. area-downsample ``r`` to ``s_k`` frames and take the nearest code of codebook k (one codebook
   per scale) → token map ``idx_k`` of shape (N, s_k);
2. embed, linearly upsample back to ``L`` frames and apply the partially shared convolution Φ
   (``h ← (1 - α) h + α conv(h)``, VAR's quant_resi with α = 0.5);
3. ``f̂ += h``, ``r -= h``.

Decoding is the sum over scales of step 2. Φ for scale k is the one of ``phi_count`` convolutions
whose tick (``linspace(1 / (2n), 1 - 1 / (2n), n)``) is nearest to ``k / (K - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scale_schedule(num_frames: int, num_scales: int, kind: str = "quadratic") -> tuple[int, ...]:
    """Token-map lengths per scale, ending at ``num_frames``.

    ``"quadratic"`` is SAT's ``int(linspace(1, sqrt(L), K) ** 2)`` (75 frames, 16 scales →
    1, 2, 4, 6, 9, ..., 66, 75); ``"linear"`` is ``int(linspace(1, L, K))``.

    Raises:
        ValueError: for an unknown kind, or if the schedule would repeat a length.
    """
    if num_scales < 1 or num_frames < 1:
        raise ValueError(f"need num_scales >= 1 and num_frames >= 1, got {num_scales} and {num_frames}")
    if num_scales == 1:
        return (num_frames,)
    steps = [i / (num_scales - 1) for i in range(num_scales)]
    if kind == "quadratic":
        top = float(num_frames) ** 0.5
        points = [(1.0 + (top - 1.0) * t) ** 2 for t in steps]
    elif kind == "linear":
        points = [1.0 + (num_frames - 1.0) * t for t in steps]
    else:
        raise ValueError(f"scale schedule must be 'quadratic' or 'linear', got {kind!r}")
    scales = tuple(int(p + 1e-6) for p in points)
    if len(set(scales)) != len(scales):
        raise ValueError(f"{kind} schedule of {num_scales} scales over {num_frames} frames repeats lengths: {scales}")
    return scales


class PhiPartiallyShared(nn.Module):
    """``n`` convolutions shared among the scales; keys ``convs.{j}.{weight,bias}``."""

    def __init__(self, dim: int, count: int, kernel_size: int, resi_ratio: float = 0.5) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2) for _ in range(count))
        self.resi_ratio = resi_ratio
        self.ticks = [(2 * j + 1) / (2 * count) for j in range(count)]

    def index_for(self, scale: int, num_scales: int) -> int:
        """Index of the convolution used by scale ``scale`` of ``num_scales``."""
        position = scale / max(num_scales - 1, 1)
        return min(range(len(self.ticks)), key=lambda j: abs(self.ticks[j] - position))

    def forward(self, h: Tensor, scale: int, num_scales: int) -> Tensor:
        """(N, D, L) → (N, D, L)."""
        conv = self.convs[self.index_for(scale, num_scales)]
        return h * (1 - self.resi_ratio) + conv(h) * self.resi_ratio


class MultiScaleResidualQuantizer(nn.Module):
    """One codebook per scale over a fixed-length latent window.

    Args:
        dim: Latent dimension D.
        scales: Token-map lengths; the last one is the window length L.
        codebook_size: Codes per codebook.
        phi_count: Number of shared Φ convolutions.
        phi_kernel: Their kernel size.
        resi_ratio: Φ mixing ratio α.
    """

    def __init__(
        self,
        dim: int,
        scales: Sequence[int],
        codebook_size: int,
        *,
        phi_count: int = 6,
        phi_kernel: int = 9,
        resi_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        if list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scales must be strictly increasing, got {self.scales}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebooks = nn.ModuleList(nn.Embedding(codebook_size, dim) for _ in self.scales)
        for codebook in self.codebooks:
            nn.init.uniform_(codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.phi = PhiPartiallyShared(dim, phi_count, phi_kernel, resi_ratio)

    @property
    def num_frames(self) -> int:
        """Latent window length L."""
        return self.scales[-1]

    def downsample(self, x: Tensor, size: int) -> Tensor:
        """Area-downsample (N, D, L) to (N, D, size)."""
        return x if x.shape[-1] == size else F.interpolate(x, size=size, mode="area")

    def embed_scale(self, scale: int, idx: Tensor) -> Tensor:
        """Token map of scale ``scale`` → its contribution to f̂.

        Args:
            scale: Scale index k.
            idx: (N, s_k) token ids.

        Returns:
            (N, D, L) upsampled and Φ-filtered embedding.
        """
        h = self.codebooks[scale](idx).transpose(1, 2)
        if h.shape[-1] != self.num_frames:
            h = F.interpolate(h, size=self.num_frames, mode="linear", align_corners=False)
        return self.phi(h, scale, len(self.scales))

    def nearest(self, scale: int, x: Tensor) -> Tensor:
        """Nearest code ids of (N, D, s) vectors in codebook ``scale`` → (N, s)."""
        codes = self.codebooks[scale].weight
        flat = x.transpose(1, 2).reshape(-1, self.dim)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)[None]
        return dist.argmin(dim=1).view(x.shape[0], x.shape[2])

    def quantize(self, z: Tensor) -> tuple[list[Tensor], Tensor]:
        """Residual multi-scale quantization.

        Args:
            z: (N, D, L) latent window.

        Returns:
            Token maps ``[(N, s_k)]`` and the quantized latent f̂ (N, D, L).
        """
        if z.dim() != 3 or z.shape[1] != self.dim or z.shape[2] != self.num_frames:
            raise ValueError(f"z must have shape (N, {self.dim}, {self.num_frames}), got {tuple(z.shape)}")
        residual = z
        f_hat = torch.zeros_like(z)
        tokens = []
        for k, size in enumerate(self.scales):
            idx = self.nearest(k, self.downsample(residual, size))
            h = self.embed_scale(k, idx)
            f_hat = f_hat + h
            residual = residual - h
            tokens.append(idx)
        return tokens, f_hat

    def dequantize(self, tokens: Sequence[Tensor]) -> Tensor:
        """Token maps ``[(N, s_k)]`` → f̂ (N, D, L)."""
        f_hat = self.embed_scale(0, tokens[0])
        for k in range(1, len(tokens)):
            f_hat = f_hat + self.embed_scale(k, tokens[k])
        return f_hat
