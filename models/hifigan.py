"""HiFi-GAN generator (jik876/hifi-gan V1/V2/V3) with its 22.05 kHz mel front end.

The upsampling head :class:`HiFiGANHead` is also the head of the EVA-GAN-style vocoder
(:mod:`models.evagan`), switched to SiLU and nested "parallel" resblocks there.

State-dict keys of :class:`HiFiGANVocoder` are ``head.<jik876 key>``; checkpoints in jik876's
layout (``conv_pre.*``, ``ups.{i}.*``, ``resblocks.{n}.convs1.{k}.*``, ``conv_post.*``) are mapped
by :meth:`HiFiGANVocoder.remap_state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from models.base import Vocoder
from models.layers import activation, wn_conv1d, wn_conv_transpose1d
from models.mel import MelConfig, MelFrontEnd

HEAD_PREFIXES = ("conv_pre.", "ups.", "resblocks.", "conv_post.")


class ResBlock1(nn.Module):
    """Per dilation d: act → conv(k, d) → act → conv(k, 1 or d) → residual add."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilations: Sequence[int],
        *,
        act: str = "lrelu",
        convs2_dilated: bool = False,
        init_std: float | None = 0.01,
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            wn_conv1d(channels, channels, kernel_size, dilation=d, init_std=init_std) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            wn_conv1d(channels, channels, kernel_size, dilation=d if convs2_dilated else 1, init_std=init_std)
            for d in dilations
        )
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(self.act(conv1(self.act(x))))
        return x


class ResBlock2(nn.Module):
    """Per dilation d: act → conv(k, d) → residual add."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilations: Sequence[int],
        *,
        act: str = "lrelu",
        init_std: float | None = 0.01,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            wn_conv1d(channels, channels, kernel_size, dilation=d, init_std=init_std) for d in dilations
        )
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        for conv in self.convs:
            x = x + conv(self.act(x))
        return x


class ParallelBlock(nn.Module):
    """Mean of several resblocks applied to the same input (keys ``blocks.{j}``)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        return torch.stack([block(x) for block in self.blocks], dim=0).mean(dim=0)


class HiFiGANHead(nn.Module):
    """conv_pre → [act → ConvTranspose → multi-receptive-field fusion] × stages → act → conv_post → tanh.

    Args:
        in_channels: Input feature channels (mels, or the context module's width).
        upsample_rates: Stride of each transposed convolution; their product is the hop.
        upsample_kernel_sizes: Kernel of each transposed convolution.
        initial_channel: Channels after ``conv_pre``; halved by every stage.
        resblock: ``"1"`` or ``"2"``.
        resblock_kernel_sizes: One resblock per kernel size in every stage.
        resblock_dilation_sizes: Dilations of each of those resblocks.
        act: ``"lrelu"`` (slope 0.1, final slope 0.01 as in jik876) or ``"silu"``.
        layout: ``"flat"`` (``resblocks[i * K + j]``, summed / K) or ``"nested"``
            (``resblocks[i].blocks[j]``, mean).
        pre_kernel: Kernel of ``conv_pre``.
        post_kernel: Kernel of ``conv_post``.
        convs2_dilated: ResBlock1's second convs use the dilation too.
    """

    def __init__(
        self,
        in_channels: int,
        upsample_rates: Sequence[int],
        upsample_kernel_sizes: Sequence[int],
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        *,
        act: str = "lrelu",
        layout: str = "flat",
        pre_kernel: int = 7,
        post_kernel: int = 7,
        convs2_dilated: bool = False,
    ) -> None:
        super().__init__()
        if resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {resblock!r}")
        if layout not in ("flat", "nested"):
            raise ValueError(f"layout must be 'flat' or 'nested', got {layout!r}")
        self.act_name = act
        self.layout = layout
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = wn_conv1d(in_channels, initial_channel, pre_kernel)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes):
            self.ups.append(
                wn_conv_transpose1d(
                    channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2, init_std=0.01
                )
            )
            channels //= 2
            blocks = []
            for k, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                if resblock == "1":
                    blocks.append(ResBlock1(channels, k, dilations, act=act, convs2_dilated=convs2_dilated))
                else:
                    blocks.append(ResBlock2(channels, k, dilations, act=act))
            if layout == "flat":
                self.resblocks.extend(blocks)
            else:
                self.resblocks.append(ParallelBlock(blocks))
        self.conv_post = wn_conv1d(channels, 1, post_kernel, init_std=0.01)
        self.act = activation(act, 0.1)
        self.act_post = activation(act, 0.01)

    def forward(self, features: Tensor) -> Tensor:
        """(B, in_channels, F) → (B, 1, F * prod(upsample_rates)); differentiable."""
        x = self.conv_pre(features)
        for i, up in enumerate(self.ups):
            x = up(self.act(x))
            if self.layout == "flat":
                blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
                acc = blocks[0](x)
                for block in blocks[1:]:
                    acc = acc + block(x)
                x = acc / self.num_kernels
            else:
                x = self.resblocks[i](x)
        return torch.tanh(self.conv_post(self.act_post(x)))


