"""Automated artifact detectors: pure functions from a waveform to timed events.

Each detector takes a mono float waveform ``(T,)`` (or ``(1, T)``) in full-scale units (±1.0),
its sample rate, and optionally the reference waveform at the same rate, and returns a list of
:class:`DetectorEvent` sorted by start time. The dashboard compares these events with the
regions listeners flagged (:func:`region_agreement`).

* :func:`detect_clicks` — impulses: isolated peaks of a block-wise linear-prediction residual.
* :func:`detect_clipping` — runs of samples at the extreme value (near full scale, or flat tops).
* :func:`detect_dc_offset` — sliding-window mean far from zero.
* :func:`detect_spectral_discontinuities` — spectral flux far above the reference's (or the clip's own).
* :func:`detect_hf_loss` — energy above a cutoff far below the reference's (needs a reference).
* :func:`detect_tonal_buzz` — narrow spectral peaks that stay at one frequency for a long time.
* :func:`detect_nan_or_silence` — non-finite samples, and digital silence where the reference is not.

With a reference, an artifact that the reference has too (a click in the recording, say) is not
reported: the detectors look for what the model added or removed. The reference may differ in
length by up to :data:`LENGTH_TOLERANCE` samples; both are truncated to the shorter. Non-finite
samples are replaced by zeros before any detector but :func:`detect_nan_or_silence` looks at the
signal. Every threshold is a module constant below with the reason for its value; the main ones can
also be passed to each detector as keyword arguments. The values were checked on 60 clean eSpeak
NG utterances (six voices), as they are, against themselves as reference, and with −50 dBFS noise
and a 2-sample delay against the clean reference: no detector fires on any of them.

Strength is dimensionless, ≥ 0 and, for every detector, ``> 1`` means clearly past the threshold;
its exact definition is in each detector's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import binary_closing, find_objects, label, maximum_filter1d, median_filter

from metrics._lengths import DEFAULT_LENGTH_TOLERANCE
from metrics.jsonable import jsonable

if TYPE_CHECKING:
    # Annotations only: metrics._common imports torch, and the web tier imports this module
    # (detector names, region agreement) without the model stack.
    from metrics._common import ArrayLike

LENGTH_TOLERANCE = DEFAULT_LENGTH_TOLERANCE
"""Largest |len(audio) − len(reference)| in samples; within it both are truncated to the shorter.
The same tolerance as the paired metrics: vocoders and codecs pad to a hop multiple, never more."""

# --- clicks --------------------------------------------------------------------------------------
CLICK_LPC_ORDER = 16
"""Linear-prediction order. Enough poles for 5–8 formants/resonances at 16–48 kHz, so the residual
of speech and music is close to white, while an impulse is not predictable and stays in it."""
CLICK_BLOCK_S = 0.025
"""Block over which one predictor is fitted (s): short enough for speech to be stationary in it."""
CLICK_SCALE_BLOCK_S = 0.005
"""Sub-block for the robust residual scale (s). A click (≤ 1 ms) is a small share of it, so the
median ignores the click itself."""
CLICK_SCALE_SPAN = 2
"""The local scale is the largest sub-block scale within ±2 sub-blocks (±10 ms), so that at an
onset the loud side sets the scale and a half-silent sub-block does not make onsets look like clicks."""
CLICK_MAD_K = 20.0
"""A click's residual exceeds 20 robust standard deviations (1.4826 × MAD): Gaussian residual never
does, and eSpeak NG's own sub-millisecond waveform steps reach up to ~21 — but then fail the isolation test."""
CLICK_ISOLATION_S = 0.0125
"""Neighbourhood (s, each side) whose largest residual a click must exceed: 12.5 ms holds at least
one glottal pulse on each side for voices down to 80 Hz, so periodic pulses never count as isolated."""
CLICK_ISOLATION_K = 3.5
"""A click's residual is at least 3.5× the largest residual in that neighbourhood (outside a guard of
``CLICK_LPC_ORDER + 2`` samples or 1 ms, where the click's own prediction error lies). Glottal pulses
vary by well under 2× from one period to the next, and a burst onset is followed by residuals as
large. With both thresholds, the worst spot in 60 clean eSpeak NG utterances (six voices) reaches
0.77 of them (it would have strength 0.77); the price is that in loud voiced speech a click must be ≳ 3.5× the
glottal-pulse residual to count (a 0.1 click in eSpeak vowels at −13 dBFS RMS is found, strength ~3)."""
CLICK_SCALE_FLOOR = 3e-4
"""Smallest residual scale (≈ −70 dBFS): in digital silence a click must still exceed
``CLICK_MAD_K × 3e-4`` (≈ −50 dBFS) to count, so dither and quantisation noise never do."""
CLICK_MERGE_S = 0.005
"""Samples flagged within 5 ms of each other are one event (one click's residual lasts < 1 ms)."""

