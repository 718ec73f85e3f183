"""High-frequency loss: energy above a cutoff far below the reference's (needs a reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from metrics.detectors._common import (
    DetectorEvent,
    _db,
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
class HfLossConfig:
    """Thresholds of :func:`detect_hf_loss`.

    Calibrated on ``benchmarks/detector_calibration.py`` (figures in benchmarks/README.md), with the
    clean clip as reference: 0.4–0.8 s low-passed at 2.5–4.5 kHz: precision 1.00, recall 0.97
    (eSpeak NG) and 1.00 (real speech); the misses are stretches with little energy above 5.5 kHz in
    the reference to lose; no event on 180 clean eSpeak NG clips or the real recordings.
    """

    window_s: float = 0.04
    """STFT window (s) for the band energies; hop is a quarter of it."""
    cutoff_fraction: float = 0.5
    """Default cutoff as a fraction of Nyquist (5.5 kHz at 22.05 kHz): above it sit the fricatives
    and the "air" that band-limited vocoders lose."""
    loss_db: float = 20.0
    """A frame has lost its high frequencies when its band energy is ≥ 20 dB below the reference's."""
    ref_min_db: float = 45.0
    """Frames are judged only where the reference's band energy is within 45 dB of the reference's
    loudest frame (all bands): elsewhere there is no high-frequency content to lose."""
    merge_s: float = 0.3
    """Flagged frames within 300 ms are one region: vowels and short pauses without high-frequency
    energy inside a band-limited stretch do not split it (at 100 ms, a planted 0.4–0.8 s band-limited
    stretch of real speech was reported as 1.6 events on average)."""
    min_duration_s: float = 0.05
    """Regions shorter than 50 ms are dropped (one or two frames at a misaligned onset)."""


HF_LOSS = HfLossConfig()
"""The thresholds :func:`detect_hf_loss` uses unless given others."""


def detect_hf_loss(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    config: HfLossConfig = HF_LOSS,
    cutoff_hz: float | None = None,
    loss_db: float | None = None,
) -> list[DetectorEvent]:
    """High-frequency loss: band energy above ``cutoff_hz`` far below the reference's.

    Hann STFT of ``config.window_s`` (hop a quarter window); per frame the energy above the cutoff
    in output and reference. A frame is flagged when the output's is ≥ ``loss_db`` below the
    reference's, judged only where the reference's band energy is within ``config.ref_min_db`` of
    its loudest frame. Flagged frames within ``config.merge_s`` form a region; regions shorter
    than ``config.min_duration_s`` are dropped. Without a reference there is nothing to compare
    with and the result is empty.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Reference (same rate); required for any event.
        config: Thresholds (:class:`HfLossConfig`; default :data:`HF_LOSS`).
        cutoff_hz: Lower edge of the band; ``None`` = ``config.cutoff_fraction`` × Nyquist.
        loss_db: Smallest loss that counts; ``None`` = ``config.loss_db`` (20 dB).

    Returns:
        Events ``"hf_loss"``. Strength = median loss over the region's flagged frames / ``loss_db``.
        ``detail``: ``median_loss_db``, ``max_loss_db``, ``cutoff_hz``, ``n_frames`` (flagged).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0); ref = 0.1 * rng.standard_normal(16000)
        >>> out = ref.copy(); out[4000:12000] = np.convolve(ref, np.ones(8) / 8, "same")[4000:12000]
        >>> [(round(e.start_s, 2), round(e.end_s, 2)) for e in detect_hf_loss(out, 16000, ref)]
        [(0.26, 0.74)]
    """
    cfg = _with_overrides(config, loss_db=loss_db)
    x, sr, r = _prepare(audio, sample_rate, reference)
    if r is None:
        return []
    cutoff = cfg.cutoff_fraction * sr / 2.0 if cutoff_hz is None else float(cutoff_hz)
    if not 0.0 < cutoff < sr / 2.0:
        raise ValueError(f"cutoff_hz must be in (0, {sr / 2.0:g}) Hz (below Nyquist); got {cutoff:g}")
    n_fft = _n_fft(cfg.window_s, sr)
    hop = max(1, n_fft // 4)
    band = np.fft.rfftfreq(n_fft, 1.0 / sr) >= cutoff
    p, pr = _stft_power(x, n_fft, hop), _stft_power(r, n_fft, hop)
    ref_peak = float(pr.sum(axis=1).max())
    if ref_peak <= 0.0:
        return []
    e_out, e_ref = p[:, band].sum(axis=1), pr[:, band].sum(axis=1)
    eps = ref_peak * 1e-12
    loss = _db(e_ref + eps) - _db(e_out + eps)
    meaningful = e_ref >= ref_peak * 10.0 ** (-cfg.ref_min_db / 10.0)
    flagged = meaningful & (loss >= cfg.loss_db)
    events = []
    for s, e in _merge(_runs(flagged), max(1, int(round(cfg.merge_s * sr / hop)))):
        start, end = max(0.0, (s - 0.5) * hop / sr), min(x.shape[0] / sr, (e - 0.5) * hop / sr)
        if end - start < cfg.min_duration_s:
            continue
        losses = loss[s:e][flagged[s:e]]
        events.append(
            _event(
                "hf_loss",
                start,
                end,
                float(np.median(losses)) / cfg.loss_db,
                median_loss_db=float(np.median(losses)),
                max_loss_db=float(losses.max()),
                cutoff_hz=cutoff,
                n_frames=int(losses.size),
            )
        )
    return merge_events(events, min_gap_s=cfg.merge_s, min_duration_s=cfg.min_duration_s)