@dataclass(frozen=True)
class HiFiGANConfig:
    """jik876 HiFi-GAN generator hyper-parameters plus the mel front end it was trained on.

    Attributes mirror jik876's ``config.json`` (``resblock`` is ``"1"`` or ``"2"``).
    """

    resblock: str = "1"
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                f"{self.upsample_kernel_sizes} must have the same length"
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(
                f"resblock_kernel_sizes {self.resblock_kernel_sizes} and resblock_dilation_sizes "
                f"{self.resblock_dilation_sizes} must have the same length"
            )
        if math.prod(self.upsample_rates) != self.mel.hop_length:
            raise ValueError(
                f"prod(upsample_rates {self.upsample_rates}) must equal the mel hop_length "
                f"{self.mel.hop_length}"
            )

    @classmethod
    def from_jik876(cls, cfg: dict[str, Any]) -> HiFiGANConfig:
        """Build from the ``config.json`` jik876/hifi-gan writes next to its ``g_*`` files.

        Raises:
            ValueError: if a required key is missing or the config is for another architecture
                (e.g. BigVGAN's snake activations).
        """
        if "activation" in cfg and str(cfg["activation"]).startswith("snake"):
            raise ValueError("config.json describes a BigVGAN generator (snake activations); not supported")
        required = (
            "resblock",
            "upsample_rates",
            "upsample_kernel_sizes",
            "upsample_initial_channel",
            "resblock_kernel_sizes",
            "resblock_dilation_sizes",
        )
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ValueError(f"config.json lacks HiFi-GAN keys {missing}")
        mel = MelConfig(
            sample_rate=int(cfg.get("sampling_rate", 22050)),
            n_fft=int(cfg.get("n_fft", 1024)),
            win_length=int(cfg.get("win_size", 1024)),
            hop_length=int(cfg.get("hop_size", 256)),
            n_mels=int(cfg.get("num_mels", 80)),
            f_min=float(cfg.get("fmin", 0.0)),
            f_max=None if cfg.get("fmax", 8000) is None else float(cfg.get("fmax", 8000)),
        )
        return cls(
            resblock=str(cfg["resblock"]),
            upsample_rates=tuple(int(v) for v in cfg["upsample_rates"]),
            upsample_kernel_sizes=tuple(int(v) for v in cfg["upsample_kernel_sizes"]),
            upsample_initial_channel=int(cfg["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(int(v) for v in cfg["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in cfg["resblock_dilation_sizes"]),
            mel=mel,
        )

    def to_jik876(self) -> dict[str, Any]:
        """The generator/mel part of jik876's ``config.json`` for this config."""
        return {
            "resblock": self.resblock,
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "num_mels": self.mel.n_mels,
            "n_fft": self.mel.n_fft,
            "hop_size": self.mel.hop_length,
            "win_size": self.mel.win_length,
            "sampling_rate": self.mel.sample_rate,
            "fmin": self.mel.f_min,
            "fmax": self.mel.f_max,
        }


def _v1() -> HiFiGANConfig:
    return HiFiGANConfig()


def _v2() -> HiFiGANConfig:
    return HiFiGANConfig(upsample_initial_channel=128)


def _v3() -> HiFiGANConfig:
    return HiFiGANConfig(
        resblock="2",
        upsample_rates=(8, 8, 4),
        upsample_kernel_sizes=(16, 16, 8),
        upsample_initial_channel=256,
        resblock_kernel_sizes=(3, 5, 7),
        resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
    )


def _tiny() -> HiFiGANConfig:
    return HiFiGANConfig(
        upsample_rates=(8, 8, 4),
        upsample_kernel_sizes=(16, 16, 8),
        upsample_initial_channel=32,
        resblock_kernel_sizes=(3, 5),
        resblock_dilation_sizes=((1, 3), (1, 3)),
    )


class HiFiGANVocoder(Vocoder):
    """HiFi-GAN V1/V2/V3 vocoder with its LJSpeech-style 22.05 kHz log-mel front end.

    Example:
        >>> voc = HiFiGANVocoder(HiFiGANVocoder.preset("tiny")).eval()
        >>> voc(torch.zeros(1, 80, 10)).shape
        torch.Size([1, 2560])
    """

    family: ClassVar[str] = "hifigan"
    config_class: ClassVar[type] = HiFiGANConfig
    presets: ClassVar[dict[str, Any]] = {"v1": _v1, "v2": _v2, "v3": _v3, "tiny": _tiny}

    def __init__(self, config: HiFiGANConfig) -> None:
        super().__init__()
        self.config = config
        self.mel_frontend = MelFrontEnd(config.mel)
        self.head = HiFiGANHead(
            config.mel.n_mels,
            config.upsample_rates,
            config.upsample_kernel_sizes,
            config.upsample_initial_channel,
            config.resblock,
            config.resblock_kernel_sizes,
            config.resblock_dilation_sizes,
            act="lrelu",
            layout="flat",
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
    def remap_state_dict(cls, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prefix jik876's top-level keys with ``head.``."""
        return {(f"head.{k}" if k.startswith(HEAD_PREFIXES) else k): v for k, v in state_dict.items()}

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        return (
            any(k.startswith("head.conv_pre.") for k in keys)
            and any(k.startswith("head.resblocks.0.convs") for k in keys)
            and not any(k.startswith("backbone.") for k in keys)
        )

    @torch.inference_mode()
    def mel(self, wav: Tensor) -> Tensor:
        """Log-mel features (jik876 ``mel_spectrogram`` convention).

        Args:
            wav: (B, T) waveform in [-1, 1] at 22.05 kHz (or the config's rate).

        Returns:
            (B, n_mels, T // hop_length).
        """
        return self.mel_frontend(wav)

    def train_forward(self, mel: Tensor) -> Tensor:
        """Differentiable forward pass for training: (B, n_mels, F) → (B, 1, F * hop)."""
        return self.head(mel)

    @torch.inference_mode()
    def forward(self, mel: Tensor) -> Tensor:
        """Vocode.

        Args:
            mel: (B, n_mels, F) log-mel.

        Returns:
            (B, F * hop_length) waveform in [-1, 1].
        """
        check_mel(mel, self.n_mels)
        return self.head(mel).squeeze(1)


def check_mel(mel: Tensor, n_mels: int) -> None:
    """Raise ValueError unless ``mel`` has shape (B, n_mels, F) with F ≥ 1, naming both shapes."""
    if not isinstance(mel, Tensor) or mel.dim() != 3 or mel.shape[1] != n_mels:
        shape = tuple(mel.shape) if isinstance(mel, Tensor) else type(mel).__name__
        raise ValueError(f"mel must have shape (B, {n_mels}, F), got {shape}")
    if mel.shape[2] < 1:
        raise ValueError(f"mel must have shape (B, {n_mels}, F) with F >= 1, got {tuple(mel.shape)}")


__all__ = [
    "HiFiGANConfig",
    "HiFiGANHead",
    "HiFiGANVocoder",
    "ParallelBlock",
    "ResBlock1",
    "ResBlock2",
    "check_mel",
]
