"""Log-mel front ends, one per vocoder family (they are not interchangeable).

Two conventions from the reference table (``seed_models.md`` §1.2):

* ``"hifigan"`` (jik876/HiFi-GAN, BigVGAN): reflect-pad ``(n_fft - hop) // 2`` on both sides,
  ``center=False``, magnitude ``sqrt(re² + im² + 1e-9)``, librosa slaney mel basis.
* ``"firefly"`` (fishaudio EVA-GAN-style vocoder): reflect-pad ``(win - hop) // 2`` left and
  ``(win - hop + 1) // 2`` right, ``center=False``, magnitude ``sqrt(re² + im² + 1e-6)``.

Both then take ``log(clamp(mel, min=log_floor))``. With these paddings a waveform of
``T = k * hop`` samples gives exactly ``k`` frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio
from torch import Tensor, nn

from models.base import check_waveform

PADDING_MODES = ("hifigan", "firefly")


@dataclass(frozen=True)
class MelConfig:
    """Parameters of a log-mel front end.

    Attributes:
        sample_rate: Hz.
        n_fft: FFT size.
        win_length: Window length (≤ n_fft; the window is centred in the FFT frame).
        hop_length: Samples between frames.
        n_mels: Mel bands.
        f_min: Lowest mel filter edge in Hz.
        f_max: Highest mel filter edge in Hz (None: sample_rate / 2).
        window: ``"hann"`` (periodic, as ``torch.hann_window``).
        mel_scale: ``"slaney"`` or ``"htk"``.
        mel_norm: ``"slaney"`` (area normalisation, librosa's default) or None.
        magnitude_eps: Added under the square root of the magnitude.
        log_floor: Magnitudes are clamped to at least this before the log.
        padding: ``"hifigan"`` or ``"firefly"`` (see the module docstring).
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = 8000.0
    window: str = "hann"
    mel_scale: str = "slaney"
    mel_norm: str | None = "slaney"
    magnitude_eps: float = 1e-9
    log_floor: float = 1e-5
    padding: str = "hifigan"

    def __post_init__(self) -> None:
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}")
        if self.window != "hann":
            raise ValueError(f"only the 'hann' window is supported, got {self.window!r}")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"need 0 < win_length <= n_fft, got {self.win_length} and {self.n_fft}")
        if self.hop_length <= 0 or self.hop_length > self.win_length:
            raise ValueError(f"need 0 < hop_length <= win_length, got {self.hop_length}")

    @property
    def pad(self) -> tuple[int, int]:
        """(left, right) reflect padding in samples."""
        if self.padding == "hifigan":
            side = (self.n_fft - self.hop_length) // 2
            return side, side
        return (self.win_length - self.hop_length) // 2, (self.win_length - self.hop_length + 1) // 2


def mel_filterbank(config: MelConfig) -> Tensor:
    """Mel filterbank matrix.

    Args:
        config: Front-end parameters.

    Returns:
        (n_mels, n_fft // 2 + 1) float32 matrix; with slaney scale and norm it equals
        ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``.
    """
    f_max = config.f_max if config.f_max is not None else config.sample_rate / 2
    with torch.device("cpu"):  # data-dependent indexing inside: also build it under a meta-device context
        fb = torchaudio.functional.melscale_fbanks(
            n_freqs=config.n_fft // 2 + 1,
            f_min=float(config.f_min),
            f_max=float(f_max),
            n_mels=config.n_mels,
            sample_rate=config.sample_rate,
            norm=config.mel_norm,
            mel_scale=config.mel_scale,
        )
    return fb.T.contiguous().float()


class MelFrontEnd(nn.Module):
    """Waveform → log-mel, with non-persistent buffers (no state-dict keys).

    Example:
        >>> fe = MelFrontEnd(MelConfig())
        >>> fe(torch.zeros(2, 256 * 10)).shape
        torch.Size([2, 80, 10])
    """

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mel_basis", mel_filterbank(config), persistent=False)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def forward(self, wav: Tensor) -> Tensor:
        """Compute log-mel features.

        Args:
            wav: (B, T) waveform; T must exceed the reflect padding.

        Returns:
            (B, n_mels, F) with ``F = T // hop_length`` (for T ≥ hop_length).
        """
        left, right = self.config.pad
        check_waveform(wav, min_samples=max(left, right, self.config.hop_length) + 1)
        x = nn.functional.pad(wav.unsqueeze(1), (left, right), mode="reflect").squeeze(1)
        spec = torch.stft(
            x.float(),
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            win_length=self.config.win_length,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + self.config.magnitude_eps)
        mel = torch.matmul(self.mel_basis, magnitude)
        return torch.log(torch.clamp(mel, min=self.config.log_floor))
