"""EVA-GAN-style 44.1 kHz vocoder: ConvNeXt context-aware module + SiLU HiFi-GAN head.

Follows the public "firefly-gan-base" realisation (fishaudio/vocoder): keys ``backbone.*``
(:class:`models.convnext.ConvNeXtEncoder`) and ``head.*`` (:class:`models.hifigan.HiFiGANHead`
with nested parallel resblocks). Lightning checkpoints (``state_dict`` with ``generator.``
prefixes) load after the loader strips the prefix. fish-speech's causal ``FishConvNet``
variant (extra ``.conv.`` key level, left-only padding) is not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from models.base import Vocoder
from models.convnext import ConvNeXtEncoder
from models.hifigan import HiFiGANHead, check_mel
from models.mel import MelConfig, MelFrontEnd


def _firefly_mel(n_mels: int = 128) -> MelConfig:
    return MelConfig(
        sample_rate=44100,
        n_fft=2048,
        win_length=2048,
        hop_length=512,
        n_mels=n_mels,
        f_min=0.0,
        f_max=None,
        magnitude_eps=1e-6,
        padding="firefly",
    )


@dataclass(frozen=True)
class EVAGANConfig:
    """Hyper-parameters of the EVA-GAN-style vocoder (defaults: firefly-gan-base, 36.5 M).

    Attributes:
        cam_dims: Widths of the context-aware module's stages.
        cam_depths: ConvNeXt blocks per stage.
        cam_kernel_size: Kernel of the stem and depthwise convolutions (the "large kernel").
        layer_scale_init: Initial ConvNeXt γ.
        drop_path_rate: Stochastic depth (training only).
        upsample_rates: Head strides (product = mel hop, 512).
        upsample_kernel_sizes: Head transposed-conv kernels.
        upsample_initial_channel: Head width after ``conv_pre``.
        resblock_kernel_sizes: Kernels of the parallel ResBlock1s.
        resblock_dilation_sizes: Their dilations.
        pre_kernel: ``conv_pre`` kernel.
        post_kernel: ``conv_post`` kernel.
        mel: 44.1 kHz front end (n_fft 2048, hop 512, slaney mel, firefly padding).
    """

    cam_dims: tuple[int, ...] = (128, 256, 384, 512)
    cam_depths: tuple[int, ...] = (3, 3, 9, 3)
    cam_kernel_size: int = 7
    layer_scale_init: float = 1e-6
    drop_path_rate: float = 0.0
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    pre_kernel: int = 13
    post_kernel: int = 13
    mel: MelConfig = field(default_factory=_firefly_mel)

    def __post_init__(self) -> None:
        if len(self.cam_dims) != len(self.cam_depths):
            raise ValueError(
                f"cam_dims {self.cam_dims} and cam_depths {self.cam_depths} must have the same length"
            )
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                f"{self.upsample_kernel_sizes} must have the same length"
            )
        if math.prod(self.upsample_rates) != self.mel.hop_length:
            raise ValueError(
                f"prod(upsample_rates {self.upsample_rates}) must equal the mel hop_length {self.mel.hop_length}"
            )


def _base() -> EVAGANConfig:
    return EVAGANConfig()


def _base160() -> EVAGANConfig:
    return EVAGANConfig(mel=_firefly_mel(160))


def _tiny() -> EVAGANConfig:
    return EVAGANConfig(
        cam_dims=(32, 64),
        cam_depths=(1, 1),
        upsample_initial_channel=64,
        resblock_kernel_sizes=(3, 7),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
        mel=_firefly_mel(64),
    )


class EVAGANVocoder(Vocoder):
    """Mel (44.1 kHz, hop 512) → waveform through a ConvNeXt context module and a SiLU HiFi-GAN head.

    Example:
        >>> voc = EVAGANVocoder(EVAGANVocoder.preset("tiny")).eval()
        >>> voc(torch.zeros(1, 64, 4)).shape
        torch.Size([1, 2048])
    """

    family: ClassVar[str] = "evagan"
    config_class: ClassVar[type] = EVAGANConfig
    presets: ClassVar[dict[str, Any]] = {"base": _base, "base-160": _base160, "tiny": _tiny}

    def __init__(self, config: EVAGANConfig) -> None:
        super().__init__()
        self.config = config
        self.mel_frontend = MelFrontEnd(config.mel)
        self.backbone = ConvNeXtEncoder(
            config.mel.n_mels,
            config.cam_dims,
            config.cam_depths,
            kernel_size=config.cam_kernel_size,
            layer_scale_init=config.layer_scale_init,
            drop_path_rate=config.drop_path_rate,
        )
        self.head = HiFiGANHead(
            config.cam_dims[-1],
            config.upsample_rates,
            config.upsample_kernel_sizes,
            config.upsample_initial_channel,
            "1",
            config.resblock_kernel_sizes,
            config.resblock_dilation_sizes,
            act="silu",
            layout="nested",
            pre_kernel=config.pre_kernel,
            post_kernel=config.post_kernel,
        )

    @property
    def sample_rate(self) -> int:
        return self.config.mel.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.mel.hop_length

    @property
    def n_mels(self) -> int:
        return self.config.mel.n_mels

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        return any(k.startswith("backbone.stages.") for k in keys) and any(
            k.startswith("head.conv_pre.") for k in keys
        )

    @torch.inference_mode()
    def mel(self, wav: Tensor) -> Tensor:
        """Log-mel features (torchaudio slaney mel, firefly padding).

        Args:
            wav: (B, T) waveform in [-1, 1] at 44.1 kHz.

        Returns:
            (B, n_mels, T // 512).
        """
        return self.mel_frontend(wav)

    def train_forward(self, mel: Tensor) -> Tensor:
        """Differentiable forward pass for training: (B, n_mels, F) → (B, 1, F * hop)."""
        return self.head(self.backbone(mel))

    @torch.inference_mode()
    def forward(self, mel: Tensor) -> Tensor:
        """Vocode.

        Args:
            mel: (B, n_mels, F) log-mel.

        Returns:
            (B, F * 512) waveform in [-1, 1] at 44.1 kHz.
        """
        check_mel(mel, self.n_mels)
        return self.head(self.backbone(mel)).squeeze(1)
