"""Stimuli of the antiphase headphone check (Woods, Siegel, Traer & McDermott 2017, Atten. Percept.
Psychophys. 79:2064-2072).

Each trial is three 200 Hz tones; the listener says which is quietest. One tone is 6 dB quieter
(the right answer), one is in antiphase between the left and right channels. Over headphones the
antiphase tone sounds as loud as the standard; over loudspeakers the two channels partly cancel in
the air, so the antiphase tone tends to sound quietest and the listener answers wrongly.

From the paper (abstract and public descriptions): 200 Hz pure tones, three per trial, one in
antiphase, one at -6 dB, "which is quietest", six trials. Chosen here where those sources do not
say: 1 s tones with 100 ms raised-cosine on/off ramps, 0.5 s of silence between tones, 44.1 kHz,
the standard at -10 dBFS peak; pass with at least 5 of 6 correct.
"""

from __future__ import annotations

import io
import random

import numpy as np
import soundfile

TONE_HZ = 200.0
TONE_S = 1.0
RAMP_S = 0.1
GAP_S = 0.5
SAMPLE_RATE = 44100
STANDARD_PEAK = 10 ** (-10 / 20)
QUIET_DB = -6.0
N_TRIALS = 6
PASS_CORRECT = 5
INTERVALS = ("standard", "quiet", "antiphase")


def trial_orders(seed: int, n_trials: int = N_TRIALS) -> list[tuple[str, str, str]]:
    """The order of the three intervals in each trial, deterministic from ``seed``."""
    rng = random.Random(f"headphone-check:{seed}")
    return [tuple(rng.sample(INTERVALS, 3)) for _ in range(n_trials)]


def correct_answer(order: tuple[str, ...]) -> int:
    """The right answer (1, 2 or 3): the position of the quieter tone."""
    return order.index("quiet") + 1


def _tone(sample_rate: int) -> np.ndarray:
    n = int(round(TONE_S * sample_rate))
    t = np.arange(n) / sample_rate
    tone = np.sin(2 * np.pi * TONE_HZ * t)
    ramp = int(round(RAMP_S * sample_rate))
    window = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    tone[:ramp] *= window
    tone[-ramp:] *= window[::-1]
    return tone


def trial_samples(order: tuple[str, ...], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One trial as stereo samples, float32 of shape (frames, 2)."""
    tone = STANDARD_PEAK * _tone(sample_rate)
    gap = np.zeros((int(round(GAP_S * sample_rate)), 2))
    parts = []
    for i, interval in enumerate(order):
        if interval == "standard":
            left, right = tone, tone
        elif interval == "quiet":
            quiet = tone * 10 ** (QUIET_DB / 20)
            left, right = quiet, quiet
        elif interval == "antiphase":
            left, right = tone, -tone
        else:
            raise ValueError(f"unknown interval {interval!r}; expected one of {INTERVALS}")
        if i:
            parts.append(gap)
        parts.append(np.stack([left, right], axis=1))
    return np.concatenate(parts).astype(np.float32)


def trial_wav(order: tuple[str, ...], sample_rate: int = SAMPLE_RATE) -> bytes:
    """One trial as a 16-bit stereo WAV file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, trial_samples(order, sample_rate), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
