"""Multi-scale residual vector quantizer (SAT / VAR style), 1-D.

The tokenizer's encoder output ``e`` (N, dimension, L) is projected to the latent ``z =
project_in(e)`` (N, latent_dim, L) (a Linear over channels; identity when the sizes agree). For
scales ``s_0 < ... < s_{K-1} = L`` the quantizer keeps a residual ``r = z`` and, for each scale k:

1. area-downsample ``r`` to ``s_k`` frames and take the nearest code of codebook k (one codebook
   per scale) → token map ``idx_k`` of shape (N, s_k);
2. embed, linearly upsample back to ``L`` frames and apply the partially shared convolution Φ
   (``h ← (1 - α) h + α conv(h)``, VAR's quant_resi with α = 0.5);
3. ``f̂ += h``, ``r -= h``.

Decoding is the sum over scales of step 2, then ``project_out``. Φ for scale k is the one of
``phi_count`` convolutions whose tick is nearest to ``k / (K - 1)``; the ticks are
``linspace(1 / (2n), 1 - 1 / (2n), n)``, or ``linspace(1 / (3n), 1 - 1 / (3n), n)`` for n = 4
(as in SAT / VAR).

State-dict keys are SAT's (``quantizer.vq.`` in a tokenizer)::

    project_in.*, project_out.*            Linear(dimension ↔ latent_dim), absent when equal
    quant_resi.qresi_ls.{j}.{weight,bias}  the Φ convolutions
    layers.{k}._codebook.embed             (codebook_size, latent_dim) codes of scale k

SAT's training files also hold the EMA statistics ``layers.{k}._codebook.{inited, cluster_size,
embed_avg}``; inference does not use them and :func:`drop_ema_statistics` removes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EMA_STATISTICS = ("inited", "cluster_size", "embed_avg")


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
        raise ValueError(
            f"{kind} schedule of {num_scales} scales over {num_frames} frames repeats lengths: {scales}"
        )
    return scales


def linspace(start: float, stop: float, num: int) -> list[float]:
    """``numpy.linspace`` in float64 arithmetic (same values bit for bit), without numpy."""
    if num == 1:
        return [start]
    step = (stop - start) / (num - 1)
    return [start + j * step for j in range(num - 1)] + [stop]


def phi_ticks(count: int) -> list[float]:
    """Positions in [0, 1] of the ``count`` shared Φ convolutions (SAT / VAR ``PhiPartiallyShared``)."""
    denominator = 3 * count if count == 4 else 2 * count
    return linspace(1 / denominator, 1 - 1 / denominator, count)


def drop_ema_statistics(state_dict: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Remove ``{prefix}...layers.{k}._codebook.{inited, cluster_size, embed_avg}`` entries."""
    return {
        k: v
        for k, v in state_dict.items()
        if not (k.startswith(prefix) and "._codebook." in k and k.rpartition(".")[2] in EMA_STATISTICS)
    }


class PhiPartiallyShared(nn.Module):
    """``n`` convolutions shared among the scales; keys ``qresi_ls.{j}.{weight,bias}``."""

    def __init__(self, dim: int, count: int, kernel_size: int, resi_ratio: float = 0.5) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2) for _ in range(count)
        )
        self.resi_ratio = abs(resi_ratio)
        self.ticks = phi_ticks(count)

    def index_for(self, scale: int, num_scales: int) -> int:
        """Index of the convolution used by scale ``scale`` of ``num_scales`` (first on ties)."""
        position = scale / max(num_scales - 1, 1)
        distances = [abs(t - position) for t in self.ticks]
        return distances.index(min(distances))

    def forward(self, h: Tensor, scale: int, num_scales: int) -> Tensor:
        """(N, D, L) → (N, D, L)."""
        conv = self.qresi_ls[self.index_for(scale, num_scales)]
        return h * (1 - self.resi_ratio) + conv(h) * self.resi_ratio