# --- clipping ------------------------------------------------------------------------------------
CLIP_FULL_SCALE = 0.99
"""A peak at or above 0.99 counts as full scale (clipped by the output stage or int16 conversion)."""
CLIP_TOLERANCE = 1e-4
"""Near full scale, samples within 1e-4 (~3 int16 steps) of the peak count as at the peak, so clipping
that went through an int16 round trip or a float32 scaling is still a run."""
CLIP_MIN_RUN = 3
"""A clip is at least 3 consecutive samples at the peak (Audacity "Find Clipping" default). A
band-limited signal reaches its maximum at one sample, two at most."""
CLIP_FLAT_MIN_RUN = 5
"""Below full scale a flat top (a limiter) must be at least 5 identical samples: int16-quantised
quiet low-pitched speech can repeat its peak value over 2–3 samples."""
CLIP_FLAT_TOLERANCE = 1e-7
"""Below full scale, "identical" is equal within 1e-7 (float32 rounding of a scaled clip level)."""
CLIP_FLAT_MIN_LEVEL = 0.01
"""A flat top must be at least 0.01 (−40 dBFS): a run of equal tiny values is silence, not clipping."""
CLIP_MERGE_S = 0.02
"""Runs within 20 ms are one event: a clipped voiced stretch clips every half period (f0 ≥ 50 Hz)."""

# --- DC offset -----------------------------------------------------------------------------------
DC_WINDOW_S = 0.1
"""Sliding window for the mean (s): 100 ms holds ≥ 5 periods of any voiced sound, so the mean of
speech or music in it is close to zero."""
DC_HOP_S = 0.01
"""Hop between windows (s)."""
DC_THRESHOLD = 0.03
"""|mean| above 0.03 full scale (−30 dBFS) in a window is an offset: 60 clean eSpeak NG utterances stay
below 0.013 in 100 ms windows, and an offset of 0.03 makes an audible click where it starts or stops."""

# --- spectral discontinuities --------------------------------------------------------------------
DISC_WINDOW_S = 0.02
"""STFT window (s) for the flux; hop is a quarter of it. 20 ms resolves a 30 ms glitch on its own."""
DISC_BANDS = 32
"""Flux is measured on 32 mel-spaced band levels, not single bins: a noise-like band (fricative,
noise floor) then varies by ~1–2 dB from frame to frame instead of ~8 dB, so a real jump stands out."""
DISC_RANGE_DB = 60.0
"""Band levels are floored 60 dB below the loudest band, so changes in inaudible detail are ignored."""
DISC_ACTIVE_DB = 40.0
"""Only frames within 40 dB of the loudest frame (or next to one) are judged."""
DISC_REF_RATIO = 2.0
"""With a reference: the flux exceeds twice the reference's largest flux at that frame ±1 frame ..."""
DISC_REF_MARGIN_DB = 3.0
"""... plus 3 dB (RMS over bands), so small differences in texture where the reference is steady
(flux near 0) never count ..."""
DISC_LOCAL_S = 0.2
"""... plus the output's own median flux over the surrounding 200 ms, so a noisy output (a noise
floor in the pauses, where the reference is digital silence) is not a string of discontinuities.
On speech, white noise up to −30 dBFS, a 3 ms delay, gain, low-pass or high-pass filtering reach at
most 0.85 of this threshold; a 30 ms splice, noise burst, dropout or filtered burst reaches 1.3–4."""
DISC_SELF_K = 20.0
"""Without a reference: the flux is 20 robust standard deviations above the clip's median flux.
Speech onsets reach up to ~14 on clean eSpeak NG utterances, so only gross jumps (a dropout or
splice inside a steady sound) are found without a reference."""
DISC_MERGE_S = 0.02
"""Flagged frames within 20 ms are one event."""

# --- high-frequency loss -------------------------------------------------------------------------
HF_WINDOW_S = 0.04
"""STFT window (s) for the band energies; hop is a quarter of it."""
HF_CUTOFF_FRACTION = 0.5
"""Default cutoff as a fraction of Nyquist (5.5 kHz at 22.05 kHz): above it sit the fricatives and
the "air" that band-limited vocoders lose."""
HF_LOSS_DB = 20.0
"""A frame has lost its high frequencies when its band energy is ≥ 20 dB below the reference's."""
HF_REF_MIN_DB = 45.0
"""Frames are judged only where the reference's band energy is within 45 dB of the reference's
loudest frame (all bands): elsewhere there is no high-frequency content to lose."""
HF_MERGE_S = 0.1
"""Flagged frames within 100 ms are one region: vowels without high-frequency energy between two
fricatives do not split a region."""
HF_MIN_DURATION_S = 0.05
"""Regions shorter than 50 ms are dropped (one or two frames at a misaligned onset)."""

