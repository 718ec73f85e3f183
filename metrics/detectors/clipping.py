"""Clipping: runs of samples at the extreme value (near full scale, or flat tops below it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from metrics.detectors._common import (
    DetectorEvent,
    _event,
    _merge,
    _overlaps,
    _prepare,
    _runs,
    _with_overrides,
    merge_events,
)

if TYPE_CHECKING:
    from metrics._common import ArrayLike


@dataclass(frozen=True)
class ClippingConfig:
    """Thresholds of :func:`detect_clipping`.

    Calibrated on ``benchmarks/detector_calibration.py`` (figures in benchmarks/README.md), with the
    clean clip as reference: 80–150 ms overdriven 1.5–3×: precision 1.00, recall 1.00 on both (the
    thresholds predate the planted set and needed no change); no event on 180 clean eSpeak NG clips
    or the real recordings.
    """

    full_scale: float = 0.99
    """A peak at or above 0.99 counts as full scale (clipped by the output stage or int16 conversion)."""
    tolerance: float = 1e-4
    """Near full scale, samples within 1e-4 (~3 int16 steps) of the peak count as at the peak, so
    clipping that went through an int16 round trip or a float32 scaling is still a run."""
    min_run: int = 3
    """A clip is at least 3 consecutive samples at the peak (Audacity "Find Clipping" default). A
    band-limited signal reaches its maximum at one sample, two at most."""
    flat_min_run: int = 5
    """Below full scale a flat top (a limiter) must be at least 5 identical samples: int16-quantised
    quiet low-pitched speech can repeat its peak value over 2–3 samples."""
    flat_tolerance: float = 1e-7
    """Below full scale, "identical" is equal within 1e-7 (float32 rounding of a scaled clip level)."""
    flat_min_level: float = 0.01
    """A flat top must be at least 0.01 (−40 dBFS): a run of equal tiny values is silence, not
    clipping."""
    merge_s: float = 0.05
    """Runs within 50 ms are one event: a clipped voiced stretch clips every half period (f0 ≥ 50 Hz),
    and a short unvoiced sound inside a clipped stretch does not split it (at 20 ms, planted clipping
    in real speech was reported as 1.14 events per stretch; at 50 ms, 1.05)."""


CLIPPING = ClippingConfig()
"""The thresholds :func:`detect_clipping` uses unless given others."""


def _clip_events(x: np.ndarray, sr: float, cfg: ClippingConfig) -> list[DetectorEvent]:
    spans: list[tuple[int, int, float, int]] = []  # start, stop, level, min run for that polarity
    for sign in (1.0, -1.0):
        level = float(np.max(sign * x))
        if level >= cfg.full_scale:
            at, need = sign * x >= level - cfg.tolerance, cfg.min_run
        elif level >= cfg.flat_min_level:
            at, need = (
                sign * x >= level - cfg.flat_tolerance * max(level, 1.0),
                max(cfg.min_run, cfg.flat_min_run),
            )
        else:
            continue
        for s, e in _runs(at):
            if e - s >= need:
                spans.append((int(s), int(e), sign * level, need))
    if not spans:
        return []
    spans.sort()
    runs = np.array([(s, e) for s, e, _, _ in spans])
    events = []
    for s, e in _merge(runs, max(1, int(round(cfg.merge_s * sr)))):
        inside = spans[np.searchsorted(runs[:, 0], s) : np.searchsorted(runs[:, 0], e)]
        lengths = [b - a for a, b, _, _ in inside]
        k = int(np.argmax(lengths))
        events.append(
            _event(
                "clipping",
                s / sr,
                e / sr,
                lengths[k] / inside[k][3],
                n_runs=len(inside),
                n_clipped_samples=int(sum(lengths)),
                longest_run=lengths[k],
                level=inside[k][2],
                min_run=inside[k][3],
            )
        )
    return events


def detect_clipping(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    config: ClippingConfig = CLIPPING,
    full_scale: float | None = None,
    min_run: int | None = None,
) -> list[DetectorEvent]:
    """Clipping: runs of consecutive samples at the waveform's extreme value.

    Each polarity is checked on its own (clipping is often asymmetric). When the peak of a polarity
    is ≥ ``full_scale``, samples within ``config.tolerance`` of it count and a run needs
    ``min_run`` samples; below full scale only a flat top counts — ≥ ``config.flat_min_run``
    samples equal (within float rounding) to a peak of at least ``config.flat_min_level``.
    Runs within ``config.merge_s`` form one event. With a reference, events overlapping
    clipping in the reference are dropped.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        config: Thresholds (:class:`ClippingConfig`; default :data:`CLIPPING`).
        full_scale: Peak that counts as full scale; ``None`` = ``config.full_scale`` (0.99).
        min_run: Shortest run at full scale; ``None`` = ``config.min_run`` (3).

    Returns:
        Events ``"clipping"``. Strength = longest run / required run length. ``detail``: ``n_runs``,
        ``n_clipped_samples``, ``longest_run``, ``level`` (signed clip level), ``min_run``.

    Example:
        >>> import numpy as np
        >>> x = np.clip(2 * np.sin(2 * np.pi * 100 * np.arange(8000) / 8000), -1, 1)
        >>> len(detect_clipping(x, 8000)) == 1
        True
    """
    cfg = _with_overrides(config, full_scale=full_scale, min_run=min_run)
    x, sr, r = _prepare(audio, sample_rate, reference)
    events = _clip_events(x, sr, cfg)
    if r is not None and events:
        ref_events = _clip_events(r, sr, cfg)
        events = [ev for ev in events if not _overlaps(ev, ref_events)]
    return merge_events(events, min_gap_s=cfg.merge_s)
