"""Loudness alignment of listening-test stimuli (ITU-R BS.1770-4 loudness, true peak; pure: numpy, soxr).

BS.1534-3 (§5.2, MUSHRA) and ITU-T P.808 ask for the stimuli of a test to be presented at equal
loudness, so that level is not a cue that groups systems. ``loudness_plan`` finds one gain per clip
that brings every clip of a test to one target loudness, and ``apply_gain`` applies it.

Loudness is BS.1770-4 integrated loudness (pyloudnorm's meter, K-weighting, 400 ms blocks, absolute
and relative gates). A clip shorter than one 400 ms gating block has no gated measure; for it the
meter is run with a single block as long as the clip (the K-weighted mean square of the whole clip,
absolute gate only): the same quantity BS.1770 averages, over the only block there is.

True peak is the BS.1770-4 Annex 2 estimate: the largest magnitude of the signal oversampled 4×
(soxr's very-high-quality resampler: as accurate as ``scipy.signal.resample_poly`` against a 64×
band-limited interpolation, and three times faster, which counts when a build measures every sound),
and never below the largest sample.

How clipping is prevented: gain alone can push a clip with a high peak-to-loudness ratio past full
scale. Two remedies exist: a true-peak limiter per clip, or a common gain reduction. This module uses
the common reduction: when some clip, brought to the target, would peak above ``ceiling_dbtp``, the
target of the whole group is lowered until it fits. A limiter would alter the very signals listeners
are asked to judge (its gain riding is itself an audible artifact, and it acts on the systems with the
sharpest transients, not at random), while a common reduction is a pure scale factor: every clip keeps
its waveform and the clips stay at equal loudness, only a little quieter. The served loudness is
returned, so the caller can record and report it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import soxr

# BS.1770 gating block; shorter clips are measured as one block (see the module docstring).
GATING_BLOCK_S = 0.4
TRUE_PEAK_OVERSAMPLING = 4
# EBU R128 / P.808 practice: -1 dBTP leaves room for the inter-sample overs of later encoding.
DEFAULT_CEILING_DBTP = -1.0
# pyloudnorm's channel weights cover up to 5 channels (L, R, C, Ls, Rs).
_MAX_CHANNELS = 5


@dataclass(frozen=True)
class ClipLoudness:
    """What alignment needs to know about one clip: its loudness (None when silent) and true peak."""

    loudness_lufs: float | None
    true_peak_dbtp: float | None  # None for digital silence


@dataclass(frozen=True)
class LoudnessPlan:
    """The gains that align a group of clips.

    ``served_lufs`` is the loudness every (non-silent) clip has after its gain: ``target_lufs``, or
    lower where the true-peak ceiling needed a common reduction (``reduction_db`` > 0, caused by
    ``limited_by``). Silent clips get a gain of 0 dB.
    """

    target_lufs: float
    ceiling_dbtp: float
    served_lufs: float
    reduction_db: float
    limited_by: object | None
    gains_db: dict[object, float]


def _as_2d(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"samples must have shape (frames,) or (frames, channels), got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("samples hold no frames; an empty clip has no loudness")
    if array.shape[1] > _MAX_CHANNELS:
        raise ValueError(
            f"BS.1770 weights cover at most {_MAX_CHANNELS} channels; got {array.shape[1]} channels"
        )
    return array


def integrated_loudness(samples: np.ndarray, sample_rate: int) -> float | None:
    """BS.1770-4 integrated loudness in LUFS, or None for a clip under the -70 LUFS absolute gate.

    Clips shorter than 400 ms are measured as one block as long as the clip (module docstring).

    Args:
        samples: Shape (frames,) or (frames, channels), at most 5 channels.
        sample_rate: Hz.

    Raises:
        ValueError: no frames, more than 5 channels, or a shape that is not 1-D or 2-D.

    Example:
        >>> tone = 0.1 * np.sin(2 * np.pi * 997 * np.arange(48000) / 48000)
        >>> abs(integrated_loudness(tone, 48000) - -23.01) < 0.1  # BS.1770-4: 0 dBFS 997 Hz reads -3.01
        True
    """
    # Imported here: pyloudnorm is only needed where a test is built or audio ingested, not in the web tier.
    import pyloudnorm

    array = _as_2d(samples)
    frames = array.shape[0]
    block = GATING_BLOCK_S
    if frames < GATING_BLOCK_S * sample_rate:
        block = frames / sample_rate
        if frames < block * sample_rate:  # float rounding must not make the block longer than the clip
            block = float(np.nextafter(block, 0.0))
    value = pyloudnorm.Meter(sample_rate, block_size=block).integrated_loudness(array)
    return float(value) if math.isfinite(value) and value >= -70.0 else None


def true_peak(samples: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 Annex 2 true peak, linear full scale: max |x| of the 4× oversampled signal.

    Args:
        samples: Shape (frames,) or (frames, channels).
        sample_rate: Hz (only checked to be positive: the oversampling ratio is fixed).

    Example:
        >>> n = np.arange(4800)
        >>> x = np.sin(2 * np.pi * 12000 * n / 48000 + np.pi / 4)  # samples fall at ±0.707
        >>> round(float(np.abs(x).max()), 3), round(true_peak(x, 48000), 1)
        (0.707, 1.0)
    """
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise ValueError(f"samples must have shape (frames,) or (frames, channels), got {array.shape}")
    if array.size == 0:
        return 0.0
    upsampled = soxr.resample(array, sample_rate, TRUE_PEAK_OVERSAMPLING * sample_rate, quality="VHQ")
    return float(max(np.abs(upsampled).max(), np.abs(array).max()))