# --- tonal buzz ----------------------------------------------------------------------------------
TONAL_WINDOW_S = 0.09
"""STFT window (s): ~11 Hz resolution at 22–24 kHz separates a tone from neighbouring harmonics."""
TONAL_MEDIAN_HZ = 300.0
"""Width of the local median spectrum (Hz) that prominence is measured against: wide enough to
reach the valleys on both sides of a harmonic of a voice up to ~300 Hz f0."""
TONAL_PROMINENCE_DB = 10.0
"""A tonal peak stands 10 dB above the local median spectrum."""
TONAL_EXCESS_DB = 10.0
"""With a reference: the output's median prominence exceeds the reference's at the same frames and
frequency (±1 bin) by 10 dB — the reference's harmonics, where they cross the frequency, are as prominent."""
TONAL_SELF_LEVEL_MAD_DB = 0.5
"""Without a reference: a buzz's level varies by at most 0.5 dB (median absolute deviation over its
frames), and the frames within :data:`TONAL_EDGE_DB` of its median level still span
``min_duration_s``. Added tones measure ~0.1–0.2 dB; voice harmonics, which follow syllables and
formants, are steady only for short stretches."""
TONAL_EDGE_DB = 6.0
"""Event edges are the outermost frames within 6 dB of the median level: a frame that half covers
a steady tone is 6 dB down, so the edges land where the tone starts and stops."""
TONAL_MIN_DURATION_S = 0.3
"""A buzz stays in one frequency bin (±1) for at least 300 ms; speech harmonics glide out of an
11 Hz bin within a syllable."""
TONAL_MAX_GAP_S = 0.05
"""Gaps up to 50 ms (a loud phoneme masking the tone) do not interrupt a tone."""
TONAL_MIN_HZ = 40.0
"""Peaks below 40 Hz are ignored (DC and rumble are not buzz), and so are peaks within half of
:data:`TONAL_MEDIAN_HZ` of Nyquist, where the local median is one-sided."""

# --- NaN / silence -------------------------------------------------------------------------------
NAN_MERGE_S = 0.01
"""Non-finite samples within 10 ms are one event."""
SILENCE_DBFS = -60.0
"""A window is silent below −60 dBFS RMS (below typical playback noise floors)."""
SILENCE_WINDOW_S = 0.02
"""RMS window (s), evaluated every half window."""
SILENCE_MIN_DURATION_S = 0.2
"""Silence shorter than 200 ms is a pause or a stop closure, not a dropout."""
SILENCE_REF_ACTIVE_DBFS = -50.0
"""The reference is "not silent" in a window at −50 dBFS RMS or more: 10 dB above the silence
threshold, so a model that renders −55 dBFS breath noise as digital silence is not flagged."""
SILENCE_REF_MERGE_S = 0.1
"""Reference-active windows within 100 ms (a stop closure) are one region."""


