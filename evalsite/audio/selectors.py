"""Reads of stored audio."""

import numpy as np
import soundfile as sf

from evalsite.audio.models import AudioAsset


def audio_asset_samples(asset: AudioAsset) -> tuple[np.ndarray, int]:
    """The stored samples, float32 of shape (frames, channels), and the sample rate.

    Assets were validated when they were stored, so this reads without re-validating.
    """
    with asset.file.open("rb") as fh:
        samples, rate = sf.read(fh, dtype="float32", always_2d=True)
    return samples, int(rate)
