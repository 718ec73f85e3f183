"""How detector events compare with time and with the regions listeners flagged."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from metrics.detectors._common import DetectorEvent


def event_rate(events: Sequence[DetectorEvent], duration_s: float) -> float:
    """Events per minute of audio.

    Example:
        >>> event_rate([DetectorEvent("clicks", 1.0, 1.001, 2.0)] * 3, 30.0)
        6.0
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    return len(events) * 60.0 / duration_s


def proportion_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for ``successes`` out of ``n`` (``None`` when ``n`` is 0).

    Wilson, not the normal approximation: precision and recall of a detector against a few dozen
    listener regions sit near 0 or 1, where the normal interval leaves [0, 1] and undercovers
    (Newcombe 1998, Stat. Med. 17:857, whose Table I this reproduces).

    Example:
        >>> [round(v, 4) for v in proportion_interval(81, 263)]
        [0.2553, 0.3662]
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 ≤ successes ≤ n; got successes={successes}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return None
    # Imported here: statsmodels pulls in pandas (seconds), and the web tier imports this package
    # for detector names on every request path.
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=1.0 - confidence, method="wilson")
    return float(low), float(high)


def _regions(items: Iterable[Any], what: str) -> list[tuple[float, float]]:
    out = []
    for it in items:
        s, e = (it.start_s, it.end_s) if isinstance(it, DetectorEvent) else (float(it[0]), float(it[1]))
        if not e >= s:
            raise ValueError(f"{what} region ({s}, {e}) ends before it starts")
        out.append((s, e))
    return out


def region_agreement(
    detected: Iterable[tuple[float, float] | DetectorEvent],
    flagged: Iterable[tuple[float, float]],
    *,
    tolerance_s: float = 0.1,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Agreement between detected events and regions flagged by listeners.

    A detected event and a flagged region match when they overlap after the flagged region is
    widened by ``tolerance_s`` on both sides (touching counts). Precision is the share of detected
    events that match some flagged region, recall the share of flagged regions matched by some
    event. Either is ``None`` when there is nothing to divide by. Each comes with its ``n`` and a
    Wilson interval (:func:`proportion_interval`) at ``confidence``: against a handful of listener
    regions a precision of 0.00 or 1.00 says little without one.

    Args:
        detected: ``(start_s, end_s)`` pairs or :class:`DetectorEvent` objects.
        flagged: ``(start_s, end_s)`` pairs.
        tolerance_s: Widening in seconds (≥ 0).
        confidence: Coverage of the intervals, in (0, 1).

    Returns:
        ``{"precision", "recall", "n_detected", "n_flagged", "n_detected_matched",
        "n_flagged_matched", "precision_ci", "recall_ci", "confidence", "tolerance_s"}``; the
        intervals are ``(low, high)`` or ``None`` with the proportion.

    Example:
        >>> region_agreement([(1.0, 1.1), (5.0, 5.2)], [(1.15, 2.0)])["precision"]
        0.5
    """
    if not tolerance_s >= 0:
        raise ValueError(f"tolerance_s must be ≥ 0, got {tolerance_s}")
    det = _regions(detected, "detected")
    flg = _regions(flagged, "flagged")
    match = np.array(
        [[ds <= fe + tolerance_s and fs - tolerance_s <= de for fs, fe in flg] for ds, de in det], dtype=bool
    ).reshape(len(det), len(flg))
    n_det_m = int(match.any(axis=1).sum())
    n_flg_m = int(match.any(axis=0).sum())
    return {
        "precision": n_det_m / len(det) if det else None,
        "recall": n_flg_m / len(flg) if flg else None,
        "n_detected": len(det),
        "n_flagged": len(flg),
        "n_detected_matched": n_det_m,
        "n_flagged_matched": n_flg_m,
        "precision_ci": proportion_interval(n_det_m, len(det), confidence=confidence),
        "recall_ci": proportion_interval(n_flg_m, len(flg), confidence=confidence),
        "confidence": float(confidence),
        "tolerance_s": float(tolerance_s),
    }