@dataclass(frozen=True)
class DetectorEvent:
    """One detected artifact.

    Attributes:
        detector: Name of the detector (a key of :data:`DETECTORS`).
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


# --- shared helpers ------------------------------------------------------------------------------


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


def _overlaps(a: DetectorEvent, others: Sequence[DetectorEvent]) -> bool:
    return any(a.start_s <= o.end_s and o.start_s <= a.end_s for o in others)


def _db(p: float | np.ndarray, floor_db: float = -200.0) -> float | np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(p), floor_db)


# --- 1. clicks -----------------------------------------------------------------------------------


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


def _lpc_residual(x: np.ndarray, sr: float, order: int) -> np.ndarray:
    """Prediction error of a block-wise autocorrelation-method linear predictor (one per block).

    The first ``order`` samples have no history and are NaN. The last block's predictor is fitted
    on the clip's last full block, not on zero padding.
    """
    n = x.shape[0]
    block = max(4 * order, int(round(CLICK_BLOCK_S * sr)))
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


def _click_events(x: np.ndarray, sr: float, mad_k: float, isolation_k: float) -> list[DetectorEvent]:
    n = x.shape[0]
    if n <= 2 * CLICK_LPC_ORDER:
        return []
    order = CLICK_LPC_ORDER
    e = np.abs(_lpc_residual(x, sr, order))
    e[:order] = 0.0  # no history there: never a candidate, and not part of the scale
    sb = max(8, int(round(CLICK_SCALE_BLOCK_S * sr)))
    body = e[order:]
    n_full = body.size // sb
    scale = np.median(body[: n_full * sb].reshape(n_full, sb), axis=1)
    if body.size > n_full * sb:
        scale = np.append(scale, np.median(body[n_full * sb :]))
    scale = 1.4826 * scale
    scale = np.maximum(maximum_filter1d(scale, 2 * CLICK_SCALE_SPAN + 1, mode="nearest"), CLICK_SCALE_FLOOR)
    scale = np.concatenate([np.full(order, scale[0]), np.repeat(scale, sb)[: body.size]])
    cand = np.flatnonzero(e > mad_k * scale)
    if cand.size == 0:
        return []
    guard = max(CLICK_LPC_ORDER + 2, int(round(0.001 * sr)))
    width = max(guard + 4, int(round(CLICK_ISOLATION_S * sr)))
    length = width - guard + 1
    # fwd[j] = max(e[j - width, j - width + length)) in unpadded coordinates j - width; pad so all are valid.
    ep = np.pad(e, (width, width))
    fwd = maximum_filter1d(ep, length, mode="constant", cval=0.0, origin=-(length // 2))
    left = fwd[cand]  # e[cand - width : cand - guard + 1]
    right = fwd[cand + width + guard]  # e[cand + guard : cand + width + 1]
    neigh = np.maximum(left, right)
    ratio = np.minimum(e[cand] / (mad_k * scale[cand]), e[cand] / np.maximum(isolation_k * neigh, 1e-300))
    keep = ratio > 1.0
    cand, ratio, neigh = cand[keep], ratio[keep], neigh[keep]
    if cand.size == 0:
        return []
    events = []
    gap = max(1, int(round(CLICK_MERGE_S * sr)))
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
    mad_k: float = CLICK_MAD_K,
    isolation_k: float = CLICK_ISOLATION_K,
) -> list[DetectorEvent]:
    """Clicks and impulses: isolated peaks in a linear-prediction residual.

    A predictor of order :data:`CLICK_LPC_ORDER` is fitted per :data:`CLICK_BLOCK_S` block and the
    prediction error computed; a sample is a click when its error exceeds ``mad_k`` × the local
    robust scale (1.4826 × median |error| of 5 ms sub-blocks, largest within ±10 ms, floored at
    :data:`CLICK_SCALE_FLOOR`) *and* ``isolation_k`` × the largest error within ±12.5 ms outside a
    short guard. Flagged samples within :data:`CLICK_MERGE_S` form one event. With a reference,
    events overlapping a click of the reference are dropped.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference ``(T',)``, same rate, ``|T − T'| ≤ LENGTH_TOLERANCE``.
        mad_k: Robust-z threshold (:data:`CLICK_MAD_K`).
        isolation_k: Isolation ratio threshold (:data:`CLICK_ISOLATION_K`).

    Returns:
        Events ``"clicks"``. Strength = min(error / (mad_k × scale), error / (isolation_k × neighbour
        max)) at the event's peak: the factor by which the weaker of both tests is passed.
        ``detail``: ``peak_s``, ``residual``, ``residual_scale``, ``neighbour_max``, ``z``, ``n_samples``.

    Example:
        >>> x = 0.1 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000); x[8000] += 0.5
        >>> [round(e.start_s, 3) for e in detect_clicks(x, 16000)]
        [0.5]
    """
    x, sr, r = _prepare(audio, sample_rate, reference)
    events = _click_events(x, sr, mad_k, isolation_k)
    if r is not None and events:
        ref_events = _click_events(r, sr, mad_k, isolation_k)
        events = [ev for ev in events if not _overlaps(ev, ref_events)]
    return events


# --- 2. clipping ---------------------------------------------------------------------------------


def _clip_events(x: np.ndarray, sr: float, full_scale: float, min_run: int) -> list[DetectorEvent]:
    spans: list[tuple[int, int, float, int]] = []  # start, stop, level, min run for that polarity
    for sign in (1.0, -1.0):
        level = float(np.max(sign * x))
        if level >= full_scale:
            at, need = sign * x >= level - CLIP_TOLERANCE, min_run
        elif level >= CLIP_FLAT_MIN_LEVEL:
            at, need = (
                sign * x >= level - CLIP_FLAT_TOLERANCE * max(level, 1.0),
                max(min_run, CLIP_FLAT_MIN_RUN),
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
    for s, e in _merge(runs, max(1, int(round(CLIP_MERGE_S * sr)))):
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
    full_scale: float = CLIP_FULL_SCALE,
    min_run: int = CLIP_MIN_RUN,
) -> list[DetectorEvent]:
    """Clipping: runs of consecutive samples at the waveform's extreme value.

    Each polarity is checked on its own (clipping is often asymmetric). When the peak of a polarity
    is ≥ ``full_scale``, samples within :data:`CLIP_TOLERANCE` of it count and a run needs
    ``min_run`` samples; below full scale only a flat top counts — ≥ :data:`CLIP_FLAT_MIN_RUN`
    samples equal (within float rounding) to a peak of at least :data:`CLIP_FLAT_MIN_LEVEL`.
    Runs within :data:`CLIP_MERGE_S` form one event. With a reference, events overlapping
    clipping in the reference are dropped.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        full_scale: Peak that counts as full scale (:data:`CLIP_FULL_SCALE`).
        min_run: Shortest run at full scale (:data:`CLIP_MIN_RUN`).

    Returns:
        Events ``"clipping"``. Strength = longest run / required run length. ``detail``: ``n_runs``,
        ``n_clipped_samples``, ``longest_run``, ``level`` (signed clip level), ``min_run``.

    Example:
        >>> x = np.clip(2 * np.sin(2 * np.pi * 100 * np.arange(8000) / 8000), -1, 1)
        >>> len(detect_clipping(x, 8000)) == 1
        True
    """
    x, sr, r = _prepare(audio, sample_rate, reference)
    events = _clip_events(x, sr, full_scale, min_run)
    if r is not None and events:
        ref_events = _clip_events(r, sr, full_scale, min_run)
        events = [ev for ev in events if not _overlaps(ev, ref_events)]
    return events


# --- 3. DC offset --------------------------------------------------------------------------------


def detect_dc_offset(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    threshold: float = DC_THRESHOLD,
    window_s: float = DC_WINDOW_S,
) -> list[DetectorEvent]:
    """DC offset: |mean| over sliding windows above ``threshold``, merged into regions.

    Means are taken over ``window_s`` windows every :data:`DC_HOP_S`. Consecutive windows above the
    threshold form a region; its edges are placed where |mean| (interpolated between window
    centres) falls to half the region's largest value: for a step offset, that is where the step is.
    With a reference, a window counts only when the output's mean also differs from the reference's
    by more than ``threshold`` (an offset the reference has is not the model's). A clip shorter
    than one window has no events.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        threshold: Smallest |mean| that counts (:data:`DC_THRESHOLD`).
        window_s: Window length (:data:`DC_WINDOW_S`).

    Returns:
        Events ``"dc_offset"``. Strength = largest |window mean| in the region / ``threshold``.
        ``detail``: ``max_abs_mean``, ``region_mean`` (mean of the samples in the region),
        ``clip_mean`` (mean of the whole clip).

    Example:
        >>> x = np.zeros(16000); x[8000:12000] = 0.1
        >>> [(round(e.start_s, 3), round(e.end_s, 3)) for e in detect_dc_offset(x, 16000)]
        [(0.5, 0.75)]
    """
    x, sr, r = _prepare(audio, sample_rate, reference)
    win = max(1, int(round(window_s * sr)))
    hop = max(1, int(round(DC_HOP_S * sr)))
    if x.shape[0] < win:
        return []
    means, centres = _window_means(x, win, hop)
    mag = np.abs(means)
    over = mag > threshold
    if r is not None:
        over &= np.abs(means - _window_means(r, win, hop)[0]) > threshold

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
                peak / threshold,
                max_abs_mean=peak,
                region_mean=float(np.mean(x[i0 : max(i1, i0 + 1)])),
                clip_mean=float(np.mean(x)),
            )
        )
    return events


# --- 4. spectral discontinuities -----------------------------------------------------------------


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
    ratio: float = DISC_REF_RATIO,
    margin_db: float = DISC_REF_MARGIN_DB,
    self_k: float = DISC_SELF_K,
) -> list[DetectorEvent]:
    """Spectral discontinuities: frame-to-frame spectral flux far above what it should be.

    Flux is the RMS over :data:`DISC_BANDS` mel-spaced bands of the change in band level (dB)
    between consecutive Hann frames of :data:`DISC_WINDOW_S` (hop a quarter window). Band levels
    are floored :data:`DISC_RANGE_DB` below the loudest band (of the reference, when given). Only
    frames within :data:`DISC_ACTIVE_DB` of the loudest frame (or following one) are judged.

    With a reference, a frame is flagged when its flux exceeds ``ratio`` × the reference's largest
    flux at that frame ±1, plus ``margin_db``, plus the output's median flux over
    :data:`DISC_LOCAL_S` around it: speech onsets are as abrupt in the reference, so they do not
    fire, and neither does the steady fluctuation of a noisy output. Without one, the threshold is
    the clip's median flux + ``self_k`` × 1.4826 × MAD over judged frames, and frames that reach into
    the padding at the clip's ends are not judged (much less sensitive; prefer a reference).
    Flagged frames within :data:`DISC_MERGE_S` form one event.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        ratio: Factor over the reference's flux (:data:`DISC_REF_RATIO`).
        margin_db: Additive margin in dB (:data:`DISC_REF_MARGIN_DB`).
        self_k: Robust-z threshold without a reference (:data:`DISC_SELF_K`).

    Returns:
        Events ``"spectral_discontinuity"``. Strength = largest flux / threshold over the event's
        frames. ``detail``: ``flux_db`` (largest), ``threshold_db`` (at that frame),
        ``reference_flux_db`` and ``local_flux_db`` (with a reference), ``mode`` (``"reference"`` or
        ``"self"``).

    Example:
        >>> t = np.arange(16000) / 16000
        >>> ref = 0.5 * np.sin(2 * np.pi * 300 * t)
        >>> out = ref.copy(); out[8000:8480] = 0.5 * np.sin(2 * np.pi * 3000 * t[:480])  # 30 ms burst
        >>> [round(e.start_s, 2) for e in detect_spectral_discontinuities(out, 16000, ref)]
        [0.49]
    """
    x, sr, r = _prepare(audio, sample_rate, reference)
    n_fft = _n_fft(DISC_WINDOW_S, sr)
    hop = max(1, n_fft // 4)
    m = _mel_bands(n_fft, sr, DISC_BANDS)
    b = _stft_power(x, n_fft, hop) @ m
    br = _stft_power(r, n_fft, hop) @ m if r is not None else None
    peak = float((br if br is not None else b).max())
    if peak <= 0.0:
        return []
    global_floor = peak * 10.0 ** (-DISC_RANGE_DB / 10.0)
    flux = _band_flux(b, global_floor)
    energy = b.sum(axis=1)
    active = energy >= energy.max() * 10.0 ** (-DISC_ACTIVE_DB / 10.0)
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
        local = median_filter(flux, max(3, int(round(DISC_LOCAL_S * sr / hop)) | 1), mode="nearest")
        thresh = ratio * ref_flux + margin_db + local
    else:
        judged = flux[active]
        if judged.size < 8:
            return []
        med = float(np.median(judged))
        mad = 1.4826 * float(np.median(np.abs(judged - med)))
        thresh = np.full(flux.shape, med + self_k * max(mad, 0.1))
    flagged = active & (flux > thresh)
    events = []
    for s, e in _merge(_runs(flagged), max(1, int(round(DISC_MERGE_S * sr / hop)))):
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
    return events


# --- 5. high-frequency loss ----------------------------------------------------------------------


def detect_hf_loss(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    cutoff_hz: float | None = None,
    loss_db: float = HF_LOSS_DB,
) -> list[DetectorEvent]:
    """High-frequency loss: band energy above ``cutoff_hz`` far below the reference's.

    Hann STFT of :data:`HF_WINDOW_S` (hop a quarter window); per frame the energy above the cutoff
    in output and reference. A frame is flagged when the output's is ≥ ``loss_db`` below the
    reference's, judged only where the reference's band energy is within :data:`HF_REF_MIN_DB` of
    its loudest frame. Flagged frames within :data:`HF_MERGE_S` form a region; regions shorter
    than :data:`HF_MIN_DURATION_S` are dropped. Without a reference there is nothing to compare
    with and the result is empty.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Reference (same rate); required for any event.
        cutoff_hz: Lower edge of the band; ``None`` = :data:`HF_CUTOFF_FRACTION` × Nyquist.
        loss_db: Smallest loss that counts (:data:`HF_LOSS_DB`).

    Returns:
        Events ``"hf_loss"``. Strength = median loss over the region's flagged frames / ``loss_db``.
        ``detail``: ``median_loss_db``, ``max_loss_db``, ``cutoff_hz``, ``n_frames`` (flagged).

    Example:
        >>> rng = np.random.default_rng(0); ref = 0.1 * rng.standard_normal(16000)
        >>> out = ref.copy(); out[4000:12000] = np.convolve(ref, np.ones(8) / 8, "same")[4000:12000]
        >>> [(round(e.start_s, 2), round(e.end_s, 2)) for e in detect_hf_loss(out, 16000, ref)]
        [(0.26, 0.74)]
    """
    x, sr, r = _prepare(audio, sample_rate, reference)
    if r is None:
        return []
    cutoff = HF_CUTOFF_FRACTION * sr / 2.0 if cutoff_hz is None else float(cutoff_hz)
    if not 0.0 < cutoff < sr / 2.0:
        raise ValueError(f"cutoff_hz must be in (0, {sr / 2.0:g}) Hz (below Nyquist); got {cutoff:g}")
    n_fft = _n_fft(HF_WINDOW_S, sr)
    hop = max(1, n_fft // 4)
    band = np.fft.rfftfreq(n_fft, 1.0 / sr) >= cutoff
    p, pr = _stft_power(x, n_fft, hop), _stft_power(r, n_fft, hop)
    ref_peak = float(pr.sum(axis=1).max())
    if ref_peak <= 0.0:
        return []
    e_out, e_ref = p[:, band].sum(axis=1), pr[:, band].sum(axis=1)
    eps = ref_peak * 1e-12
    loss = _db(e_ref + eps) - _db(e_out + eps)
    meaningful = e_ref >= ref_peak * 10.0 ** (-HF_REF_MIN_DB / 10.0)
    flagged = meaningful & (loss >= loss_db)
    events = []
    for s, e in _merge(_runs(flagged), max(1, int(round(HF_MERGE_S * sr / hop)))):
        start, end = max(0.0, (s - 0.5) * hop / sr), min(x.shape[0] / sr, (e - 0.5) * hop / sr)
        if end - start < HF_MIN_DURATION_S:
            continue
        losses = loss[s:e][flagged[s:e]]
        events.append(
            _event(
                "hf_loss",
                start,
                end,
                float(np.median(losses)) / loss_db,
                median_loss_db=float(np.median(losses)),
                max_loss_db=float(losses.max()),
                cutoff_hz=cutoff,
                n_frames=int(losses.size),
            )
        )
    return events


# --- 6. tonal buzz -------------------------------------------------------------------------------


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
    prominence_db: float = TONAL_PROMINENCE_DB,
    excess_db: float = TONAL_EXCESS_DB,
    min_duration_s: float = TONAL_MIN_DURATION_S,
) -> list[DetectorEvent]:
    """Tonal buzz: a narrow spectral peak that stays at one frequency for ≥ ``min_duration_s``.

    Hann STFT of :data:`TONAL_WINDOW_S` (hop a quarter window), levels floored 100 dB below the
    output's loudest bin. A bin is tonal in a frame when it is ≥ ``prominence_db`` above the median
    spectrum over :data:`TONAL_MEDIAN_HZ` around it. A bin (±1) tonal for ``min_duration_s``, allowing gaps
    up to :data:`TONAL_MAX_GAP_S`, is persistent; touching persistent bins and frames form one
    candidate. With a reference, a candidate is a buzz when its median prominence exceeds the
    reference's (at the same frames, frequency ±1 bin) by ``excess_db``. Without one, it is a buzz
    when its level is steady (median absolute deviation ≤ :data:`TONAL_SELF_LEVEL_MAD_DB`), which
    the harmonics of a voice never are; a steady instrument note would count. The event's edges are
    the first and last frames whose level is within :data:`TONAL_EDGE_DB` of the candidate's median.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        prominence_db: Prominence over the local median (:data:`TONAL_PROMINENCE_DB`).
        excess_db: Prominence over the reference's (:data:`TONAL_EXCESS_DB`).
        min_duration_s: Persistence (:data:`TONAL_MIN_DURATION_S`).

    Returns:
        Events ``"tonal_buzz"``. Strength = median prominence / ``prominence_db``; with a reference
        the smaller of that and median excess / ``excess_db``. ``detail``: ``frequency_hz`` (the
        most prominent bin), ``prominence_db`` (median), ``level_mad_db``, ``excess_db`` (median,
        with a reference).

    Example:
        >>> t = np.arange(3 * 16000) / 16000
        >>> x = 0.05 * np.random.default_rng(0).standard_normal(t.size); y = x + 0.05 * np.sin(2 * np.pi * 1000 * t)
        >>> [round(e.detail["frequency_hz"]) for e in detect_tonal_buzz(y, 16000, x)]
        [1000]
    """
    x, sr, r = _prepare(audio, sample_rate, reference)
    n_fft = _n_fft(TONAL_WINDOW_S, sr)
    hop = max(1, n_fft // 4)
    min_frames = max(2, int(math.ceil(min_duration_s * sr / hop)))
    p = _stft_power(x, n_fft, hop)
    if p.shape[0] < min_frames or not p.max() > 0.0:
        return []
    floor = float(p.max()) * 1e-10
    width = max(3, int(round(TONAL_MEDIAN_HZ * n_fft / sr)) | 1)
    logp = 10.0 * np.log10(np.maximum(p, floor))
    prom = logp - _local_median(logp, width)
    tonal = prom >= prominence_db
    # Near DC and Nyquist the median window is one-sided and the edge bins are real-valued (twice the variance).
    tonal[:, : int(math.ceil(TONAL_MIN_HZ * n_fft / sr))] = False
    tonal[:, int((sr / 2.0 - TONAL_MEDIAN_HZ / 2.0) * n_fft / sr) :] = False
    pooled = maximum_filter1d(tonal.astype(np.uint8), 3, axis=1).astype(bool)
    gap = max(1, int(round(TONAL_MAX_GAP_S * sr / hop)))
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
        strength = med_prom / prominence_db
        if ref_prom is not None:
            excess = float(np.median(prom[t_idx, f_idx] - ref_prom[t_idx, f_idx]))
            if excess < excess_db:
                continue
            detail["excess_db"] = excess
            strength = min(strength, excess / excess_db)
        edge = rows[level >= np.median(level) - TONAL_EDGE_DB]
        if ref_prom is None and (mad > TONAL_SELF_LEVEL_MAD_DB or edge[-1] + 1 - edge[0] < min_frames):
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
    return sorted(events, key=lambda ev: ev.start_s)


# --- 7. NaN / silence ----------------------------------------------------------------------------


def detect_nan_or_silence(
    audio: ArrayLike,
    sample_rate: float,
    reference: ArrayLike | None = None,
    *,
    silence_dbfs: float = SILENCE_DBFS,
    min_duration_s: float = SILENCE_MIN_DURATION_S,
) -> list[DetectorEvent]:
    """Non-finite samples, and digital silence or near-silence where the reference is not silent.

    Non-finite samples (NaN, ±Inf) within :data:`NAN_MERGE_S` form one event. Silence is RMS over
    :data:`SILENCE_WINDOW_S` windows (every half window) below ``silence_dbfs`` for at least
    ``min_duration_s``; windows holding non-finite samples are not silent (they are reported as
    non-finite). With a reference, only the parts of a silence where the reference is at
    :data:`SILENCE_REF_ACTIVE_DBFS` or louder count (merged across :data:`SILENCE_REF_MERGE_S`, and
    again at least ``min_duration_s`` long); without one, only a clip that is silent throughout
    (and at least ``min_duration_s`` long) counts.

    Args:
        audio: Waveform ``(T,)`` or ``(1, T)``, full scale ±1; may contain NaN or Inf.
        sample_rate: Sample rate in Hz.
        reference: Optional reference (same rate).
        silence_dbfs: RMS level below which a window is silent (:data:`SILENCE_DBFS`).
        min_duration_s: Shortest silence (:data:`SILENCE_MIN_DURATION_S`).

    Returns:
        Events ``"nan_or_silence"`` with ``detail["kind"]`` ``"non_finite"`` or ``"silence"``.
        Non-finite: strength = number of non-finite samples (the threshold is one); ``detail``:
        ``n_nan``, ``n_inf``. Silence: strength = duration / ``min_duration_s``; ``detail``:
        ``rms_dbfs`` (output, floored at −200), ``reference_rms_dbfs`` (with a reference).

    Example:
        >>> x = np.ones(1000) * 0.1; x[500] = np.nan
        >>> [e.detail["kind"] for e in detect_nan_or_silence(x, 1000)]
        ['non_finite']
    """
    sr = _check_rate(sample_rate)
    raw = _mono(audio, "audio")
    bad = ~np.isfinite(raw)
    x, sr, r = _prepare(audio, sr, reference)
    bad = bad[: x.shape[0]]
    events = []
    idx = np.flatnonzero(bad)
    if idx.size:
        gap = max(1, int(round(NAN_MERGE_S * sr)))
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
    win = max(1, int(round(SILENCE_WINDOW_S * sr)))
    hop = max(1, win // 2)
    ms, centres = _window_means(x * x, win, hop)
    has_bad, _ = _window_means(bad.astype(np.float64), win, hop)
    silent = (ms < 10.0 ** (silence_dbfs / 10.0)) & (has_bad == 0)

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
        if silent.all() and x.shape[0] / sr >= min_duration_s:
            dur = x.shape[0] / sr
            events.append(
                _event(
                    "nan_or_silence",
                    0.0,
                    dur,
                    dur / min_duration_s,
                    kind="silence",
                    rms_dbfs=rms_db(x, 0.0, dur),
                )
            )
        return sorted(events, key=lambda ev: ev.start_s)
    ref_ms, _ = _window_means(r * r, win, hop)
    ref_active = ref_ms >= 10.0 ** (SILENCE_REF_ACTIVE_DBFS / 10.0)
    for s, e in _runs(silent):
        for a, b in _merge(_runs(ref_active[s:e]) + s, int(round(SILENCE_REF_MERGE_S * sr / hop))):
            lo, hi = span(a, b)
            if hi - lo < min_duration_s:
                continue
            events.append(
                _event(
                    "nan_or_silence",
                    lo,
                    hi,
                    (hi - lo) / min_duration_s,
                    kind="silence",
                    rms_dbfs=rms_db(x, lo, hi),
                    reference_rms_dbfs=rms_db(r, lo, hi),
                )
            )
    return sorted(events, key=lambda ev: ev.start_s)


# --- registry and helpers ------------------------------------------------------------------------

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
        reference: Optional reference (same rate, length within :data:`LENGTH_TOLERANCE`).
        detectors: Names to run, in any order; ``None`` = all.

    Returns:
        All events, sorted by start time, then detector name.

    Raises:
        ValueError: for an unknown detector name (lists the known ones), a shape other than ``(T,)``
            or ``(1, T)``, an empty waveform, or lengths too far apart.

    Example:
        >>> t = np.arange(16000) / 16000
        >>> x = 0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 1.5 * t); x[4003] = np.nan
        >>> [(e.detector, round(e.start_s, 2)) for e in detect_all(x, 16000)]  # the zeroed sample is a click
        [('spectral_discontinuity', 0.25), ('clicks', 0.25), ('nan_or_silence', 0.25)]
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


def event_rate(events: Sequence[DetectorEvent], duration_s: float) -> float:
    """Events per minute of audio.

    Example:
        >>> event_rate([DetectorEvent("clicks", 1.0, 1.001, 2.0)] * 3, 30.0)
        6.0
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    return len(events) * 60.0 / duration_s


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
) -> dict[str, Any]:
    """Agreement between detected events and regions flagged by listeners.

    A detected event and a flagged region match when they overlap after the flagged region is
    widened by ``tolerance_s`` on both sides (touching counts). Precision is the share of detected
    events that match some flagged region, recall the share of flagged regions matched by some
    event. Either is ``None`` when there is nothing to divide by.

    Args:
        detected: ``(start_s, end_s)`` pairs or :class:`DetectorEvent` objects.
        flagged: ``(start_s, end_s)`` pairs.
        tolerance_s: Widening in seconds (≥ 0).

    Returns:
        ``{"precision", "recall", "n_detected", "n_flagged", "n_detected_matched",
        "n_flagged_matched", "tolerance_s"}``.

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
        "tolerance_s": float(tolerance_s),
    }


__all__ = [
    "DETECTORS",
    "DetectorEvent",
    "LENGTH_TOLERANCE",
    "detect_all",
    "detect_clicks",
    "detect_clipping",
    "detect_dc_offset",
    "detect_hf_loss",
    "detect_nan_or_silence",
    "detect_spectral_discontinuities",
    "detect_tonal_buzz",
    "event_rate",
    "region_agreement",
]
