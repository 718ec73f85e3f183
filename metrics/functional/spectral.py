"""Paired spectral distances between generated clips and their references (per item).

* :func:`mel_distance` — L1 between log-mel spectrograms, HiFi-GAN/BigVGAN convention.
* :func:`mrstft_distance` — multi-resolution STFT distance, equal to auraloss
  ``MultiResolutionSTFTLoss()`` evaluated on each item alone (batch 1, as BigVGAN evaluates).
* :func:`log_spectral_distance` — LSD on log10 power spectra.

All parameters that change the value are recorded in ``details`` and encoded in the name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import torch

from metrics._common import ArrayLike, MetricResult, resolve_device
from metrics.functional._pairs import DEFAULT_LENGTH_TOLERANCE, finish_paired, pair_waveforms


def _khz(sr: int) -> str:
    return f"{sr / 1000:g}k"


@lru_cache(maxsize=32)
def _mel_basis(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> torch.Tensor:
    import torchaudio

    # Slaney mel scale and Slaney area normalisation = librosa.filters.mel defaults (HiFi-GAN).
    fb = torchaudio.functional.melscale_fbanks(
        n_freqs=n_fft // 2 + 1,
        f_min=f_min,
        f_max=f_max if f_max is not None else sr / 2.0,
        n_mels=n_mels,
        sample_rate=sr,
        norm="slaney",
        mel_scale="slaney",
    )
    return fb.T.contiguous()  # (n_mels, n_freqs)


def mel_distance_name(
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> str:
    """Stable name, e.g. ``"mel_l1/hifigan-22.05k-n1024-h256-m80"``."""
    name = f"mel_l1/hifigan-{_khz(sample_rate)}-n{n_fft}-h{hop_length}-m{n_mels}"
    if win_length != n_fft:
        name += f"-w{win_length}"
    if f_min:
        name += f"-fmin{f_min:g}"
    if f_max is not None:
        name += f"-fmax{f_max:g}"
    return name


def hifigan_log_mel(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
    clip_val: float = 1e-5,
) -> torch.Tensor:
    """HiFi-GAN log-mel spectrogram of ``wav`` ``(B, T)`` → ``(B, n_mels, frames)``.

    Reflect-pad (n_fft − hop)/2 on both sides, ``center=False`` Hann STFT, magnitude
    √(re² + im² + 1e-9), Slaney mel, ln(clamp(·, clip_val)).

    Example:
        >>> hifigan_log_mel(torch.zeros(1, 22050), 22050).shape
        torch.Size([1, 80, 86])
    """
    pad = (n_fft - hop_length) // 2
    x = torch.nn.functional.pad(wav[:, None], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(win_length, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(
        x,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=False,
        onesided=True,
        return_complex=True,
    )
    mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    basis = _mel_basis(sample_rate, n_fft, n_mels, float(f_min), f_max).to(device=wav.device, dtype=wav.dtype)
    return torch.log(torch.clamp(basis @ mag, min=clip_val))


def mel_distance(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    sample_rate: int,
    *,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
    clip_val: float = 1e-5,
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> MetricResult:
    """Mel distance: mean |log-mel(gen) − log-mel(ref)| per item (HiFi-GAN/BigVGAN "mel error").

    Defaults are HiFi-GAN V1 at 22.05 kHz (BigVGAN 24 kHz uses ``n_mels=100``). Inputs are used
    at ``sample_rate`` as given (no resampling).

    Args:
        gen: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)`` of generated audio.
        ref: Reference audio, same structure.
        sample_rate: Sample rate of both, in Hz.
        n_fft: FFT size.
        hop_length: Hop in samples.
        win_length: Hann window length.
        n_mels: Mel bands.
        f_min: Lowest mel frequency (Hz).
        f_max: Highest mel frequency (Hz); ``None`` = Nyquist.
        clip_val: Floor before the natural log.
        length_tolerance: Allowed |len(gen) − len(ref)| in samples (cropped to the shorter).
        batch_size: Items per STFT batch.
        device: Torch device.

    Returns:
        MetricResult with per-item values (lower is better).

    Raises:
        ValueError: if lengths differ by more than ``length_tolerance`` (names both lengths).

    Example:
        >>> x = torch.randn(22050)
        >>> mel_distance(x, x, 22050).value
        0.0
    """
    dev = resolve_device(device, gen, ref)
    pairs = pair_waveforms(gen, ref, length_tolerance=length_tolerance, device=dev)
    kw = dict(
        n_fft=n_fft, hop_length=hop_length, win_length=win_length, n_mels=n_mels, f_min=f_min, f_max=f_max
    )
    per_item: dict[str, float] = {}
    for ids, g, r in pairs.batches(batch_size):
        d = (
            (
                hifigan_log_mel(g, sample_rate, clip_val=clip_val, **kw)
                - hifigan_log_mel(r, sample_rate, clip_val=clip_val, **kw)
            )
            .abs()
            .mean(dim=(1, 2))
        )
        per_item.update(zip(ids, d.double().tolist()))
    per_item = {i: per_item[i] for i in pairs.ids}
    return finish_paired(
        mel_distance_name(sample_rate, **kw),
        per_item,
        pairs,
        False,
        {
            "protocol": "hifigan",
            "sample_rate": sample_rate,
            **kw,
            "clip_val": clip_val,
            "log": "ln",
            "magnitude": "sqrt(re^2+im^2+1e-9)",
            "mel": "slaney/slaney-norm",
            "padding": "reflect (n_fft-hop)/2, center=False",
        },
    )


AURALOSS_FFT_SIZES = (1024, 2048, 512)
AURALOSS_HOP_SIZES = (120, 240, 50)
AURALOSS_WIN_LENGTHS = (600, 1200, 240)


def mrstft_distance_name(
    fft_sizes: Sequence[int] = AURALOSS_FFT_SIZES,
    hop_sizes: Sequence[int] = AURALOSS_HOP_SIZES,
    win_lengths: Sequence[int] = AURALOSS_WIN_LENGTHS,
) -> str:
    """``"mrstft/auraloss-default"`` for the usual resolutions, else one encoding all of them."""
    if (tuple(fft_sizes), tuple(hop_sizes), tuple(win_lengths)) == (
        AURALOSS_FFT_SIZES,
        AURALOSS_HOP_SIZES,
        AURALOSS_WIN_LENGTHS,
    ):
        return "mrstft/auraloss-default"
    return "mrstft/auraloss-" + "_".join(f"{n}-{h}-{w}" for n, h, w in zip(fft_sizes, hop_sizes, win_lengths))


def mrstft_distance(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    *,
    fft_sizes: Sequence[int] = AURALOSS_FFT_SIZES,
    hop_sizes: Sequence[int] = AURALOSS_HOP_SIZES,
    win_lengths: Sequence[int] = AURALOSS_WIN_LENGTHS,
    eps: float = 1e-8,
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> MetricResult:
    """Multi-resolution STFT distance (BigVGAN/BigVSAN "M-STFT"), per item.

    For each resolution: Hann STFT (``torch.stft`` defaults: ``center=True``, reflect padding),
    |X| = √max(re² + im², eps); spectral convergence ‖|Y|−|X|‖_F / ‖|Y|‖_F (Y = reference)
    plus mean |log|X| − log|Y||. The item value is the mean over resolutions. This equals
    ``auraloss.freq.MultiResolutionSTFTLoss()(gen[None, None], ref[None, None])`` per item;
    the Frobenius norms are per item, never across a batch.

    Args:
        gen: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)`` of generated audio.
        ref: Reference audio, same structure.
        fft_sizes: FFT sizes.
        hop_sizes: Hops.
        win_lengths: Hann window lengths.
        eps: Floor on the squared magnitude.
        length_tolerance: Allowed |len(gen) − len(ref)| in samples.
        batch_size: Items per STFT batch.
        device: Torch device.

    Returns:
        MetricResult with per-item values; ``details`` has the per-resolution means.

    Example:
        >>> x = torch.randn(16000)
        >>> mrstft_distance(x, x).value
        0.0
    """
    if not len(fft_sizes) == len(hop_sizes) == len(win_lengths):
        raise ValueError(
            f"fft_sizes, hop_sizes and win_lengths must have equal lengths; got "
            f"{len(fft_sizes)}, {len(hop_sizes)}, {len(win_lengths)}"
        )
    dev = resolve_device(device, gen, ref)
    pairs = pair_waveforms(gen, ref, length_tolerance=length_tolerance, device=dev)
    per_item: dict[str, float] = {}
    sc_terms: dict[str, list[float]] = {}
    for ids, g, r in pairs.batches(batch_size):
        total = torch.zeros(g.shape[0], dtype=torch.float64, device=dev)
        for n_fft, hop, win in zip(fft_sizes, hop_sizes, win_lengths):
            window = torch.hann_window(win, device=dev, dtype=g.dtype)
            mags = []
            for w in (g, r):
                s = torch.stft(w, n_fft, hop_length=hop, win_length=win, window=window, return_complex=True)
                mags.append(torch.sqrt(torch.clamp(s.real.pow(2) + s.imag.pow(2), min=eps)))
            xm, ym = mags
            sc = torch.linalg.vector_norm(ym - xm, dim=(1, 2)) / torch.linalg.vector_norm(ym, dim=(1, 2))
            logmag = (torch.log(xm) - torch.log(ym)).abs().mean(dim=(1, 2))
            total += (sc + logmag).double()
            for i, v in zip(ids, sc.tolist()):
                sc_terms.setdefault(i, []).append(v)
        per_item.update(zip(ids, (total / len(fft_sizes)).tolist()))
    per_item = {i: per_item[i] for i in pairs.ids}
    return finish_paired(
        mrstft_distance_name(fft_sizes, hop_sizes, win_lengths),
        per_item,
        pairs,
        False,
        {
            "fft_sizes": list(fft_sizes),
            "hop_sizes": list(hop_sizes),
            "win_lengths": list(win_lengths),
            "window": "hann",
            "eps": eps,
            "w_sc": 1.0,
            "w_log_mag": 1.0,
            "center": True,
            "reduction": "per item",
        },
    )


def log_spectral_distance_name(n_fft: int = 2048, hop_length: int = 512) -> str:
    """Stable name, e.g. ``"lsd/log10pow-n2048-h512"``."""
    return f"lsd/log10pow-n{n_fft}-h{hop_length}"


def log_spectral_distance(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    *,
    n_fft: int = 2048,
    hop_length: int = 512,
    eps: float = 1e-8,
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> MetricResult:
    """Log-spectral distance per item (NU-Wave / AudioSR convention, units of log10 power).

    LSD = mean over frames of √(mean over bins of (log10(|X|²+eps) − log10(|Y|²+eps))²), with a
    Hann STFT (``center=True``, reflect padding, window = ``n_fft``). Multiply by 10 for dB.

    Args:
        gen: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)`` of generated audio.
        ref: Reference audio, same structure.
        n_fft: FFT size (= window length).
        hop_length: Hop.
        eps: Added to the power before log10.
        length_tolerance: Allowed |len(gen) − len(ref)| in samples.
        batch_size: Items per STFT batch.
        device: Torch device.

    Returns:
        MetricResult with per-item values (lower is better).

    Example:
        >>> x = torch.randn(16000)
        >>> round(log_spectral_distance(10 * x, x).value, 3)
        2.0
    """
    dev = resolve_device(device, gen, ref)
    pairs = pair_waveforms(gen, ref, length_tolerance=length_tolerance, device=dev)
    per_item: dict[str, float] = {}
    for ids, g, r in pairs.batches(batch_size):
        window = torch.hann_window(n_fft, device=dev, dtype=g.dtype)
        logs = []
        for w in (g, r):
            s = torch.stft(w, n_fft, hop_length=hop_length, window=window, return_complex=True)
            logs.append(torch.log10(s.real.pow(2) + s.imag.pow(2) + eps))
        d = torch.sqrt((logs[0] - logs[1]).pow(2).mean(dim=1)).mean(dim=1)
        per_item.update(zip(ids, d.double().tolist()))
    per_item = {i: per_item[i] for i in pairs.ids}
    return finish_paired(
        log_spectral_distance_name(n_fft, hop_length),
        per_item,
        pairs,
        False,
        {
            "n_fft": n_fft,
            "hop_length": hop_length,
            "window": "hann",
            "eps": eps,
            "log": "log10 power",
            "center": True,
        },
    )
