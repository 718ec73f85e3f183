"""DC offset: a sliding-window mean far from zero."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from metrics.detectors._common import (
    DetectorEvent,
    _event,
    _prepare,
    _runs,
    _window_means,
    _with_overrides,
    merge_events,
)

if TYPE_CHECKING:
    from metrics._common import ArrayLike


@dataclass(frozen=True)
class DcOffsetConfig:
    """Thresholds of :func:`detect_dc_offset`.

    Calibrated on ``benchmarks/detector_calibration.py`` (figures in benchmarks/README.md), with the
    clean clip as reference: offsets 0.05–0.15 for 0.3–0.6 s: precision 1.00, recall 1.00 on both
    (threshold unchanged); no event on 180 clean eSpeak NG clips or the real recordings.
    """

    window_s: float = 0.1
    """Sliding window for the mean (s): 100 ms holds ≥ 5 periods of any voiced sound, so the mean of
    speech or music in it is close to zero."""
    hop_s: float = 0.01
    """Hop between windows (s)."""
    threshold: float = 0.03
    """|mean| above 0.03 full scale (−30 dBFS) in a window is an offset: 60 clean eSpeak NG utterances
    stay below 0.013 in 100 ms windows, and an offset of 0.03 makes an audible click where it starts
    or stops."""
    merge_s: float = 0.1
    """Regions less than 100 ms apart (one window) are one event: an offset whose windows dip just
    under the threshold in a loud vowel is still one offset."""


DC_OFFSET = DcOffsetConfig()
"""The thresholds :func:`detect_dc_offset` uses unless given others."""


def detect_dc_offset(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    config: DcOffsetConfig = DC_OFFSET,
    threshold: float | None = None,
    window_s: float | None = None,
) -> list[DetectorEvent]:
    """DC offset: |mean| over sliding windows above ``threshold``, merged into regions.

    Means are taken over ``window_s`` windows every ``config.hop_s``. Consecutive windows above the
    threshold form a region; its edges are placed where |mean| (interpolated between window
    centres) falls to half the region's largest value: for a step offset, that is where the step is.
    With a reference, a window counts only when the output's mean also differs from the reference's
    by more than ``threshold`` (an offset the reference has is not the model's). A clip shorter
    than one window has no events.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        config: Thresholds (:class:`DcOffsetConfig`; default :data:`DC_OFFSET`).
        threshold: Smallest |mean| that counts; ``None`` = ``config.threshold`` (0.03).
        window_s: Window length; ``None`` = ``config.window_s`` (0.1 s).

    Returns:
        Events ``"dc_offset"``. Strength = largest |window mean| in the region / ``threshold``.
        ``detail``: ``max_abs_mean``, ``region_mean`` (mean of the samples in the region),
        ``clip_mean`` (mean of the whole clip).

    Example:
        >>> import numpy as np
        >>> x = np.zeros(16000); x[8000:12000] = 0.1
        >>> [(round(e.start_s, 3), round(e.end_s, 3)) for e in detect_dc_offset(x, 16000)]
        [(0.5, 0.75)]
    """
    cfg = _with_overrides(config, threshold=threshold, window_s=window_s)
    x, sr, r = _prepare(audio, sample_rate, reference)
    win = max(1, int(round(cfg.window_s * sr)))
    hop = max(1, int(round(cfg.hop_s * sr)))
    if x.shape[0] < win:
        return []
    means, centres = _window_means(x, win, hop)
    mag = np.abs(means)
    over = mag > cfg.threshold
    if r is not None:
        over &= np.abs(means - _window_means(r, win, hop)[0]) > cfg.threshold

    def crossing(i: int, j: int, level: float) -> float:
        """Centre position (samples) between windows ``i`` (below ``level``) and ``j`` (above) where
        |mean| reaches ``level``; exact for a step offset, whose window mean is linear in position."""
        frac = (level - mag[i]) / max(mag[j] - mag[i], 1e-12)
        return centres[i] + float(np.clip(frac, 0.0, 1.0)) * (centres[j] - centres[i])

    events = []
    for s, e in _runs(over):
        peak = mag[s:e].max()
        half = np.flatnonzero(mag[s:e] >= 0.5 * peak)
        a, b = s + half[0], s + half[-1]
        start = 0.0 if a == 0 else crossing(a - 1, a, 0.5 * peak) / sr
        end = x.shape[0] / sr if b == len(means) - 1 else crossing(b + 1, b, 0.5 * peak) / sr
        i0, i1 = int(round(start * sr)), int(round(end * sr))
        events.append(
            _event(
                "dc_offset",
                start,
                end,
                peak / cfg.threshold,
                max_abs_mean=peak,
                region_mean=float(np.mean(x[i0 : max(i1, i0 + 1)])),
                clip_mean=float(np.mean(x)),
            )
        )
    return merge_events(events, min_gap_s=cfg.merge_s)
