"""Clicks and impulses: isolated peaks of a block-wise linear-prediction residual."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import maximum_filter1d

from metrics.detectors._common import (
    DetectorEvent,
    _event,
    _overlaps,
    _prepare,
    _with_overrides,
    merge_events,
)

if TYPE_CHECKING:
    from metrics._common import ArrayLike


@dataclass(frozen=True)
class ClickConfig:
    """Thresholds of :func:`detect_clicks`.

    Calibrated on ``benchmarks/detector_calibration.py`` (figures in benchmarks/README.md), with the
    clean clip as reference: clicks 3–8× the clip RMS: precision 1.00, recall 0.99 (eSpeak NG) and
    0.98 (real speech); no event on 180 clean eSpeak NG clips or the real recordings.
    """

    lpc_order: int = 16
    """Linear-prediction order. Enough poles for 5–8 formants/resonances at 16–48 kHz, so the residual
    of speech and music is close to white, while an impulse is not predictable and stays in it."""
    block_s: float = 0.025
    """Block over which one predictor is fitted (s): short enough for speech to be stationary in it."""
    scale_block_s: float = 0.005
    """Sub-block for the robust residual scale (s). A click (≤ 1 ms) is a small share of it, so the
    median ignores the click itself."""
    scale_span: int = 2
    """The local scale is the largest sub-block scale within ±2 sub-blocks (±10 ms), so that at an
    onset the loud side sets the scale and a half-silent sub-block does not make onsets look like
    clicks."""
    mad_k: float = 20.0
    """A click's residual exceeds 20 robust standard deviations (1.4826 × MAD): Gaussian residual
    never does, and eSpeak NG's own sub-millisecond waveform steps reach up to ~21 — but then fail the
    isolation test."""
    isolation_s: float = 0.0125
    """Neighbourhood (s, each side) whose largest residual a click must exceed: 12.5 ms holds at least
    one glottal pulse on each side for voices down to 80 Hz, so periodic pulses never count as
    isolated."""
    isolation_k: float = 3.5
    """A click's residual is at least 3.5× the largest residual in that neighbourhood (outside a guard
    of ``lpc_order + 2`` samples or 1 ms, where the click's own prediction error lies). Glottal pulses
    vary by well under 2× from one period to the next, and a burst onset is followed by residuals as
    large. With both thresholds, the worst spot in 60 clean eSpeak NG utterances (six voices) reaches
    0.77 of them (it would have strength 0.77); the price is that in loud voiced speech a click must be
    ≳ 3.5× the glottal-pulse residual to count (a 0.1 click in eSpeak vowels at −13 dBFS RMS is found,
    strength ~3)."""
    scale_floor: float = 3e-4
    """Smallest residual scale (≈ −70 dBFS): in digital silence a click must still exceed
    ``mad_k × 3e-4`` (≈ −50 dBFS) to count, so dither and quantisation noise never do."""
    merge_s: float = 0.005
    """Samples flagged within 5 ms of each other are one event (one click's residual lasts < 1 ms)."""
    min_rms_ratio: float = 2.5
    """A click's residual is at least 2.5× the clip's RMS. Real recordings hold lip and tongue clicks
    that pass both tests above (VCTK and TSP references: up to 1.8× their RMS); a fault that a
    listener hears as a click stands above the speech. Planted clicks are 3–8× the RMS."""
    ref_mad_k: float = 8.0
    """With a reference, ``mad_k`` is 8 instead of 20, and ``isolation_k`` is ``ref_isolation_k``:
    the reference test below rules out what made the strict thresholds necessary (eSpeak NG's
    impulsive glottal pulses, which the reference has as well). Chosen on the planted set of
    ``benchmarks/detector_calibration.py``: recall on eSpeak NG clicks rises from ~0.6 to ≥ 0.9."""
    ref_isolation_k: float = 2.5
    """Isolation ratio with a reference (see ``ref_mad_k``)."""
    ref_k: float = 2.0
    """With a reference, a click's residual is at least 2× the reference's largest residual within
    ``isolation_s`` of it: the output has an impulse there that the reference has not."""


CLICKS = ClickConfig()
"""The thresholds :func:`detect_clicks` uses unless given others."""


def _levinson(r: np.ndarray) -> np.ndarray:
    """Levinson–Durbin for a batch of autocorrelations ``(B, p + 1)`` → predictor ``(B, p)``.

    Returns ``a`` with prediction error ``e[t] = x[t] + Σ_k a[k - 1] x[t - k]``.
    """
    order = r.shape[1] - 1
    a = np.zeros((r.shape[0], order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        k = -(r[:, i] + np.sum(a[:, 1:i] * r[:, i - 1 : 0 : -1], axis=1)) / np.maximum(err, 1e-300)
        a[:, 1:i] = a[:, 1:i] + k[:, None] * a[:, i - 1 : 0 : -1]
        a[:, i] = k
        err = err * (1.0 - k * k)
    return a[:, 1:]


def _lpc_residual(x: np.ndarray, sr: float, order: int, block_s: float = CLICKS.block_s) -> np.ndarray:
    """Prediction error of a block-wise autocorrelation-method linear predictor (one per block).

    The first ``order`` samples have no history and are NaN. The last block's predictor is fitted
    on the clip's last full block, not on zero padding.
    """
    n = x.shape[0]
    block = max(4 * order, int(round(block_s * sr)))
    n_blocks = -(-n // block)
    if n >= block:
        starts = np.minimum(np.arange(n_blocks) * block, n - block)
        frames = x[starts[:, None] + np.arange(block)]
    else:
        frames = np.pad(x, (0, block - n))[None]
    frames = frames * np.hanning(block)
    spec = np.fft.rfft(frames, n=2 * block, axis=1)
    r = np.fft.irfft(spec.real**2 + spec.imag**2, axis=1)[:, : order + 1]
    # White-noise correction (−50 dB) keeps the normal equations well conditioned for pure tones and silence.
    r[:, 0] = r[:, 0] * (1.0 + 1e-5) + 1e-12
    a = _levinson(r)
    # e[t] = x[t] + sum_k a_k x[t - k] with the coefficients of t's block, for all t at once.
    ctx = np.concatenate([np.zeros(order), x, np.zeros(n_blocks * block - n)])
    lagged = sliding_window_view(ctx, order + 1)[: n_blocks * block, ::-1].reshape(n_blocks, block, order + 1)
    e = np.einsum("btk,bk->bt", lagged, np.concatenate([np.ones((n_blocks, 1)), a], axis=1)).reshape(-1)[:n]
    e[:order] = np.nan
    return e


def _residual(x: np.ndarray, sr: float, cfg: ClickConfig) -> np.ndarray:
    e = np.abs(_lpc_residual(x, sr, cfg.lpc_order, cfg.block_s))
    e[: cfg.lpc_order] = 0.0  # no history there: never a candidate, and not part of the scale
    return e


def _click_events(
    x: np.ndarray, sr: float, cfg: ClickConfig, ref_residual: np.ndarray | None = None
) -> list[DetectorEvent]:
    n = x.shape[0]
    order = cfg.lpc_order
    if n <= 2 * order:
        return []
    mad_k = cfg.mad_k if ref_residual is None else cfg.ref_mad_k
    isolation_k = cfg.isolation_k if ref_residual is None else cfg.ref_isolation_k
    e = _residual(x, sr, cfg)
    sb = max(8, int(round(cfg.scale_block_s * sr)))
    body = e[order:]
    n_full = body.size // sb
    scale = np.median(body[: n_full * sb].reshape(n_full, sb), axis=1)
    if body.size > n_full * sb:
        scale = np.append(scale, np.median(body[n_full * sb :]))
    scale = 1.4826 * scale
    scale = np.maximum(maximum_filter1d(scale, 2 * cfg.scale_span + 1, mode="nearest"), cfg.scale_floor)
    scale = np.concatenate([np.full(order, scale[0]), np.repeat(scale, sb)[: body.size]])
    level = cfg.min_rms_ratio * float(np.sqrt(np.mean(x * x)))
    cand = np.flatnonzero((e > mad_k * scale) & (e > level))
    if cand.size == 0:
        return []
    guard = max(order + 2, int(round(0.001 * sr)))
    width = max(guard + 4, int(round(cfg.isolation_s * sr)))
    length = width - guard + 1
    # fwd[j] = max(e[j - width, j - width + length)) in unpadded coordinates j - width; pad so all are valid.
    ep = np.pad(e, (width, width))
    fwd = maximum_filter1d(ep, length, mode="constant", cval=0.0, origin=-(length // 2))
    left = fwd[cand]  # e[cand - width : cand - guard + 1]
    right = fwd[cand + width + guard]  # e[cand + guard : cand + width + 1]
    neigh = np.maximum(left, right)
    ratio = np.minimum.reduce(
        [
            e[cand] / (mad_k * scale[cand]),
            e[cand] / np.maximum(isolation_k * neigh, 1e-300),
            e[cand] / max(level, 1e-300),
        ]
    )
    if ref_residual is not None:
        ref_max = maximum_filter1d(ref_residual, 2 * width + 1, mode="constant", cval=0.0)
        ratio = np.minimum(ratio, e[cand] / np.maximum(cfg.ref_k * ref_max[cand], 1e-300))
    keep = ratio > 1.0
    cand, ratio, neigh = cand[keep], ratio[keep], neigh[keep]
    if cand.size == 0:
        return []
    events = []
    gap = max(1, int(round(cfg.merge_s * sr)))
    groups = np.split(np.arange(cand.size), np.flatnonzero(np.diff(cand) > gap) + 1)
    for g in groups:
        k = g[np.argmax(ratio[g])]
        i = cand[k]
        events.append(
            _event(
                "clicks",
                cand[g[0]] / sr,
                (cand[g[-1]] + 1) / sr,
                ratio[k],
                peak_s=i / sr,
                residual=e[i],
                residual_scale=scale[i],
                neighbour_max=neigh[k],
                z=e[i] / scale[i],
                n_samples=len(g),
            )
        )
    return events


def detect_clicks(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    config: ClickConfig = CLICKS,
    mad_k: float | None = None,
    isolation_k: float | None = None,
) -> list[DetectorEvent]:
    """Clicks and impulses: isolated peaks in a linear-prediction residual.

    A predictor of order ``config.lpc_order`` is fitted per ``config.block_s`` block and the
    prediction error computed; a sample is a click when its error exceeds ``mad_k`` × the local
    robust scale (1.4826 × median |error| of 5 ms sub-blocks, largest within ±10 ms, floored at
    ``config.scale_floor``) *and* ``isolation_k`` × the largest error within ±12.5 ms outside a
    short guard, *and* ``config.min_rms_ratio`` × the clip's RMS. With a reference the first two
    thresholds are ``config.ref_mad_k`` and ``config.ref_isolation_k`` (looser), a click must also
    exceed ``config.ref_k`` × the reference's largest error within ±12.5 ms, and events overlapping
    a click of the reference (at the strict thresholds) are dropped. Flagged samples within
    ``config.merge_s`` form one event.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference ``(T',)``, same rate, ``|T − T'| ≤ LENGTH_TOLERANCE``.
        config: Thresholds (:class:`ClickConfig`; default :data:`CLICKS`).
        mad_k: Robust-z threshold; ``None`` = the config's (20, or ``ref_mad_k`` = 8 with a reference).
        isolation_k: Isolation ratio threshold; ``None`` = the config's (3.5, or ``ref_isolation_k`` =
            2.5 with a reference).

    Returns:
        Events ``"clicks"``. Strength = min(error / (mad_k × scale), error / (isolation_k × neighbour
        max), error / (min_rms_ratio × RMS), with a reference error / (ref_k × reference max)) at the
        event's peak: the factor by which the weakest of the tests is passed.
        ``detail``: ``peak_s``, ``residual``, ``residual_scale``, ``neighbour_max``, ``z``, ``n_samples``.

    Example:
        >>> import numpy as np
        >>> x = 0.1 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000); x[8000] += 0.5
        >>> [round(e.start_s, 3) for e in detect_clicks(x, 16000)]
        [0.5]
    """
    x, sr, r = _prepare(audio, sample_rate, reference)
    if r is None:
        cfg = _with_overrides(config, mad_k=mad_k, isolation_k=isolation_k)
        return merge_events(_click_events(x, sr, cfg), min_gap_s=cfg.merge_s)
    cfg = _with_overrides(config, ref_mad_k=mad_k, ref_isolation_k=isolation_k)
    events = _click_events(x, sr, cfg, _residual(r, sr, cfg))
    if events:
        ref_events = _click_events(r, sr, config)
        events = [ev for ev in events if not _overlaps(ev, ref_events)]
    return merge_events(events, min_gap_s=cfg.merge_s)
