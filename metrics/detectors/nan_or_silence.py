"""Non-finite samples, and digital silence where the reference is not silent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from metrics.detectors._common import (
    DetectorEvent,
    _check_rate,
    _db,
    _event,
    _merge,
    _mono,
    _prepare,
    _runs,
    _window_means,
    _with_overrides,
    merge_events,
)

if TYPE_CHECKING:
    from metrics._common import ArrayLike


@dataclass(frozen=True)
class NanOrSilenceConfig:
    """Thresholds of :func:`detect_nan_or_silence`.

    Calibrated on ``benchmarks/detector_calibration.py`` (figures in benchmarks/README.md), with the
    clean clip as reference: 0.25–0.4 s dropouts to digital zero: precision 1.00, recall 1.00 on
    both (thresholds unchanged); no event on 180 clean eSpeak NG clips or the real recordings.
    """

    nan_merge_s: float = 0.01
    """Non-finite samples within 10 ms are one event."""
    silence_dbfs: float = -60.0
    """A window is silent below −60 dBFS RMS (below typical playback noise floors)."""
    window_s: float = 0.02
    """RMS window (s), evaluated every half window."""
    min_duration_s: float = 0.2
    """Silence shorter than 200 ms is a pause or a stop closure, not a dropout."""
    ref_active_dbfs: float = -50.0
    """The reference is "not silent" in a window at −50 dBFS RMS or more: 10 dB above the silence
    threshold, so a model that renders −55 dBFS breath noise as digital silence is not flagged."""
    ref_merge_s: float = 0.1
    """Reference-active windows within 100 ms (a stop closure) are one region."""
    merge_s: float = 0.1
    """Silences less than 100 ms apart are one dropout (a click or a blip of noise inside a dropout
    does not make it two). Non-finite and silence events are merged separately: they are different
    faults, told apart by ``detail["kind"]``."""


NAN_OR_SILENCE = NanOrSilenceConfig()
"""The thresholds :func:`detect_nan_or_silence` uses unless given others."""


def _merged(events: list[DetectorEvent], cfg: NanOrSilenceConfig) -> list[DetectorEvent]:
    """Each kind merged on its own, then all sorted by start time."""
    non_finite = [e for e in events if e.detail["kind"] == "non_finite"]
    silence = [e for e in events if e.detail["kind"] == "silence"]
    merged = merge_events(non_finite, min_gap_s=cfg.nan_merge_s) + merge_events(
        silence, min_gap_s=cfg.merge_s
    )
    return sorted(merged, key=lambda ev: ev.start_s)


def detect_nan_or_silence(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    config: NanOrSilenceConfig = NAN_OR_SILENCE,
    silence_dbfs: float | None = None,
    min_duration_s: float | None = None,
) -> list[DetectorEvent]:
    """Non-finite samples, and digital silence or near-silence where the reference is not silent.

    Non-finite samples (NaN, ±Inf) within ``config.nan_merge_s`` form one event. Silence is RMS over
    ``config.window_s`` windows (every half window) below ``silence_dbfs`` for at least
    ``min_duration_s``; windows holding non-finite samples are not silent (they are reported as
    non-finite). With a reference, only the parts of a silence where the reference is at
    ``config.ref_active_dbfs`` or louder count (merged across ``config.ref_merge_s``, and
    again at least ``min_duration_s`` long); without one, only a clip that is silent throughout
    (and at least ``min_duration_s`` long) counts.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1; may contain NaN or Inf.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        config: Thresholds (:class:`NanOrSilenceConfig`; default :data:`NAN_OR_SILENCE`).
        silence_dbfs: RMS level below which a window is silent; ``None`` = ``config.silence_dbfs``
            (−60 dBFS).
        min_duration_s: Shortest silence; ``None`` = ``config.min_duration_s`` (0.2 s).

    Returns:
        Events ``"nan_or_silence"`` with ``detail["kind"]`` ``"non_finite"`` or ``"silence"``.
        Non-finite: strength = number of non-finite samples (the threshold is one); ``detail``:
        ``n_nan``, ``n_inf``. Silence: strength = duration / ``min_duration_s``; ``detail``:
        ``rms_dbfs`` (output, floored at −200), ``reference_rms_dbfs`` (with a reference).

    Example:
        >>> import numpy as np
        >>> x = np.ones(1000) * 0.1; x[500] = np.nan
        >>> [e.detail["kind"] for e in detect_nan_or_silence(x, 1000)]
        ['non_finite']
    """
    cfg = _with_overrides(config, silence_dbfs=silence_dbfs, min_duration_s=min_duration_s)
    sr = _check_rate(sample_rate)
    raw = _mono(audio, "audio")
    bad = ~np.isfinite(raw)
    x, sr, r = _prepare(audio, sr, reference)
    bad = bad[: x.shape[0]]
    events = []
    idx = np.flatnonzero(bad)
    if idx.size:
        gap = max(1, int(round(cfg.nan_merge_s * sr)))
        for g in np.split(idx, np.flatnonzero(np.diff(idx) > gap) + 1):
            vals = raw[g[0] : g[-1] + 1]
            n_nan = int(np.isnan(vals).sum())
            n_inf = int(np.isinf(vals).sum())
            events.append(
                _event(
                    "nan_or_silence",
                    g[0] / sr,
                    (g[-1] + 1) / sr,
                    n_nan + n_inf,
                    kind="non_finite",
                    n_nan=n_nan,
                    n_inf=n_inf,
                )
            )
    win = max(1, int(round(cfg.window_s * sr)))
    hop = max(1, win // 2)
    ms, centres = _window_means(x * x, win, hop)
    has_bad, _ = _window_means(bad.astype(np.float64), win, hop)
    silent = (ms < 10.0 ** (cfg.silence_dbfs / 10.0)) & (has_bad == 0)

    def span(a: int, b: int) -> tuple[float, float]:
        """Sample span of windows ``a..b-1``: from the first window's middle to the last's, widened
        by half a hop, and to the clip's edges where the run touches them."""
        lo = 0.0 if a == 0 else centres[a] - hop / 2.0
        hi = x.shape[0] if b == len(centres) else centres[b - 1] + hop / 2.0
        return lo / sr, hi / sr

    def rms_db(sig: np.ndarray, lo: float, hi: float) -> float:
        seg = sig[int(lo * sr) : max(int(hi * sr), int(lo * sr) + 1)]
        return float(_db(np.mean(seg * seg)))

    if r is None:
        if silent.all() and x.shape[0] / sr >= cfg.min_duration_s:
            dur = x.shape[0] / sr
            events.append(
                _event(
                    "nan_or_silence",
                    0.0,
                    dur,
                    dur / cfg.min_duration_s,
                    kind="silence",
                    rms_dbfs=rms_db(x, 0.0, dur),
                )
            )
        return _merged(events, cfg)
    ref_ms, _ = _window_means(r * r, win, hop)
    ref_active = ref_ms >= 10.0 ** (cfg.ref_active_dbfs / 10.0)
    for s, e in _runs(silent):
        for a, b in _merge(_runs(ref_active[s:e]) + s, int(round(cfg.ref_merge_s * sr / hop))):
            lo, hi = span(a, b)
            if hi - lo < cfg.min_duration_s:
                continue
            events.append(
                _event(
                    "nan_or_silence",
                    lo,
                    hi,
                    (hi - lo) / cfg.min_duration_s,
                    kind="silence",
                    rms_dbfs=rms_db(x, lo, hi),
                    reference_rms_dbfs=rms_db(r, lo, hi),
                )
            )
    return _merged(events, cfg)