def clip_loudness(samples: np.ndarray, sample_rate: int) -> ClipLoudness:
    """Loudness and true peak (dBTP) of one clip."""
    peak = true_peak(samples, sample_rate)
    return ClipLoudness(
        loudness_lufs=integrated_loudness(samples, sample_rate),
        true_peak_dbtp=20.0 * math.log10(peak) if peak > 0 else None,
    )


def loudness_plan(
    clips: Mapping[object, ClipLoudness],
    *,
    target_lufs: float,
    ceiling_dbtp: float = DEFAULT_CEILING_DBTP,
) -> LoudnessPlan:
    """One gain per clip bringing every clip to one loudness without a true peak above ``ceiling_dbtp``.

    The served loudness is ``min(target, ceiling - max(true peak - loudness))``: the target unless the
    clip with the highest peak-to-loudness ratio would then pass the ceiling, in which case the whole
    group is lowered by the same amount (module docstring says why not a limiter).

    Args:
        clips: Measurements (``clip_loudness``) keyed by anything hashable.
        target_lufs: Wanted loudness.
        ceiling_dbtp: Highest true peak allowed after the gain.

    Example:
        >>> plan = loudness_plan({"a": ClipLoudness(-30.0, -10.0), "b": ClipLoudness(-20.0, -0.5)},
        ...                      target_lufs=-23.0)
        >>> plan.gains_db == {"a": 7.0, "b": -3.0}, plan.served_lufs
        (True, -23.0)
    """
    served, limited_by = float(target_lufs), None
    for key, clip in clips.items():
        if clip.loudness_lufs is None or clip.true_peak_dbtp is None:
            continue
        allowed = ceiling_dbtp - (clip.true_peak_dbtp - clip.loudness_lufs)
        if allowed < served:
            served, limited_by = allowed, key
    gains = {
        key: (served - clip.loudness_lufs if clip.loudness_lufs is not None else 0.0)
        for key, clip in clips.items()
    }
    return LoudnessPlan(
        target_lufs=float(target_lufs),
        ceiling_dbtp=float(ceiling_dbtp),
        served_lufs=served,
        reduction_db=float(target_lufs) - served,
        limited_by=limited_by,
        gains_db=gains,
    )


def apply_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """``samples`` scaled by ``gain_db`` (computed in float64), as float32."""
    return (np.asarray(samples, dtype=np.float64) * 10.0 ** (gain_db / 20.0)).astype(np.float32)
