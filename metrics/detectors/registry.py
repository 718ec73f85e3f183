"""Every detector by name, and :func:`detect_all`, which runs several on one clip."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from metrics.detectors._common import DetectorEvent, _prepare
from metrics.detectors.clicks import detect_clicks
from metrics.detectors.clipping import detect_clipping
from metrics.detectors.dc_offset import detect_dc_offset
from metrics.detectors.hf_loss import detect_hf_loss
from metrics.detectors.nan_or_silence import detect_nan_or_silence
from metrics.detectors.spectral_discontinuity import detect_spectral_discontinuities
from metrics.detectors.tonal_buzz import detect_tonal_buzz

if TYPE_CHECKING:
    from metrics._common import ArrayLike

Detector = Callable[..., list[DetectorEvent]]

DETECTORS: dict[str, Detector] = {
    "nan_or_silence": detect_nan_or_silence,
    "clicks": detect_clicks,
    "clipping": detect_clipping,
    "dc_offset": detect_dc_offset,
    "spectral_discontinuity": detect_spectral_discontinuities,
    "hf_loss": detect_hf_loss,
    "tonal_buzz": detect_tonal_buzz,
}
"""Detector name → function ``(audio, sample_rate, reference=None) -> list[DetectorEvent]``.
Each event's ``detector`` field is its key here."""


def detect_all(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    detectors: Iterable[str] | None = None,
) -> list[DetectorEvent]:
    """Run several detectors (default: all of :data:`DETECTORS`) with their default thresholds.

    ``nan_or_silence`` runs first on the raw input and reports where samples are NaN or infinite;
    every other detector then sees the signal (and the reference) with non-finite samples replaced
    by zeros, so a NaN never crashes or poisons them (a zeroed stretch may itself read as a click
    or a discontinuity).

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate, length within ``LENGTH_TOLERANCE``).
        detectors: Names to run, in any order; ``None`` = all.

    Returns:
        All events, sorted by start time, then detector name.

    Raises:
        ValueError: for an unknown detector name (lists the known ones), a shape other than ``(T,)``
            or ``(1, T)``, an empty waveform, or lengths too far apart.

    Example:
        >>> import numpy as np
        >>> t = np.arange(16000) / 16000
        >>> x = 0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 1.5 * t); x[4003] = np.nan
        >>> [(e.detector, round(e.start_s, 2)) for e in detect_all(x, 16000)]  # the zeroed sample is a jump
        [('spectral_discontinuity', 0.25), ('nan_or_silence', 0.25)]
    """
    names = list(DETECTORS) if detectors is None else list(detectors)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTORS)}")
    events: list[DetectorEvent] = []
    if "nan_or_silence" in names:
        events += detect_nan_or_silence(audio, sample_rate, reference)
    x, sr, r = _prepare(audio, sample_rate, reference)
    for name in names:
        if name != "nan_or_silence":
            events += DETECTORS[name](x, sr, r)
    return sorted(events, key=lambda ev: (ev.start_s, ev.detector))