class Codebook(nn.Module):
    """One scale's codes, stored as the buffer ``embed`` (SAT's EMA-trained ``EuclideanCodebook``)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embed", torch.empty(size, dim).uniform_(-1.0 / size, 1.0 / size))

    def nearest(self, x: Tensor) -> Tensor:
        """Ids of the nearest codes (Euclidean) of (..., D) vectors → (...)."""
        flat = x.reshape(-1, x.shape[-1])
        codes = self.embed
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)[None]
        return dist.argmin(dim=1).view(x.shape[:-1])


class CodebookLayer(nn.Module):
    """Keys ``_codebook.embed``, as SAT's ``VectorQuantization`` without its (identity) projections."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self._codebook = Codebook(size, dim)


class MultiScaleResidualQuantizer(nn.Module):
    """One codebook per scale over a fixed-length latent window.

    Args:
        latent_dim: Codebook dimension D.
        scales: Token-map lengths; the last one is the window length L.
        codebook_size: Codes per codebook.
        dimension: Channels of the encoder output; ``project_in`` / ``project_out`` are Linear
            maps between it and ``latent_dim`` (identity when None or equal).
        phi_count: Number of shared Φ convolutions.
        phi_kernel: Their kernel size.
        resi_ratio: Φ mixing ratio α.
    """

    def __init__(
        self,
        latent_dim: int,
        scales: Sequence[int],
        codebook_size: int,
        *,
        dimension: int | None = None,
        phi_count: int = 6,
        phi_kernel: int = 9,
        resi_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        if list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scales must be strictly increasing, got {self.scales}")
        self.dim = latent_dim
        self.codebook_size = codebook_size
        dimension = latent_dim if dimension is None else dimension
        if dimension != latent_dim:
            self.project_in: nn.Module = nn.Linear(dimension, latent_dim)
            self.project_out: nn.Module = nn.Linear(latent_dim, dimension)
        else:
            self.project_in = nn.Identity()
            self.project_out = nn.Identity()
        self.quant_resi = PhiPartiallyShared(latent_dim, phi_count, phi_kernel, resi_ratio)
        self.layers = nn.ModuleList(CodebookLayer(codebook_size, latent_dim) for _ in self.scales)

    @property
    def num_frames(self) -> int:
        """Latent window length L."""
        return self.scales[-1]

    def codebook(self, scale: int) -> Tensor:
        """(codebook_size, D) codes of scale ``scale``."""
        return self.layers[scale]._codebook.embed

    def project_latent(self, e: Tensor) -> Tensor:
        """Encoder output (N, dimension, L) → latent (N, D, L)."""
        return self.project_in(e.transpose(1, 2)).transpose(1, 2)

    def unproject_latent(self, f_hat: Tensor) -> Tensor:
        """Quantized latent (N, D, L) → decoder input (N, dimension, L)."""
        return self.project_out(f_hat.transpose(1, 2)).transpose(1, 2)

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
        h = F.embedding(idx, self.codebook(scale)).transpose(1, 2)
        if h.shape[-1] != self.num_frames:
            h = F.interpolate(h, size=self.num_frames, mode="linear", align_corners=False)
        return self.quant_resi(h, scale, len(self.scales))

    def nearest(self, scale: int, x: Tensor) -> Tensor:
        """Nearest code ids of (N, D, s) vectors in codebook ``scale`` → (N, s)."""
        return self.layers[scale]._codebook.nearest(x.transpose(1, 2))

    def quantize(self, z: Tensor) -> tuple[list[Tensor], Tensor]:
        """Residual multi-scale quantization.

        Args:
            z: (N, D, L) latent window (after ``project_in``).

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
        """Token maps ``[(N, s_k)]`` → f̂ (N, D, L) (before ``project_out``)."""
        f_hat = self.embed_scale(0, tokens[0])
        for k in range(1, len(tokens)):
            f_hat = f_hat + self.embed_scale(k, tokens[k])
        return f_hat


class SATQuantizer(nn.Module):
    """SAT's ``ResidualVectorQuantizer`` shell: the quantizer lives under ``vq`` (keys ``vq.*``)."""

    def __init__(self, vq: MultiScaleResidualQuantizer) -> None:
        super().__init__()
        self.vq = vq
