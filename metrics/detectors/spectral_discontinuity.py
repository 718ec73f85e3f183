"""Spectral discontinuities: spectral flux far above the reference's (or the clip's own)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.ndimage import maximum_filter1d, median_filter

from metrics.detectors._common import (
    DetectorEvent,
    _event,
    _merge,
    _n_fft,
    _prepare,
    _runs,
    _stft_power,
    _with_overrides,
    merge_events,
)

if TYPE_CHECKING:
    from metrics._common import ArrayLike


@dataclass(frozen=True)
class SpectralDiscontinuityConfig:
    """Thresholds of :func:`detect_spectral_discontinuities`.

    Calibrated on ``benchmarks/detector_calibration.py`` (figures in benchmarks/README.md), with the
    clean clip as reference: 20–40 ms noise splices: precision 1.00, recall 0.86 (eSpeak NG) and
    0.89 (real speech); no event on 180 clean eSpeak NG clips or the real recordings.
    """

    window_s: float = 0.02
    """STFT window (s) for the flux; hop is a quarter of it. 20 ms resolves a 30 ms glitch on its own."""
    bands: int = 32
    """Flux is measured on 32 mel-spaced band levels, not single bins: a noise-like band (fricative,
    noise floor) then varies by ~1–2 dB from frame to frame instead of ~8 dB, so a real jump stands
    out."""
    range_db: float = 60.0
    """Band levels are floored 60 dB below the loudest band, so changes in inaudible detail are
    ignored."""
    active_db: float = 40.0
    """Only frames within 40 dB of the loudest frame (or next to one) are judged."""
    ratio: float = 1.5
    """With a reference: the flux exceeds 1.5× the reference's largest flux at that frame ±1 frame
    ..."""
    margin_db: float = 2.0
    """... plus 2 dB (RMS over bands), so small differences in texture where the reference is steady
    (flux near 0) never count ..."""
    local_s: float = 0.2
    """... plus the output's own median flux over the surrounding 200 ms, so a noisy output (a noise
    floor in the pauses, where the reference is digital silence) is not a string of discontinuities.
    On speech, white noise up to −30 dBFS, a 3 ms delay, gain, low-pass or high-pass filtering reach
    at most 0.85 of this threshold; a 30 ms splice, noise burst, dropout or filtered burst reaches
    1.3–4. Lowered from 2× + 3 dB on the planted set of ``benchmarks/detector_calibration.py``:
    recall on 20–40 ms noise splices rose from 0.78 to 0.85 (eSpeak NG) and 0.76 to 0.89 (real speech)
    with no event on a 2-sample-delayed copy with −60 dBFS noise. The misses are splices into
    fricatives, where noise replaces noise."""
    self_k: float = 20.0
    """Without a reference: the flux is 20 robust standard deviations above the clip's median flux.
    Speech onsets reach up to ~14 on clean eSpeak NG utterances, so only gross jumps (a dropout or
    splice inside a steady sound) are found without a reference."""
    merge_s: float = 0.05
    """Flagged frames within 50 ms are one event: a glitch's onset and its end (up to ~40 ms later)
    are both jumps in flux, and were two events at 20 ms."""


SPECTRAL_DISCONTINUITY = SpectralDiscontinuityConfig()
"""The thresholds :func:`detect_spectral_discontinuities` uses unless given others."""


@lru_cache(maxsize=16)
def _mel_bands(n_fft: int, sr: float, n_bands: int) -> np.ndarray:
    """0/1 matrix ``(n_fft // 2 + 1, bands)`` grouping bins into mel-spaced bands above 50 Hz."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel = 2595.0 * np.log10(1.0 + freqs / 700.0)
    edges = np.linspace(2595.0 * np.log10(1.0 + 50.0 / 700.0), mel[-1] + 1e-9, n_bands + 1)
    band = np.searchsorted(edges, mel, side="right") - 1
    m = np.zeros((freqs.size, n_bands))
    ok = (band >= 0) & (band < n_bands)
    m[np.flatnonzero(ok), band[ok]] = 1.0
    return m[:, m.sum(axis=0) > 0]


def _band_flux(bands: np.ndarray, floor: float) -> np.ndarray:
    """RMS over bands of the frame-to-frame change in band level (dB, floored); 0 for frame 0."""
    logp = 10.0 * np.log10(np.maximum(bands, floor))
    flux = np.zeros(bands.shape[0])
    if bands.shape[0] > 1:
        flux[1:] = np.sqrt(np.mean(np.diff(logp, axis=0) ** 2, axis=1))
    return flux


def detect_spectral_discontinuities(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    config: SpectralDiscontinuityConfig = SPECTRAL_DISCONTINUITY,
    ratio: float | None = None,
    margin_db: float | None = None,
    self_k: float | None = None,
) -> list[DetectorEvent]:
    """Spectral discontinuities: frame-to-frame spectral flux far above what it should be.

    Flux is the RMS over ``config.bands`` mel-spaced bands of the change in band level (dB)
    between consecutive Hann frames of ``config.window_s`` (hop a quarter window). Band levels
    are floored ``config.range_db`` below the loudest band (of the reference, when given). Only
    frames within ``config.active_db`` of the loudest frame (or following one) are judged.

    With a reference, a frame is flagged when its flux exceeds ``ratio`` × the reference's largest
    flux at that frame ±1, plus ``margin_db``, plus the output's median flux over
    ``config.local_s`` around it: speech onsets are as abrupt in the reference, so they do not
    fire, and neither does the steady fluctuation of a noisy output. Without one, the threshold is
    the clip's median flux + ``self_k`` × 1.4826 × MAD over judged frames, and frames that reach into
    the padding at the clip's ends are not judged (much less sensitive; prefer a reference).
    Flagged frames within ``config.merge_s`` form one event.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        config: Thresholds (:class:`SpectralDiscontinuityConfig`; default :data:`SPECTRAL_DISCONTINUITY`).
        ratio: Factor over the reference's flux; ``None`` = ``config.ratio`` (1.5).
        margin_db: Additive margin in dB; ``None`` = ``config.margin_db`` (2 dB).
        self_k: Robust-z threshold without a reference; ``None`` = ``config.self_k`` (20).

    Returns:
        Events ``"spectral_discontinuity"``. Strength = largest flux / threshold over the event's
        frames. ``detail``: ``flux_db`` (largest), ``threshold_db`` (at that frame),
        ``reference_flux_db`` and ``local_flux_db`` (with a reference), ``mode`` (``"reference"`` or
        ``"self"``).

    Example:
        >>> import numpy as np
        >>> t = np.arange(16000) / 16000
        >>> ref = 0.5 * np.sin(2 * np.pi * 300 * t)
        >>> out = ref.copy(); out[8000:8480] = 0.5 * np.sin(2 * np.pi * 3000 * t[:480])  # 30 ms burst
        >>> [round(e.start_s, 2) for e in detect_spectral_discontinuities(out, 16000, ref)]
        [0.49]
    """
    cfg = _with_overrides(config, ratio=ratio, margin_db=margin_db, self_k=self_k)
    x, sr, r = _prepare(audio, sample_rate, reference)
    n_fft = _n_fft(cfg.window_s, sr)
    hop = max(1, n_fft // 4)
    m = _mel_bands(n_fft, sr, cfg.bands)
    b = _stft_power(x, n_fft, hop) @ m
    br = _stft_power(r, n_fft, hop) @ m if r is not None else None
    peak = float((br if br is not None else b).max())
    if peak <= 0.0:
        return []
    global_floor = peak * 10.0 ** (-cfg.range_db / 10.0)
    flux = _band_flux(b, global_floor)
    energy = b.sum(axis=1)
    active = energy >= energy.max() * 10.0 ** (-cfg.active_db / 10.0)
    active[1:] |= active[:-1]
    active[0] = False
    if br is None:
        # Frames that reach into the zero padding see the clip's start or end as an onset.
        edge = n_fft // (2 * hop) + 1
        active[:edge] = False
        active[max(0, active.size - edge) :] = False
    ref_flux = None
    if br is not None:
        ref_flux = maximum_filter1d(_band_flux(br, global_floor), 3, mode="nearest")
        local = median_filter(flux, max(3, int(round(cfg.local_s * sr / hop)) | 1), mode="nearest")
        thresh = cfg.ratio * ref_flux + cfg.margin_db + local
    else:
        judged = flux[active]
        if judged.size < 8:
            return []
        med = float(np.median(judged))
        mad = 1.4826 * float(np.median(np.abs(judged - med)))
        thresh = np.full(flux.shape, med + cfg.self_k * max(mad, 0.1))
    flagged = active & (flux > thresh)
    events = []
    for s, e in _merge(_runs(flagged), max(1, int(round(cfg.merge_s * sr / hop)))):
        k = s + int(np.argmax(flux[s:e] / thresh[s:e]))
        detail: dict[str, Any] = {
            "flux_db": flux[k],
            "threshold_db": thresh[k],
            "mode": "reference" if ref_flux is not None else "self",
        }
        if ref_flux is not None:
            detail["reference_flux_db"] = ref_flux[k]
            detail["local_flux_db"] = local[k]
        events.append(
            _event(
                "spectral_discontinuity",
                (s - 0.5) * hop / sr,
                min(x.shape[0] / sr, (e - 0.5) * hop / sr),
                flux[k] / thresh[k],
                **detail,
            )
        )
    return merge_events(events, min_gap_s=cfg.merge_s)
