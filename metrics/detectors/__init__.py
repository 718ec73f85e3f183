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

One module per detector; each holds a frozen config dataclass (``ClickConfig``, ...) whose fields
are its thresholds, each with the reason for its value, and a default instance (``CLICKS``, ...).
A detector takes ``config=`` for a different set, and its main thresholds also as keyword
arguments. The values were chosen on artifacts planted at known times and strengths in eSpeak NG
and real speech (``benchmarks/detector_calibration.py``; figures in benchmarks/README.md): with the
clean clip as reference every detector reaches precision ≥ 0.9 and recall ≥ 0.8 on its kind, and
none fires on 180 clean eSpeak NG utterances or the real recordings, alone or as a 2-sample-delayed
copy with −60 dBFS noise against themselves.

With a reference, an artifact that the reference has too (a click in the recording, say) is not
reported: the detectors look for what the model added or removed. The reference may differ in
length by up to :data:`LENGTH_TOLERANCE` samples; both are truncated to the shorter. Non-finite
samples are replaced by zeros before any detector but :func:`detect_nan_or_silence` looks at the
signal.

A detector reports events, not frames: every one passes its candidates through
:func:`merge_events`, which joins those that overlap or lie within the detector's ``merge_s``
(documented on its config) into one event with the strongest candidate's strength, and drops those
shorter than its minimum duration, where it has one.

Strength is dimensionless, ≥ 0 and, for every detector, ``> 1`` means clearly past the threshold;
its exact definition is in each detector's docstring.
"""

from metrics.detectors._common import LENGTH_TOLERANCE, DetectorEvent, merge_events
from metrics.detectors.agreement import event_rate, proportion_interval, region_agreement
from metrics.detectors.clicks import CLICKS, ClickConfig, detect_clicks
from metrics.detectors.clipping import CLIPPING, ClippingConfig, detect_clipping
from metrics.detectors.dc_offset import DC_OFFSET, DcOffsetConfig, detect_dc_offset
from metrics.detectors.hf_loss import HF_LOSS, HfLossConfig, detect_hf_loss
from metrics.detectors.nan_or_silence import NAN_OR_SILENCE, NanOrSilenceConfig, detect_nan_or_silence
from metrics.detectors.registry import DETECTORS, Detector, detect_all
from metrics.detectors.spectral_discontinuity import (
    SPECTRAL_DISCONTINUITY,
    SpectralDiscontinuityConfig,
    detect_spectral_discontinuities,
)
from metrics.detectors.tonal_buzz import TONAL_BUZZ, TonalBuzzConfig, detect_tonal_buzz

__all__ = [
    "CLICKS",
    "CLIPPING",
    "DC_OFFSET",
    "DETECTORS",
    "HF_LOSS",
    "LENGTH_TOLERANCE",
    "NAN_OR_SILENCE",
    "SPECTRAL_DISCONTINUITY",
    "TONAL_BUZZ",
    "ClickConfig",
    "ClippingConfig",
    "DcOffsetConfig",
    "Detector",
    "DetectorEvent",
    "HfLossConfig",
    "NanOrSilenceConfig",
    "SpectralDiscontinuityConfig",
    "TonalBuzzConfig",
    "detect_all",
    "detect_clicks",
    "detect_clipping",
    "detect_dc_offset",
    "detect_hf_loss",
    "detect_nan_or_silence",
    "detect_spectral_discontinuities",
    "detect_tonal_buzz",
    "event_rate",
    "merge_events",
    "proportion_interval",
    "region_agreement",
]
