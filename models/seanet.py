"""SEANet convolutional encoder / decoder with EnCodec's module tree (the backbone SAT uses).

Encoder: (B, 1, T) → (B, dimension, ceil(T / prod(ratios))); decoder: (B, dimension, F) →
(B, 1, F * prod(ratios)). The module tree, and therefore the state-dict keys, are EnCodec's
``encodec.modules.SEANetEncoder`` / ``SEANetDecoder`` (weight norm on every convolution)::

    model.{i}.conv.conv.{weight, bias}             padded convolution (EnCodec ``SConv1d``)
    model.{i}.convtr.convtr.{weight, bias}         transposed convolution (``SConvTranspose1d``)
    model.{i}.block.{1,3}.conv.conv.*              residual branch (ELU, conv k, ELU, conv 1)
    model.{i}.shortcut.conv.conv.*                 1×1 convolution skip (``true_skip=False``)
    model.{i}.lstm.{weight_ih_l0, ...}             bottleneck LSTM with a residual connection

The numerics follow EnCodec as well: convolutions pad ``(k - 1) * d - (s - 1)`` samples in total
(reflect mode; split with the extra sample on the left, or all on the left when ``causal``) plus
what the last stride window needs, and transposed convolutions trim ``k - s`` samples (right half
``(k - s) // 2``, or all of it when ``causal``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _extra_padding(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last strided window complete (EnCodec ``pad_for_conv1d``)."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return ideal_length - length


def _pad1d(x: Tensor, left: int, right: int, mode: str) -> Tensor:
    """``F.pad`` that also reflect-pads inputs shorter than the padding (zero-extends them first)."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode=mode)
    length = x.shape[-1]
    widest = max(left, right)
    extend = widest - length + 1 if length <= widest else 0
    if extend:
        x = F.pad(x, (0, extend))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extend] if extend else padded


class _NormConv1d(nn.Module):
    """Holds the weight-normed ``conv`` (EnCodec ``NormConv1d``; its ``norm`` is an identity)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int
    ) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation))


class _NormConvTranspose1d(nn.Module):
    """Holds the weight-normed ``convtr`` (EnCodec ``NormConvTranspose1d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.convtr = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride))


class PaddedConv1d(nn.Module):
    """Conv1d with EnCodec's 'same'-style padding; keys ``conv.conv.*``.

    Args:
        causal: Put all padding on the left.
        pad_mode: ``F.pad`` mode of the padding (EnCodec: ``"reflect"``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        causal: bool = False,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        self.conv = _NormConv1d(in_channels, out_channels, kernel_size, stride, dilation)
        self.causal = causal
        self.pad_mode = pad_mode
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T) → (B, C_out, ceil(T / stride))."""
        padding_total = (self.kernel_size - 1) * self.dilation - (self.stride - 1)
        extra = _extra_padding(x.shape[-1], self.kernel_size, self.stride, padding_total)
        if self.causal:
            left, right = padding_total, extra
        else:
            right = padding_total // 2
            left, right = padding_total - right, right + extra
        return self.conv.conv(_pad1d(x, left, right, self.pad_mode))


class TrimmedConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed to exactly ``stride`` outputs per input; keys ``convtr.convtr.*``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, *, causal: bool = False
    ) -> None:
        super().__init__()
        self.convtr = _NormConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self.causal = causal
        self.trim = kernel_size - stride

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, F) → (B, C_out, F * stride)."""
        y = self.convtr.convtr(x)
        right = self.trim if self.causal else self.trim // 2
        left = self.trim - right
        return y[..., left : y.shape[-1] - right]


class ResnetBlock(nn.Module):
    """ELU → conv(k, dilation) to C/compress → ELU → conv(1) to C, plus a 1×1-conv shortcut."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        *,
        compress: int = 2,
        causal: bool = False,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        hidden = channels // compress
        self.block = nn.Sequential(
            nn.ELU(),
            PaddedConv1d(channels, hidden, kernel_size, dilation=dilation, causal=causal, pad_mode=pad_mode),
            nn.ELU(),
            PaddedConv1d(hidden, channels, 1, causal=causal, pad_mode=pad_mode),
        )
        self.shortcut = PaddedConv1d(channels, channels, 1, causal=causal, pad_mode=pad_mode)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        return self.shortcut(x) + self.block(x)


class SkipLSTM(nn.Module):
    """Multi-layer LSTM over time with a residual connection, on (B, C, T); keys ``lstm.*``."""

    def __init__(self, channels: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        y = x.permute(2, 0, 1)
        out, _ = self.lstm(y)
        return (out + y).permute(1, 2, 0)


class SEANetEncoder(nn.Module):
    """Waveform → latent frames.

    Args:
        dimension: Output channels.
        n_filters: Channels of the first convolution (doubled at every stride).
        ratios: Strides in decoder order (as EnCodec); the encoder applies them reversed.
        n_residual_layers: Residual blocks per stage (dilations 1, 2, 4, ...).
        lstm_layers: LSTM layers at the bottleneck (0 disables it).
        kernel_size: Kernel of the first and last convolutions.
        residual_kernel_size: Kernel of the residual blocks.
        causal: EnCodec's causal padding (SAT runs non-causal).
    """

    def __init__(
        self,
        dimension: int,
        n_filters: int,
        ratios: Sequence[int],
        *,
        n_residual_layers: int = 1,
        lstm_layers: int = 2,
        kernel_size: int = 7,
        residual_kernel_size: int = 3,
        causal: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [PaddedConv1d(1, n_filters, kernel_size, causal=causal)]
        channels = n_filters
        for ratio in reversed(list(ratios)):
            layers += [
                ResnetBlock(channels, residual_kernel_size, 2**j, causal=causal)
                for j in range(n_residual_layers)
            ]
            layers += [nn.ELU(), PaddedConv1d(channels, channels * 2, 2 * ratio, stride=ratio, causal=causal)]
            channels *= 2
        if lstm_layers > 0:
            layers.append(SkipLSTM(channels, lstm_layers))
        layers += [nn.ELU(), PaddedConv1d(channels, dimension, kernel_size, causal=causal)]
        self.model = nn.Sequential(*layers)

    def forward(self, wav: Tensor) -> Tensor:
        """(B, 1, T) → (B, dimension, ceil(T / prod(ratios)))."""
        return self.model(wav)


class SEANetDecoder(nn.Module):
    """Latent frames → waveform; mirror of :class:`SEANetEncoder` (same arguments)."""

    def __init__(
        self,
        dimension: int,
        n_filters: int,
        ratios: Sequence[int],
        *,
        n_residual_layers: int = 1,
        lstm_layers: int = 2,
        kernel_size: int = 7,
        residual_kernel_size: int = 3,
        causal: bool = False,
    ) -> None:
        super().__init__()
        channels = n_filters * 2 ** len(ratios)
        layers: list[nn.Module] = [PaddedConv1d(dimension, channels, kernel_size, causal=causal)]
        if lstm_layers > 0:
            layers.append(SkipLSTM(channels, lstm_layers))
        for ratio in ratios:
            layers += [
                nn.ELU(),
                TrimmedConvTranspose1d(channels, channels // 2, 2 * ratio, ratio, causal=causal),
            ]
            layers += [
                ResnetBlock(channels // 2, residual_kernel_size, 2**j, causal=causal)
                for j in range(n_residual_layers)
            ]
            channels //= 2
        layers += [nn.ELU(), PaddedConv1d(channels, 1, kernel_size, causal=causal)]
        self.model = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        """(B, dimension, F) → (B, 1, F * prod(ratios))."""
        return self.model(latent)
