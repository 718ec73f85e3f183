"""Reads of stored audio."""

import numpy as np
import soundfile as sf

from evalsite.audio.decoding import resample
from evalsite.audio.models import AudioAsset


def audio_asset_samples(asset: AudioAsset) -> tuple[np.ndarray, int]:
    """The stored samples, float32 of shape (frames, channels), and the sample rate.

    Assets were validated when they were stored, so this reads without re-validating.
    """
    with asset.file.open("rb") as fh:
        samples, rate = sf.read(fh, dtype="float32", always_2d=True)
    return samples, int(rate)


class AudioCache:
    """Decode each asset once and resample it once per rate (mono, float32), for one job.

    Multi-channel audio is downmixed: the models and metrics here are mono.
    """

    def __init__(self) -> None:
        self._native: dict[int, tuple[np.ndarray, int]] = {}
        self._resampled: dict[tuple[int, int], np.ndarray] = {}
        self.decodes = 0

    def mono(self, asset: AudioAsset, rate: int | None = None) -> np.ndarray:
        if asset.pk not in self._native:
            samples, native_rate = audio_asset_samples(asset)
            self._native[asset.pk] = (samples.mean(axis=1), native_rate)
            self.decodes += 1
        mono, native_rate = self._native[asset.pk]
        if rate is None or rate == native_rate:
            return mono
        key = (asset.pk, rate)
        if key not in self._resampled:
            self._resampled[key] = resample(mono, native_rate, rate)
        return self._resampled[key]


def audio_samples_problem(samples: np.ndarray) -> str | None:
    """Why decoded samples cannot be used (no frames, NaN/Inf samples), or ``None``."""
    if samples.size == 0:
        return "no audio frames"
    finite = np.isfinite(samples)
    if not finite.all():
        return f"{int((~finite).sum())} NaN/Inf samples"
    return None


def audio_asset_problem(audio: AudioCache, asset: AudioAsset) -> str | None:
    """Why a stored clip cannot be used (missing, unreadable, empty, NaN/Inf), or ``None``.

    Assets were validated when stored, so this catches files damaged or replaced since. The clip
    is decoded through ``audio``, so the job that goes on to use it does not decode it again.
    """
    try:
        samples = audio.mono(asset)
    except FileNotFoundError:
        return "the stored file is missing"
    except (OSError, RuntimeError, sf.SoundFileError) as exc:
        return f"the stored file cannot be read ({type(exc).__name__}: {exc})"
    return audio_samples_problem(samples)
