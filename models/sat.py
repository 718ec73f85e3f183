"""SAT scale-level audio tokenizer: SEANet encoder → multi-scale RVQ → SEANet decoder.

Audio is cut into independent windows of ``window_frames`` latent frames (SAT: 75 frames =
1 s at 24 kHz with hop 320); each window is tokenized into one token map per scale. Lengths
that are not a whole number of windows are zero-padded for encoding; :meth:`reconstruct`
trims back to the input length.

The module tree is SAT's (qiuk2/AAR ``model/SAT.py``), so the released training files
(``{"generator_state_dict": ...}`` with ``module.`` prefixes, e.g. ``SAT_d128_lat128.pth``) load
as they are: ``encoder.model.*`` / ``decoder.model.*`` (EnCodec SEANet, legacy ``weight_g`` /
``weight_v``), ``quantizer.vq.{project_in, project_out, quant_resi.qresi_ls, layers.{k}._codebook}``.
Their EMA statistics (``_codebook.{inited, cluster_size, embed_avg}``) are dropped on load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from models.base import Tokenizer, check_waveform
from models.quantizer import MultiScaleResidualQuantizer, SATQuantizer, drop_ema_statistics, scale_schedule
from models.seanet import SEANetDecoder, SEANetEncoder


@dataclass(frozen=True)
class SATConfig:
    """SAT tokenizer hyper-parameters (defaults: the released ``SAT_d128_lat128`` used by AAR).

    Attributes:
        sample_rate: Hz.
        n_filters: First encoder convolution width.
        ratios: Strides (decoder order); hop = prod(ratios).
        dimension: Encoder output / decoder input channels.
        latent_dim: Quantizer dimension (Linear projections when it differs from ``dimension``).
        n_residual_layers: SEANet residual blocks per stage.
        lstm_layers: Bottleneck LSTM layers (0: none).
        causal: EnCodec's causal padding (the released SAT models run non-causal).
        codebook_size: Codes per scale.
        window_frames: Latent frames per independently tokenized window (= last scale).
        num_scales: Number of scales K.
        scale_schedule: ``"quadratic"`` or ``"linear"``; ignored when ``scales`` is given.
        scales: Explicit token-map lengths, last equal to ``window_frames``.
        phi_count: Shared Φ convolutions.
        phi_kernel: Φ kernel size.
        quant_resi: Φ mixing ratio.
    """

    sample_rate: int = 24000
    n_filters: int = 32
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    dimension: int = 128
    latent_dim: int = 128
    n_residual_layers: int = 1
    lstm_layers: int = 2
    causal: bool = False
    codebook_size: int = 1024
    window_frames: int = 75
    num_scales: int = 16
    scale_schedule: str = "quadratic"
    scales: tuple[int, ...] | None = None
    phi_count: int = 6
    phi_kernel: int = 9
    quant_resi: float = 0.5

    def __post_init__(self) -> None:
        scales = self.resolved_scales
        if scales[-1] != self.window_frames:
            raise ValueError(
                f"the last scale must equal window_frames {self.window_frames}, got scales {scales}"
            )
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")

    @property
    def resolved_scales(self) -> tuple[int, ...]:
        """Token-map length of every scale."""
        if self.scales is not None:
            return tuple(self.scales)
        return scale_schedule(self.window_frames, self.num_scales, self.scale_schedule)

    @property
    def hop_length(self) -> int:
        """Samples per latent frame."""
        return math.prod(self.ratios)

    @property
    def window_samples(self) -> int:
        """Samples per tokenized window."""
        return self.window_frames * self.hop_length


def _d1024_lat64() -> SATConfig:
    return SATConfig(dimension=1024, latent_dim=64)


def _tiny() -> SATConfig:
    return SATConfig(
        sample_rate=16000,
        n_filters=8,
        ratios=(4, 4, 2),
        dimension=32,
        latent_dim=16,
        lstm_layers=1,
        codebook_size=64,
        window_frames=16,
        num_scales=4,
        phi_count=2,
        phi_kernel=3,
    )


class SATTokenizer(Tokenizer):
    """Waveform ↔ multi-scale token maps.

    Example:
        >>> tok = SATTokenizer(SATTokenizer.preset("tiny")).eval()
        >>> [t.shape for t in tok.encode(torch.zeros(2, 512))]
        [torch.Size([2, 1, 1]), torch.Size([2, 1, 4]), torch.Size([2, 1, 9]), torch.Size([2, 1, 16])]
    """

    family: ClassVar[str] = "sat"
    config_class: ClassVar[type] = SATConfig
    presets: ClassVar[dict[str, Any]] = {
        "sat-d128-lat128": SATConfig,  # SAT_d128_lat128.pth, the tokenizer of AAR
        "sat-d1024-lat64": _d1024_lat64,  # SAT_bs_1536_d1024_lat64.pth
        "sat": SATConfig,
        "d128": SATConfig,
        "tiny": _tiny,
    }

    def __init__(self, config: SATConfig) -> None:
        super().__init__()
        self.config = config
        seanet = {
            "n_residual_layers": config.n_residual_layers,
            "lstm_layers": config.lstm_layers,
            "causal": config.causal,
        }
        self.encoder = SEANetEncoder(config.dimension, config.n_filters, config.ratios, **seanet)
        self.decoder = SEANetDecoder(config.dimension, config.n_filters, config.ratios, **seanet)
        self.quantizer = SATQuantizer(
            MultiScaleResidualQuantizer(
                config.latent_dim,
                config.resolved_scales,
                config.codebook_size,
                dimension=config.dimension,
                phi_count=config.phi_count,
                phi_kernel=config.phi_kernel,
                resi_ratio=config.quant_resi,
            )
        )

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def rvq(self) -> MultiScaleResidualQuantizer:
        """The multi-scale quantizer (``quantizer.vq``)."""
        return self.quantizer.vq

    @property
    def scales(self) -> tuple[int, ...]:
        """Token-map length of each scale within one window."""
        return self.rvq.scales

    @property
    def window_samples(self) -> int:
        """Samples per independently tokenized window."""
        return self.config.window_samples

    @property
    def tokens_per_second(self) -> float:
        """``sum(scales)`` tokens per window, divided by the window duration."""
        return sum(self.scales) * self.sample_rate / self.window_samples

    @property
    def bits_per_second(self) -> float:
        """``tokens_per_second * log2(codebook_size)``."""
        return self.tokens_per_second * math.log2(self.config.codebook_size)

    @classmethod
    def remap_state_dict(cls, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop SAT's EMA codebook statistics (``_codebook.{inited, cluster_size, embed_avg}``)."""
        return drop_ema_statistics(state_dict, "quantizer.")

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        return any(k.startswith("quantizer.vq.layers.") for k in keys) and not any(
            k.startswith(("tokenizer.", "blocks.")) for k in keys
        )

    def _windows(self, wav: Tensor) -> tuple[Tensor, int]:
        batch, length = wav.shape
        n_windows = max(1, -(-length // self.window_samples))
        total = n_windows * self.window_samples
        if total != length:
            wav = nn.functional.pad(wav, (0, total - length))
        return wav.reshape(batch * n_windows, 1, self.window_samples), n_windows

    def encode_latent(self, wav: Tensor) -> Tensor:
        """Encoder + input projection: (B, T) → (B·W, latent_dim, window_frames), W windows."""
        check_waveform(wav)
        windows, _ = self._windows(wav)
        return self.rvq.project_latent(self.encoder(windows))

    def decode_latent(self, f_hat: Tensor) -> Tensor:
        """Output projection + decoder: (N, latent_dim, window_frames) → (N, window_samples)."""
        return self.decoder(self.rvq.unproject_latent(f_hat)).squeeze(1)

    @torch.inference_mode()
    def encode(self, wav: Tensor) -> list[Tensor]:
        """Tokenize.

        Args:
            wav: (B, T) waveform at ``sample_rate``; zero-padded to W = ceil(T / window_samples)
                whole windows.

        Returns:
            K LongTensors, scale k of shape (B, W, s_k).
        """
        check_waveform(wav)
        batch = wav.shape[0]
        windows, n_windows = self._windows(wav)
        tokens, _ = self.rvq.quantize(self.rvq.project_latent(self.encoder(windows)))
        return [t.reshape(batch, n_windows, t.shape[-1]) for t in tokens]

    def _check_tokens(self, tokens: Sequence[Tensor]) -> tuple[list[Tensor], int, int]:
        if not isinstance(tokens, (list, tuple)) or len(tokens) != len(self.scales):
            got = len(tokens) if isinstance(tokens, (list, tuple)) else type(tokens).__name__
            raise ValueError(f"expected a list of {len(self.scales)} token maps (one per scale), got {got}")
        first = tokens[0]
        if first.dim() not in (2, 3):
            raise ValueError(f"token maps must have shape (B, W, s_k) or (B, s_k), got {tuple(first.shape)}")
        batch = first.shape[0]
        n_windows = first.shape[1] if first.dim() == 3 else 1
        flat = []
        for k, (t, size) in enumerate(zip(tokens, self.scales)):
            expected = (batch, n_windows, size) if first.dim() == 3 else (batch, size)
            if tuple(t.shape) != expected:
                raise ValueError(f"token map {k} must have shape {expected}, got {tuple(t.shape)}")
            if t.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"token map {k} must be an integer tensor, got dtype {t.dtype}")
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.config.codebook_size):
                raise ValueError(f"token map {k} has ids outside [0, {self.config.codebook_size})")
            flat.append(t.reshape(batch * n_windows, size).long())
        return flat, batch, n_windows

    @torch.inference_mode()
    def decode(self, tokens: list[Tensor]) -> Tensor:
        """Detokenize.

        Args:
            tokens: K LongTensors of shape (B, W, s_k) as returned by :meth:`encode`, or (B, s_k)
                for a single window.

        Returns:
            (B, W * window_samples) waveform.
        """
        flat, batch, n_windows = self._check_tokens(tokens)
        wav = self.decode_latent(self.rvq.dequantize(flat))
        return wav.reshape(batch, n_windows * self.window_samples)

    @torch.inference_mode()
    def forward(self, wav: Tensor) -> Tensor:
        """Same as :meth:`reconstruct`: (B, T) → (B, T)."""
        return self.reconstruct(wav)
