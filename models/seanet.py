"""SEANet-style convolutional encoder / decoder (EnCodec's backbone, as used by SAT).

Encoder: (B, 1, T) → (B, dimension, T / prod(ratios)); decoder inverts the shapes. Strided
convolutions use kernel ``2r`` and padding ``ceil(r / 2)`` (transposed: output padding
``2 * ceil(r / 2) - r``) so lengths divide exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.layers import wn_conv1d, wn_conv_transpose1d


class ResidualUnit(nn.Module):
    """ELU → conv(k, dilation) to C/2 → ELU → conv(1) to C → residual add."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        hidden = max(channels // 2, 1)
        self.block = nn.Sequential(
            nn.ELU(),
            wn_conv1d(channels, hidden, kernel_size, dilation=dilation),
            nn.ELU(),
            wn_conv1d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        return x + self.block(x)


class SkipLSTM(nn.Module):
    """Multi-layer LSTM over time with a residual connection, on (B, C, T)."""

    def __init__(self, channels: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) → (B, C, T)."""
        y = x.permute(2, 0, 1)
        out, _ = self.lstm(y)
        return (out + y).permute(1, 2, 0)


def _stride_padding(ratio: int) -> int:
    return (ratio + 1) // 2


class SEANetEncoder(nn.Module):
    """Waveform → latent frames.

    Args:
        dimension: Output channels.
        n_filters: Channels of the first convolution (doubled at every stride).
        ratios: Strides in decoder order (as EnCodec); the encoder applies them reversed.
        lstm_layers: LSTM layers at the bottleneck (0 disables it).
        kernel_size: Kernel of the first and last convolutions.
        residual_kernel_size: Kernel of the residual units.
    """

    def __init__(
        self,
        dimension: int,
        n_filters: int,
        ratios: Sequence[int],
        *,
        lstm_layers: int = 2,
        kernel_size: int = 7,
        residual_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [wn_conv1d(1, n_filters, kernel_size)]
        channels = n_filters
        for ratio in reversed(list(ratios)):
            layers += [
                ResidualUnit(channels, residual_kernel_size),
                nn.ELU(),
                wn_conv1d(channels, channels * 2, 2 * ratio, stride=ratio, padding=_stride_padding(ratio)),
            ]
            channels *= 2
        if lstm_layers > 0:
            layers.append(SkipLSTM(channels, lstm_layers))
        layers += [nn.ELU(), wn_conv1d(channels, dimension, kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, wav: Tensor) -> Tensor:
        """(B, 1, T) → (B, dimension, T / prod(ratios))."""
        return self.model(wav)


class SEANetDecoder(nn.Module):
    """Latent frames → waveform; mirror of :class:`SEANetEncoder` (same arguments)."""

    def __init__(
        self,
        dimension: int,
        n_filters: int,
        ratios: Sequence[int],
        *,
        lstm_layers: int = 2,
        kernel_size: int = 7,
        residual_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        channels = n_filters * 2 ** len(ratios)
        layers: list[nn.Module] = [wn_conv1d(dimension, channels, kernel_size)]
        if lstm_layers > 0:
            layers.append(SkipLSTM(channels, lstm_layers))
        for ratio in ratios:
            pad = _stride_padding(ratio)
            layers += [
                nn.ELU(),
                wn_conv_transpose1d(channels, channels // 2, 2 * ratio, ratio, padding=pad, output_padding=2 * pad - ratio),
                ResidualUnit(channels // 2, residual_kernel_size),
            ]
            channels //= 2
        layers += [nn.ELU(), wn_conv1d(channels, 1, kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        """(B, dimension, F) → (B, 1, F * prod(ratios))."""
        return self.model(latent)
