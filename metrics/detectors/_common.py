"""What every detector shares: input validation and alignment, the event type, frame and STFT helpers.

NumPy and SciPy only: the web tier imports the detectors (names, region agreement) without the model
stack, so nothing here may import torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from metrics._lengths import DEFAULT_LENGTH_TOLERANCE
from metrics.jsonable import jsonable

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    # Annotations only: metrics._common imports torch, and the web tier imports this package
    # (detector names, region agreement) without the model stack.
    from metrics._common import ArrayLike

LENGTH_TOLERANCE = DEFAULT_LENGTH_TOLERANCE
"""Largest |len(audio) − len(reference)| in samples; within it both are truncated to the shorter.
The same tolerance as the paired metrics: vocoders and codecs pad to a hop multiple, never more."""

ConfigT = TypeVar("ConfigT", bound="DataclassInstance")


@dataclass(frozen=True)
class DetectorEvent:
    """One detected artifact.

    Attributes:
        detector: Name of the detector (a key of :data:`metrics.detectors.DETECTORS`).
        start_s: Start time in seconds.
        end_s: End time in seconds (``≥ start_s``).
        strength: Dimensionless, ≥ 0; ``> 1`` is past the detector's threshold (see each detector).
        detail: Small JSON-serialisable dict of the numbers behind the event.

    Example:
        >>> DetectorEvent("hf_loss", 1.0, 1.75, 2.4, {"median_loss_db": 48.0}).duration_s
        0.75
    """

    detector: str
    start_s: float
    end_s: float
    strength: float
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "detector": self.detector,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "strength": self.strength,
            "detail": dict(self.detail),
        }


def _with_overrides(config: ConfigT, **overrides: Any) -> ConfigT:
    """``config`` with the thresholds given as keyword arguments (``None`` = keep the config's)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, **given) if given else config


def _mono(x: ArrayLike, what: str) -> np.ndarray:
    """``(T,)`` or ``(1, T)`` float array → float64 ``(T,)``; ValueError naming the shape or length."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(
            f"{what} must be a mono waveform of shape (T,) or (1, T); got shape {a.shape} "
            "(downmix or select a channel first)"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{what} is empty (length 0); need at least one sample")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(
            f"{what} must be floating point in full-scale units (±1.0); got dtype {a.dtype} "
            "(divide int16 PCM by 32768)"
        )
    return a.astype(np.float64)


def _check_rate(sample_rate: float) -> float:
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return float(sample_rate)


def _prepare(
    audio: ArrayLike, sample_rate: float, reference: ArrayLike | None
) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Validate, align by truncation and replace non-finite samples by zeros."""
    sr = _check_rate(sample_rate)
    x = _mono(audio, "audio")
    r = None
    if reference is not None:
        r = _mono(reference, "reference")
        if abs(x.shape[0] - r.shape[0]) > LENGTH_TOLERANCE:
            raise ValueError(
                f"audio length {x.shape[0]} and reference length {r.shape[0]} samples differ by "
                f"{abs(x.shape[0] - r.shape[0])} > {LENGTH_TOLERANCE}"
            )
        n = min(x.shape[0], r.shape[0])
        x, r = x[:n], r[:n]
    x = np.where(np.isfinite(x), x, 0.0)
    if r is not None:
        r = np.where(np.isfinite(r), r, 0.0)
    return x, sr, r


def _runs(mask: np.ndarray) -> np.ndarray:
    """``(n, 2)`` array of ``[start, stop)`` index runs where ``mask`` is True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1)


def _merge(runs: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Merge ``[start, stop)`` runs separated by at most ``max_gap`` indices."""
    out: list[list[int]] = []
    for s, e in runs:
        if out and s - out[-1][1] <= max_gap:
            out[-1][1] = max(out[-1][1], int(e))
        else:
            out.append([int(s), int(e)])
    return [(s, e) for s, e in out]


def _n_fft(window_s: float, sr: float) -> int:
    """Power of two nearest to ``window_s`` seconds (at least 16)."""
    return max(16, 2 ** int(round(math.log2(max(window_s * sr, 1.0)))))


def _stft_power(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Hann-window power spectrogram ``(frames, n_fft // 2 + 1)``; frame ``k`` is centred at ``k * hop``.

    Zero padding (not reflection) at the edges, so silence stays silent. Computed in float32
    (levels are compared in dB, far above its rounding) for speed; returned as float64.
    """
    xp = np.pad(x.astype(np.float32), (n_fft // 2, n_fft // 2))
    frames = sliding_window_view(xp, n_fft)[::hop]
    spec = scipy.fft.rfft(frames * np.hanning(n_fft + 2)[1:-1].astype(np.float32), axis=1)
    return (spec.real**2 + spec.imag**2).astype(np.float64)


def _window_means(x: np.ndarray, win: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``x`` over windows of ``win`` samples every ``hop`` samples, and the window centres."""
    win = min(win, x.shape[0])
    c = np.concatenate([[0.0], np.cumsum(x)])
    starts = np.arange(0, x.shape[0] - win + 1, hop)
    return (c[starts + win] - c[starts]) / win, starts + win / 2.0


def _event(detector: str, start_s: float, end_s: float, strength: float, **detail: Any) -> DetectorEvent:
    return DetectorEvent(
        detector,
        float(max(start_s, 0.0)),
        float(end_s),
        float(strength),
        jsonable(detail),
    )


def merge_events(
    events: Sequence[DetectorEvent], *, min_gap_s: float, min_duration_s: float = 0.0
) -> list[DetectorEvent]:
    """Events of one detector as it reports them: overlapping or nearby ones merged, short ones dropped.

    Every detector passes its candidates through here, so none reports one artifact as many events
    (frames, harmonics of one buzz, the two edges of one glitch). Two events are one when the gap
    between them is at most ``min_gap_s`` (overlapping or touching events always are); the merged
    event spans both, keeps the strength and ``detail`` of the stronger and counts the merged
    candidates in ``detail["n_merged"]``. Merged events shorter than ``min_duration_s`` are dropped
    (0 keeps point events such as a click).

    Args:
        events: Candidates of a single detector, in any order.
        min_gap_s: Largest gap in seconds (≥ 0) that still joins two events.
        min_duration_s: Shortest merged event in seconds that is reported (≥ 0).

    Returns:
        Events sorted by start time, non-overlapping and more than ``min_gap_s`` apart.

    Example:
        >>> evs = [DetectorEvent("x", 0.0, 0.1, 1.0), DetectorEvent("x", 0.12, 0.3, 3.0), DetectorEvent("x", 1.0, 1.0, 2.0)]
        >>> [(e.start_s, e.end_s, e.strength, e.detail["n_merged"]) for e in merge_events(evs, min_gap_s=0.05)]
        [(0.0, 0.3, 3.0, 2), (1.0, 1.0, 2.0, 1)]
    """
    if not min_gap_s >= 0 or not min_duration_s >= 0:
        raise ValueError(f"min_gap_s and min_duration_s must be ≥ 0, got {min_gap_s} and {min_duration_s}")
    if len({e.detector for e in events}) > 1:
        raise ValueError(
            f"merge_events merges one detector's events; got {sorted({e.detector for e in events})}"
        )
    groups: list[list[DetectorEvent]] = []
    end = -math.inf
    for ev in sorted(events, key=lambda e: (e.start_s, e.end_s)):
        if groups and ev.start_s - end <= min_gap_s:
            groups[-1].append(ev)
            end = max(end, ev.end_s)
        else:
            groups.append([ev])
            end = ev.end_s
    out = []
    for g in groups:
        best = max(g, key=lambda e: e.strength)
        start, stop = min(e.start_s for e in g), max(e.end_s for e in g)
        if stop - start < min_duration_s:
            continue
        detail = dict(best.detail)
        detail["n_merged"] = sum(int(e.detail.get("n_merged", 1)) for e in g)
        out.append(DetectorEvent(best.detector, start, stop, best.strength, detail))
    return out


def _overlaps(a: DetectorEvent, others: Sequence[DetectorEvent]) -> bool:
    return any(a.start_s <= o.end_s and o.start_s <= a.end_s for o in others)


def _db(p: float | np.ndarray, floor_db: float = -200.0) -> float | np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(p), floor_db)
