"""Tonal buzz: narrow spectral peaks that stay at one frequency for a long time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.ndimage import binary_closing, find_objects, label, maximum_filter1d

from metrics.detectors._common import (
    DetectorEvent,
    _event,
    _n_fft,
    _prepare,
    _stft_power,
    _with_overrides,
    merge_events,
)

if TYPE_CHECKING:
    from metrics._common import ArrayLike


@dataclass(frozen=True)
class TonalBuzzConfig:
    """Thresholds of :func:`detect_tonal_buzz`.

    Calibrated on ``benchmarks/detector_calibration.py`` (figures in benchmarks/README.md), with the
    clean clip as reference: tones 150–3000 Hz at −20 to −10 dB re the speech RMS: precision 1.00,
    recall 0.85 (eSpeak NG) and 0.90 (real speech); no event on 180 clean eSpeak NG clips or the
    real recordings.
    """

    window_s: float = 0.09
    """STFT window (s): ~11 Hz resolution at 22–24 kHz separates a tone from neighbouring harmonics."""
    median_hz: float = 300.0
    """Width of the local median spectrum (Hz) that prominence is measured against: wide enough to
    reach the valleys on both sides of a harmonic of a voice up to ~300 Hz f0."""
    prominence_db: float = 10.0
    """A tonal peak stands 10 dB above the local median spectrum."""
    excess_db: float = 10.0
    """With a reference: the output's median prominence exceeds the reference's at the same frames and
    frequency (±1 bin) by 10 dB — the reference's harmonics, where they cross the frequency, are as
    prominent. Checked on the planted set of ``benchmarks/detector_calibration.py`` (tones 150–3000 Hz,
    −20 to −10 dB re the speech RMS, 0.5–1.2 s): recall 0.85 on eSpeak NG and 0.90 on real speech,
    precision 1.0. Lower values (6 dB, or prominence 8 dB) and longer gaps do not raise recall: the
    misses are tones at 250–720 Hz under voiced speech, where the tone's candidate region joins
    the voice's harmonics and its median excess drops; they need a different test, not a lower
    threshold."""
    self_level_mad_db: float = 0.5
    """Without a reference: a buzz's level varies by at most 0.5 dB (median absolute deviation over its
    frames), and the frames within ``edge_db`` of its median level still span ``min_duration_s``.
    Added tones measure ~0.1–0.2 dB; voice harmonics, which follow syllables and formants, are steady
    only for short stretches."""
    edge_db: float = 6.0
    """Event edges are the outermost frames within 6 dB of the median level: a frame that half covers
    a steady tone is 6 dB down, so the edges land where the tone starts and stops."""
    min_duration_s: float = 0.3
    """A buzz stays in one frequency bin (±1) for at least 300 ms; speech harmonics glide out of an
    11 Hz bin within a syllable."""
    max_gap_s: float = 0.05
    """Gaps up to 50 ms (a loud phoneme masking the tone) do not interrupt a tone."""
    min_hz: float = 40.0
    """Peaks below 40 Hz are ignored (DC and rumble are not buzz), and so are peaks within half of
    ``median_hz`` of Nyquist, where the local median is one-sided."""
    merge_s: float = 0.1
    """Candidates that overlap in time or lie within 100 ms are one event: a buzz with harmonics (or
    a hum whose partials come and go) is one artifact, not one per partial. Without this a buzzing
    vocoder reported one event per harmonic and per interruption — thousands per minute."""


TONAL_BUZZ = TonalBuzzConfig()
"""The thresholds :func:`detect_tonal_buzz` uses unless given others."""


def _local_median(logp: np.ndarray, width: int) -> np.ndarray:
    """Local median spectrum over about ``width`` bins, ``(frames, bins)`` → same shape.

    Median of three adjacent block medians (blocks of ``width // 3`` bins), linearly interpolated
    back to every bin: as robust to a narrow peak as a running median and ~20× faster.
    """
    n_frames, n = logp.shape
    blk = max(1, width // 3)
    nb = -(-n // blk)
    m = np.median(np.pad(logp, ((0, 0), (0, nb * blk - n)), mode="edge").reshape(n_frames, nb, blk), axis=2)
    mp = np.pad(m, ((0, 0), (1, 1)), mode="edge")
    m3 = np.median(np.stack([mp[:, :-2], mp[:, 1:-1], mp[:, 2:]]), axis=0)
    pos = np.clip((np.arange(n) - (blk - 1) / 2.0) / blk, 0.0, nb - 1.0)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, nb - 1)
    frac = pos - i0
    return m3[:, i0] * (1.0 - frac) + m3[:, i1] * frac


def detect_tonal_buzz(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    config: TonalBuzzConfig = TONAL_BUZZ,
    prominence_db: float | None = None,
    excess_db: float | None = None,
    min_duration_s: float | None = None,
) -> list[DetectorEvent]:
    """Tonal buzz: a narrow spectral peak that stays at one frequency for ≥ ``min_duration_s``.

    Hann STFT of ``config.window_s`` (hop a quarter window), levels floored 100 dB below the
    output's loudest bin. A bin is tonal in a frame when it is ≥ ``prominence_db`` above the median
    spectrum over ``config.median_hz`` around it. A bin (±1) tonal for ``min_duration_s``, allowing
    gaps up to ``config.max_gap_s``, is persistent; touching persistent bins and frames form one
    candidate. With a reference, a candidate is a buzz when its median prominence exceeds the
    reference's (at the same frames, frequency ±1 bin) by ``excess_db``. Without one, it is a buzz
    when its level is steady (median absolute deviation ≤ ``config.self_level_mad_db``), which
    the harmonics of a voice never are; a steady instrument note would count. The event's edges are
    the first and last frames whose level is within ``config.edge_db`` of the candidate's median.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        config: Thresholds (:class:`TonalBuzzConfig`; default :data:`TONAL_BUZZ`).
        prominence_db: Prominence over the local median; ``None`` = ``config.prominence_db`` (10 dB).
        excess_db: Prominence over the reference's; ``None`` = ``config.excess_db`` (10 dB).
        min_duration_s: Persistence; ``None`` = ``config.min_duration_s`` (0.3 s).

    Returns:
        Events ``"tonal_buzz"``. Strength = median prominence / ``prominence_db``; with a reference
        the smaller of that and median excess / ``excess_db``. ``detail``: ``frequency_hz`` (the
        most prominent bin), ``prominence_db`` (median), ``level_mad_db``, ``excess_db`` (median,
        with a reference).

    Example:
        >>> import numpy as np
        >>> t = np.arange(3 * 16000) / 16000
        >>> x = 0.05 * np.random.default_rng(0).standard_normal(t.size); y = x + 0.05 * np.sin(2 * np.pi * 1000 * t)
        >>> [round(e.detail["frequency_hz"]) for e in detect_tonal_buzz(y, 16000, x)]
        [1000]
    """
    cfg = _with_overrides(
        config, prominence_db=prominence_db, excess_db=excess_db, min_duration_s=min_duration_s
    )
    x, sr, r = _prepare(audio, sample_rate, reference)
    n_fft = _n_fft(cfg.window_s, sr)
    hop = max(1, n_fft // 4)
    min_frames = max(2, int(math.ceil(cfg.min_duration_s * sr / hop)))
    p = _stft_power(x, n_fft, hop)
    if p.shape[0] < min_frames or not p.max() > 0.0:
        return []
    floor = float(p.max()) * 1e-10
    width = max(3, int(round(cfg.median_hz * n_fft / sr)) | 1)
    logp = 10.0 * np.log10(np.maximum(p, floor))
    prom = logp - _local_median(logp, width)
    tonal = prom >= cfg.prominence_db
    # Near DC and Nyquist the median window is one-sided and the edge bins are real-valued (twice the variance).
    tonal[:, : int(math.ceil(cfg.min_hz * n_fft / sr))] = False
    tonal[:, int((sr / 2.0 - cfg.median_hz / 2.0) * n_fft / sr) :] = False
    pooled = maximum_filter1d(tonal.astype(np.uint8), 3, axis=1).astype(bool)
    gap = max(1, int(round(cfg.max_gap_s * sr / hop)))
    # Close gaps along time; pad so the closing cannot invent tonal frames at the clip's edges.
    padded = np.pad(pooled, ((gap, gap), (0, 0)))
    closed = binary_closing(padded, structure=np.ones((gap + 1, 1), bool))[gap:-gap] | pooled
    # Runs along time within each bin: label with a vertical-only structure, keep the long ones.
    runs, _ = label(closed, structure=np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool))
    run_len = np.bincount(runs.ravel())
    run_len[0] = 0
    persistent = run_len[runs] >= min_frames
    if not persistent.any():
        return []
    ref_prom = None
    if r is not None:
        logr = 10.0 * np.log10(np.maximum(_stft_power(r, n_fft, hop), floor))
        ref_prom = maximum_filter1d(logr - _local_median(logr, width), 3, axis=1)
    labels, _ = label(persistent, structure=np.ones((3, 3), bool))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    events = []
    for k, box in enumerate(find_objects(labels), start=1):
        t_idx, f_idx = np.nonzero((labels[box] == k) & tonal[box])
        if t_idx.size == 0:
            continue
        t_idx, f_idx = t_idx + box[0].start, f_idx + box[1].start
        med_prom = float(np.median(prom[t_idx, f_idx]))
        rows = np.unique(t_idx)
        level = np.full(p.shape[0], -np.inf)
        np.maximum.at(level, t_idx, logp[t_idx, f_idx])
        level = level[rows]
        mad = float(np.median(np.abs(level - np.median(level))))
        detail: dict[str, Any] = {
            "frequency_hz": freqs[f_idx[np.argmax(prom[t_idx, f_idx])]],
            "prominence_db": med_prom,
            "level_mad_db": mad,
        }
        strength = med_prom / cfg.prominence_db
        if ref_prom is not None:
            excess = float(np.median(prom[t_idx, f_idx] - ref_prom[t_idx, f_idx]))
            if excess < cfg.excess_db:
                continue
            detail["excess_db"] = excess
            strength = min(strength, excess / cfg.excess_db)
        edge = rows[level >= np.median(level) - cfg.edge_db]
        if ref_prom is None and (mad > cfg.self_level_mad_db or edge[-1] + 1 - edge[0] < min_frames):
            continue
        events.append(
            _event(
                "tonal_buzz",
                max(0.0, (edge[0] - 0.5) * hop / sr),
                min(x.shape[0] / sr, (edge[-1] + 0.5) * hop / sr),
                strength,
                **detail,
            )
        )
    return merge_events(events, min_gap_s=cfg.merge_s)
