"""BS.1770 loudness, true peak and the alignment plan, checked against published values and peers.

Peers: pyloudnorm's meter for gated loudness (run here directly, with its defaults), BS.1770-4's
calibration statement (a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS) and a 64× FFT
(band-limited) interpolation for the true peak.
"""

import math

import numpy as np
import pyloudnorm
import pytest
from scipy import signal

from evalsite.audio.loudness import (
    DEFAULT_CEILING_DBTP,
    ClipLoudness,
    apply_gain,
    clip_loudness,
    integrated_loudness,
    loudness_plan,
    true_peak,
)

RATE = 48000


def sine(freq: float, amplitude: float, seconds: float, rate: int = RATE, phase: float = 0.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate + phase)


def test_a_full_scale_997_hz_sine_reads_minus_3_01_lufs_as_bs1770_4_states():
    # ±0.1 LU: the EBU Tech 3341 tolerance for a meter (the filter's onset shifts the first block).
    assert integrated_loudness(sine(997, 1.0, 2.0), RATE) == pytest.approx(-3.01, abs=0.1)
    assert integrated_loudness(sine(997, 0.1, 2.0), RATE) == pytest.approx(-23.01, abs=0.1)


def test_loudness_of_a_stereo_pair_adds_3_db_and_matches_pyloudnorm_on_noise():
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal((3 * 44100, 2))
    peer = pyloudnorm.Meter(44100).integrated_loudness(noise.copy())
    assert integrated_loudness(noise, 44100) == pytest.approx(peer, abs=1e-9)
    mono = integrated_loudness(noise[:, :1], 44100)
    both = integrated_loudness(np.repeat(noise[:, :1], 2, axis=1), 44100)
    assert both - mono == pytest.approx(10 * math.log10(2), abs=1e-6)


def test_a_clip_shorter_than_one_gating_block_is_measured_as_one_block():
    # A stationary tone has the same loudness over 200 ms as over 2 s; pyloudnorm refuses the short clip.
    short, long = sine(997, 0.1, 0.2), sine(997, 0.1, 2.0)
    with pytest.raises(ValueError):
        pyloudnorm.Meter(RATE).integrated_loudness(short.copy())
    assert integrated_loudness(short, RATE) == pytest.approx(integrated_loudness(long, RATE), abs=0.05)
    assert integrated_loudness(sine(997, 0.1, 0.4, rate=22050)[:8819], 22050) == pytest.approx(-23.0, abs=0.1)


def test_silence_and_sound_under_the_absolute_gate_have_no_loudness():
    assert integrated_loudness(np.zeros(RATE), RATE) is None
    assert integrated_loudness(sine(997, 1e-5, 1.0), RATE) is None  # about -103 LUFS
    assert clip_loudness(np.zeros(RATE), RATE) == ClipLoudness(loudness_lufs=None, true_peak_dbtp=None)


def test_bad_clips_are_refused_with_the_shape_or_channel_count_named():
    with pytest.raises(ValueError, match="no frames"):
        integrated_loudness(np.zeros((0, 1)), RATE)
    with pytest.raises(ValueError, match="6 channels"):
        integrated_loudness(np.zeros((RATE, 6)), RATE)
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        true_peak(np.zeros((2, 2, 2)), RATE)
    with pytest.raises(ValueError, match="sample rate"):
        true_peak(np.zeros(10), 0)


def test_true_peak_finds_the_inter_sample_peak_that_sample_peak_misses():
    # fs/4 at 45°: every sample is ±0.707, the waveform peaks at 1.0 between samples (BS.1770-4 Annex 2).
    # Faded in and out: a tone cut off abruptly overshoots at its ends once band-limited.
    x = sine(12000, 1.0, 0.1, phase=np.pi / 4) * signal.windows.tukey(4800, 0.2)
    assert np.abs(x).max() == pytest.approx(math.sqrt(0.5), abs=1e-9)
    assert true_peak(x, RATE) == pytest.approx(1.0, abs=0.01)


def test_true_peak_of_noise_is_within_the_4x_oversampling_error_of_a_64x_interpolation():
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = signal.lfilter(*signal.butter(4, 0.8), rng.standard_normal(4800)) * 0.3
        reference = np.abs(signal.resample(x, 64 * len(x))).max()
        estimate = true_peak(x, RATE)
        # BS.1770-4 Annex 2: 4× oversampling under-reads by at most ~0.7 dB; never far above.
        assert -0.7 <= 20 * math.log10(estimate / reference) <= 0.1


def test_the_plan_brings_every_clip_to_the_target_when_no_peak_passes_the_ceiling():
    clips = {
        "quiet": ClipLoudness(-35.0, -20.0),
        "loud": ClipLoudness(-20.0, -8.0),
        "silent": ClipLoudness(None, None),
    }
    plan = loudness_plan(clips, target_lufs=-23.0)
    assert plan.gains_db == {"quiet": 12.0, "loud": -3.0, "silent": 0.0}
    assert (plan.served_lufs, plan.reduction_db, plan.limited_by) == (-23.0, 0.0, None)


def test_the_plan_lowers_the_whole_group_by_one_amount_when_a_peak_would_pass_the_ceiling():
    # "spiky" has a 25 dB peak-to-loudness ratio: at -23 LUFS it would peak at +2 dBTP.
    clips = {"spiky": ClipLoudness(-30.0, -5.0), "plain": ClipLoudness(-20.0, -10.0)}
    plan = loudness_plan(clips, target_lufs=-23.0, ceiling_dbtp=-1.0)
    assert plan.served_lufs == pytest.approx(-26.0)
    assert plan.reduction_db == pytest.approx(3.0) and plan.limited_by == "spiky"
    assert plan.gains_db == pytest.approx({"spiky": 4.0, "plain": -6.0})


def test_aligned_clips_measure_the_served_loudness_with_pyloudnorm_and_never_clip():
    rng = np.random.default_rng(7)
    clicks = np.zeros(2 * RATE)
    clicks[::4800] = 0.99  # a click train: very high peak-to-loudness ratio
    clips = {
        "quiet noise": 0.01 * rng.standard_normal(2 * RATE),
        "loud tone": sine(440, 0.9, 2.0),
        "clicks": clicks + 0.001 * rng.standard_normal(2 * RATE),
        "short": sine(997, 0.3, 0.25),
    }
    plan = loudness_plan({k: clip_loudness(x, RATE) for k, x in clips.items()}, target_lufs=-16.0)
    assert plan.limited_by == "clicks" and plan.reduction_db > 0
    for key, x in clips.items():
        served = apply_gain(x, plan.gains_db[key])
        assert served.dtype == np.float32
        measured = (
            pyloudnorm.Meter(RATE).integrated_loudness(served.astype(np.float64))
            if len(served) >= 0.4 * RATE
            else integrated_loudness(served, RATE)
        )
        assert measured == pytest.approx(plan.served_lufs, abs=0.5), key
        assert 20 * math.log10(true_peak(served, RATE)) <= DEFAULT_CEILING_DBTP + 1e-3, key
        assert np.abs(served).max() < 1.0
