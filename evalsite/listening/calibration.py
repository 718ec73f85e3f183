"""Level calibration before the headphone check (Woods, Siegel, Traer & McDermott 2017), and the
check's tones at the calibrated level.

The listener plays a calibration noise and turns their device volume until it is "loud but
comfortable"; everything after that plays at a known level relative to it. The noise has the
level of the test material (its active RMS: pauses do not count), so the test is heard at the
volume the listener chose; the check's standard and antiphase tones have the same RMS as the
noise and its quiet tone 6 dB less, so the check is heard at the volume set on the noise (the
calibration step that precedes the check in Woods et al.'s procedure). A material level so high
that the noise would clip is lowered to the loudest level that does not. Nothing here is stored:
the sounds are made on request, identical for every listener of a test. Browsers play them
through a unity-gain path (static/listening/calibration.js, headphone.js and player.js), so these
relative levels are what is heard.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

from evalsite.audio.headphone_check import SAMPLE_RATE, TONE_S, trial_samples

CALIBRATION_S = 3.0
RAMP_S = 0.05
FRAME_S = 0.05
ACTIVE_RANGE_DB = 40.0  # frames more than this below the loudest frame are pauses
SILENCE_DBFS = -70.0
MAX_PEAK = 0.99
NOISE_SEED = 20170101


def dbfs(rms: float) -> float:
    return 20.0 * float(np.log10(max(rms, 1e-12)))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def active_level_dbfs(samples: np.ndarray, rate: int) -> float | None:
    """RMS level in dBFS of the active part of a clip ((frames,) or (frames, channels)).

    Mono mix, 50 ms frames, frames within 40 dB of the loudest and above -70 dBFS; None for silence.
    """
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    n = max(1, int(FRAME_S * rate))
    frames = mono[: len(mono) // n * n].reshape(-1, n) if len(mono) >= n else mono[None, :]
    power = np.mean(np.square(frames, dtype=np.float64), axis=1)
    loudest = float(power.max()) if power.size else 0.0
    floor = max(loudest * 10 ** (-ACTIVE_RANGE_DB / 10), 10 ** (SILENCE_DBFS / 10))
    active = power[power >= floor]
    if not active.size:
        return None
    return 10.0 * float(np.log10(active.mean()))


def material_level_dbfs(clips: list[tuple[np.ndarray, int]]) -> float | None:
    """The level of a test's material: the median active level of its clips (None if all silent)."""
    levels = [level for level in (active_level_dbfs(s, r) for s, r in clips) if level is not None]
    return float(np.median(levels)) if levels else None


@lru_cache(maxsize=1)
def standard_tone_dbfs() -> float:
    """RMS (dBFS, per channel, ramps included) of the headphone check's standard tone as generated."""
    tone = trial_samples(("standard", "quiet", "antiphase"))[: int(round(TONE_S * SAMPLE_RATE)), 0]
    return dbfs(rms(tone))


def _ramp(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)


@lru_cache(maxsize=1)
def _noise() -> np.ndarray:
    """Seeded pink (1/f power) noise with raised-cosine ramps, unit RMS: a broadband sound whose
    spectrum falls like speech's, the same for every listener."""
    frames = int(round(CALIBRATION_S * SAMPLE_RATE))
    rng = np.random.default_rng(NOISE_SEED)
    spectrum = rng.standard_normal(frames // 2 + 1) + 1j * rng.standard_normal(frames // 2 + 1)
    freqs = np.fft.rfftfreq(frames, 1 / SAMPLE_RATE)
    spectrum *= 1 / np.sqrt(np.maximum(freqs, 20.0))
    spectrum[freqs < 20.0] = 0
    noise = np.fft.irfft(spectrum, n=frames)
    ramp = int(round(RAMP_S * SAMPLE_RATE))
    noise[:ramp] *= _ramp(ramp)
    noise[-ramp:] *= _ramp(ramp)[::-1]
    return noise / rms(noise)


def calibration_level(level_dbfs: float | None) -> float:
    """The level (RMS dBFS) the calibration noise and the check's tones play at: the test's material
    level, or the check's own when none is stored; never so loud that the noise would clip."""
    wanted = standard_tone_dbfs() if level_dbfs is None else float(level_dbfs)
    loudest = dbfs(MAX_PEAK / float(np.abs(_noise()).max()))
    return min(wanted, loudest)


def calibration_samples(level_dbfs: float | None) -> np.ndarray:
    """The calibration noise, float32 of shape (frames, 2), the same in both ears, at ``calibration_level``."""
    noise = _noise() * 10 ** (calibration_level(level_dbfs) / 20)
    return np.repeat(noise[:, None], 2, axis=1).astype(np.float32)


def headphone_trial_samples(order: tuple[str, ...], level_dbfs: float | None) -> np.ndarray:
    """One headphone-check trial with its standard (and antiphase) tone at ``calibration_level``."""
    samples = trial_samples(order).astype(np.float64)
    samples *= 10 ** ((calibration_level(level_dbfs) - standard_tone_dbfs()) / 20)
    return samples.astype(np.float32)


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-bit WAV at the check's sample rate."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
