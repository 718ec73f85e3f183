"""Small building blocks shared by the families (weight-normed convolutions, activations)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd kernel: ``(k * d - d) // 2``."""
    return (kernel_size * dilation - dilation) // 2


def wn_conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    padding: int | None = None,
    init_std: float | None = None,
    bias: bool = True,
) -> nn.Conv1d:
    """Conv1d with weight norm (``parametrizations.weight.original0/1`` keys).

    Args:
        init_std: If given, weights are drawn from N(0, init_std) before weight norm is applied.
    """
    conv = nn.Conv1d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        dilation=dilation,
        padding=get_padding(kernel_size, dilation) if padding is None else padding,
        bias=bias,
    )
    if init_std is not None:
        nn.init.normal_(conv.weight, 0.0, init_std)
    return weight_norm(conv)


def wn_conv_transpose1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    *,
    padding: int,
    output_padding: int = 0,
    init_std: float | None = None,
) -> nn.ConvTranspose1d:
    """ConvTranspose1d with weight norm (g has shape (in, 1, 1), as in the legacy API)."""
    conv = nn.ConvTranspose1d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
    )
    if init_std is not None:
        nn.init.normal_(conv.weight, 0.0, init_std)
    return weight_norm(conv)


def activation(name: str, negative_slope: float = 0.1) -> Callable[[Tensor], Tensor]:
    """Return ``"lrelu"`` (with ``negative_slope``) or ``"silu"`` as a module."""
    if name == "lrelu":
        return nn.LeakyReLU(negative_slope)
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"activation must be 'lrelu' or 'silu', got {name!r}")
