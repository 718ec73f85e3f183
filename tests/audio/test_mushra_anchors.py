"""BS.1534-3 low-pass anchors: mask compliance at the platform's rates, alignment, warnings.

The measured checks below do not use the self-test's code: they push sines and white noise through
the public ``lowpass_anchor`` and read amplitudes / band energies back with least squares and FFTs.
"""

import re

import numpy as np
import pytest
from scipy import signal

from evalsite.audio import anchors
from evalsite.audio.anchors import (
    ANCHOR_MASKS,
    ANCHOR_MIN_REMOVED_DB,
    LP35,
    LP70,
    anchor_effectiveness_warning,
    anchor_filter_self_test,
    anchor_removed_level_db,
    lowpass_anchor,
    reference_bandwidth_hz,
)
from evalsite.audio.speech import synthesize

RATES = [16000, 22050, 24000, 32000, 44100, 48000]
# (anchor, passband edge, 25 dB frequency, 50 dB frequency) as BS.1534-3 and the scaled LP70 mask say.
MASKS = [(LP35, 3500.0, 4000.0, 4500.0), (LP70, 7000.0, 8000.0, 9000.0)]


def _sine_gains_db(sample_rate: int, cutoff_hz: float, freqs: np.ndarray) -> np.ndarray:
    """Gain of the anchor at each frequency: one sine per channel, amplitude by least squares.

    One second of each sine is filtered; the amplitude is fitted on the middle half, away from the
    start and end where the anchor sees the silence around the excerpt.
    """
    n = np.arange(sample_rate)
    phase = 2 * np.pi * np.outer(n, freqs) / sample_rate
    sines = np.sin(phase + 0.3)
    out = lowpass_anchor(sines.astype(np.float64), sample_rate, cutoff_hz)
    middle = slice(sample_rate // 4, 3 * sample_rate // 4)
    gains = np.empty(len(freqs))
    for k in range(len(freqs)):
        basis = np.column_stack([np.sin(phase[middle, k]), np.cos(phase[middle, k])])
        coef_in = np.linalg.lstsq(basis, sines[middle, k], rcond=None)[0]
        coef_out = np.linalg.lstsq(basis, out[middle, k], rcond=None)[0]
        gains[k] = np.hypot(*coef_out) / np.hypot(*coef_in)
    return 20 * np.log10(np.maximum(gains, 1e-12))


@pytest.mark.parametrize("sample_rate", RATES)
def test_self_test_passes_at_every_platform_rate(sample_rate):
    result = anchor_filter_self_test(sample_rate)

    assert result.passed, result.failures
    assert result.failures == []
    assert set(result.anchors) == {LP35, LP70}
    for measurement in result.anchors.values():
        assert measurement.passband_ripple_db <= 0.1
        assert measurement.numtaps % 2 == 1
        assert measurement.max_symmetry_error < 1e-12
    lp35 = result.anchors[LP35]
    assert lp35.attenuation_db[4000.0] >= 25 and lp35.attenuation_db[4500.0] >= 50


def test_self_test_skips_mask_frequencies_above_nyquist_and_checks_nyquist_itself():
    lp70 = anchor_filter_self_test(16000).anchors[LP70]

    assert lp70.not_applicable_hz == (9000.0,)
    assert lp70.attenuation_db[8000.0] >= 25


def test_self_test_reports_a_filter_that_misses_the_mask(monkeypatch):
    short = signal.firwin(31, 3750, fs=48000)
    monkeypatch.setattr(anchors, "_design_taps", lambda sample_rate, cutoff_hz: short)

    result = anchor_filter_self_test(48000)

    assert not result.passed
    assert any("LP35 at 48000 Hz" in failure and "4500" in failure for failure in result.failures)


def test_self_test_fails_where_the_7_khz_anchor_cannot_exist():
    result = anchor_filter_self_test(8000)

    assert not result.passed
    assert LP35 in result.anchors and LP70 not in result.anchors
    assert any("7000" in failure and "8000" in failure for failure in result.failures)


def test_masks_follow_bs1534_and_scale_the_3_5_khz_figures_for_7_khz():
    lp35, lp70 = ANCHOR_MASKS[LP35], ANCHOR_MASKS[LP70]

    assert (lp35.passband_edge_hz, lp35.passband_ripple_db) == (3500.0, 0.1)
    assert [(s.freq_hz, s.min_attenuation_db) for s in lp35.stopband] == [(4000.0, 25.0), (4500.0, 50.0)]
    assert (lp70.passband_edge_hz, lp70.passband_ripple_db) == (7000.0, 0.1)
    assert [(s.freq_hz, s.min_attenuation_db) for s in lp70.stopband] == [(8000.0, 25.0), (9000.0, 50.0)]


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize(("name", "edge", "f25", "f50"), MASKS)
def test_measured_sine_gains_meet_the_mask(sample_rate, name, edge, f25, f50):
    # Sines stop 20 Hz short of Nyquist, where a sine's phase decides its amplitude; Nyquist itself
    # is checked with an alternating sequence below.
    top = sample_rate / 2 - 20.0
    passband = np.concatenate([np.linspace(20.0, edge, 40), [edge - 1.0, edge]])
    transition = np.linspace(f25, min(f50, top), 12) if f25 < top else np.empty(0)
    stopband = np.linspace(f50, top, 24) if f50 < top else np.empty(0)
    freqs = np.concatenate([passband, transition, stopband])

    gains = _sine_gains_db(sample_rate, edge, freqs)
    g_pass, g_trans, g_stop = np.split(gains, [len(passband), len(passband) + len(transition)])

    assert np.max(np.abs(g_pass)) <= 0.1, f"{name} passband gains {g_pass}"
    assert g_trans.size == 0 or np.max(g_trans) <= -25, f"{name} gains from {f25} Hz: {g_trans}"
    assert g_stop.size == 0 or np.max(g_stop) <= -50, f"{name} gains from {f50} Hz: {g_stop}"


@pytest.mark.parametrize(("sample_rate", "cutoff_hz"), [(8000, 3500.0), (16000, 7000.0), (16000, 3500.0)])
def test_nyquist_is_attenuated_where_a_mask_frequency_falls_on_it(sample_rate, cutoff_hz):
    alternating = np.where(np.arange(sample_rate) % 2 == 0, 1.0, -1.0).astype(np.float32)

    anchor = lowpass_anchor(alternating, sample_rate, cutoff_hz)

    middle = anchor[sample_rate // 4 : 3 * sample_rate // 4]
    assert 20 * np.log10(np.max(np.abs(middle)) + 1e-12) <= -25


@pytest.mark.parametrize("sample_rate", [16000, 44100, 48000])
def test_white_noise_band_energies_show_the_lp35_mask(sample_rate):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(4 * sample_rate).astype(np.float32)

    anchor = lowpass_anchor(noise, sample_rate, 3500.0)

    window = signal.windows.hann(len(noise))
    freqs = np.fft.rfftfreq(len(noise), 1 / sample_rate)
    spec_in = np.abs(np.fft.rfft(noise * window)) ** 2
    spec_out = np.abs(np.fft.rfft(anchor * window)) ** 2

    def band_db(low, high):
        band = (freqs >= low) & (freqs <= high)
        return 10 * np.log10(spec_out[band].sum() / spec_in[band].sum())

    assert abs(band_db(100, 3400)) < 0.05
    assert band_db(4000, 4500) <= -25
    assert band_db(4500, sample_rate / 2) <= -50


@pytest.mark.parametrize("sample_rate", [16000, 22050, 48000])
@pytest.mark.parametrize("cutoff_hz", [3500.0, 7000.0])
def test_anchor_keeps_length_dtype_and_alignment_of_a_broadband_reference(sample_rate, cutoff_hz):
    rng = np.random.default_rng(2)
    reference = rng.standard_normal(sample_rate).astype(np.float32)

    anchor = lowpass_anchor(reference, sample_rate, cutoff_hz)

    assert anchor.shape == reference.shape
    assert anchor.dtype == np.float32
    xcorr = signal.correlate(anchor, reference, mode="full", method="fft")
    lags = signal.correlation_lags(len(anchor), len(reference), mode="full")
    assert lags[np.argmax(xcorr)] == 0


def test_a_click_stays_at_its_sample_and_rings_symmetrically():
    click = np.zeros(4801, dtype=np.float32)
    click[2400] = 1.0

    anchor = lowpass_anchor(click, 48000, 3500.0)

    assert np.argmax(np.abs(anchor)) == 2400
    np.testing.assert_allclose(anchor[2400 - 300 : 2400], anchor[2401 : 2401 + 300][::-1], atol=1e-7)


def test_stereo_is_filtered_per_channel():
    rng = np.random.default_rng(3)
    left = rng.standard_normal(24000).astype(np.float32)
    right = np.sin(2 * np.pi * 6000 * np.arange(24000) / 24000).astype(np.float32)
    stereo = np.column_stack([left, right])

    anchor = lowpass_anchor(stereo, 24000, 3500.0)

    assert anchor.shape == (24000, 2)
    np.testing.assert_allclose(anchor[:, 0], lowpass_anchor(left, 24000, 3500.0), atol=1e-6)
    np.testing.assert_allclose(anchor[:, 1], lowpass_anchor(right, 24000, 3500.0), atol=1e-6)
    middle = slice(6000, 18000)
    assert np.sqrt(np.mean(anchor[middle, 1] ** 2)) < 10 ** (-50 / 20) * np.sqrt(np.mean(right[middle] ** 2))


def _speech_like(sample_rate: int, bandwidth_hz: float, seconds: float = 2.0) -> np.ndarray:
    """Glottal-pulse train at a gliding 110-160 Hz f0, syllabic envelope, band-limited by an elliptic IIR."""
    rng = np.random.default_rng(4)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 135 + 25 * np.sin(2 * np.pi * 0.7 * t)
    pulses = np.diff(np.floor(np.cumsum(f0) / sample_rate), prepend=0.0)
    excitation = pulses + 0.02 * rng.standard_normal(len(t))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) ** 2
    sos = signal.ellip(10, 0.1, 90, bandwidth_hz, fs=sample_rate, output="sos")
    voiced = signal.sosfilt(
        signal.butter(2, [300, 2500], btype="band", fs=sample_rate, output="sos"), excitation
    )
    return (signal.sosfilt(sos, voiced + 0.05 * excitation) * envelope).astype(np.float32)


@pytest.mark.parametrize("cutoff_hz", [3500.0, 7000.0])
def test_narrow_band_reference_triggers_a_warning_naming_its_bandwidth(cutoff_hz):
    speech = _speech_like(48000, 3000.0)

    message = anchor_effectiveness_warning(speech, 48000, cutoff_hz)

    assert message is not None
    assert f"{cutoff_hz:g} Hz" in message
    measured = float(re.search(r"bandwidth is (\d+) Hz", message).group(1))
    assert 2000 <= measured < 3500
    assert measured == pytest.approx(reference_bandwidth_hz(speech, 48000), abs=1)


def test_wide_band_reference_gives_no_warning():
    rng = np.random.default_rng(5)
    stereo = rng.standard_normal((48000, 2)).astype(np.float32)

    assert anchor_effectiveness_warning(stereo, 48000, 3500.0) is None
    assert anchor_effectiveness_warning(stereo, 48000, 7000.0) is None
    assert anchor_effectiveness_warning(_speech_like(48000, 12000.0), 48000, 3500.0) is None


def test_a_faint_full_band_noise_floor_does_not_make_the_anchor_of_a_narrow_band_reference_effective():
    rng = np.random.default_rng(6)
    # Hiss 60 dB under the speech: what the anchor removes of it is far below the -20 dB threshold.
    reference = _speech_like(16000, 3000.0) + 2e-5 * rng.standard_normal(32000).astype(np.float32)

    message = anchor_effectiveness_warning(reference, 16000, 3500.0)

    assert message is not None and "3500 Hz low-pass anchor removes at most" in message
    assert anchor_removed_level_db(reference, 16000, 3500.0) < ANCHOR_MIN_REMOVED_DB - 20


def test_speech_with_little_energy_above_7_khz_overall_still_gets_an_effective_7_khz_anchor():
    """eSpeak speech has under 1 % of its energy above 7 kHz, all of it in the fricatives, where the
    anchor removes about a tenth of the sound: plainly audible (the demo's old false warning)."""
    samples, rate = synthesize("The birch canoe slid on the smooth planks.", voice="en-us")
    power_freqs, power = signal.welch(samples, fs=rate, nperseg=1024)
    assert power[power_freqs > 7000].sum() / power.sum() < 0.01

    assert anchor_effectiveness_warning(samples, rate, 7000.0) is None
    assert -14 < anchor_removed_level_db(samples, rate, 7000.0) < -5
    # the anchor of an anchor is what the check exists for
    twice = lowpass_anchor(lowpass_anchor(samples, rate, 6000.0), rate, 7000.0)
    assert anchor_removed_level_db(twice, rate, 7000.0) < -60


def test_silent_reference_warns():
    assert "silent" in anchor_effectiveness_warning(np.zeros(16000, dtype=np.float32), 16000, 3500.0)


@pytest.mark.parametrize(
    ("sample_rate", "cutoff_hz"),
    [(16000, 8000.0), (16000, 9000.0), (8000, 7000.0), (11025, 7000.0)],
)
def test_cutoff_at_or_above_nyquist_raises_naming_rate_and_cutoff(sample_rate, cutoff_hz):
    with pytest.raises(ValueError) as excinfo:
        lowpass_anchor(np.zeros(1000, dtype=np.float32), sample_rate, cutoff_hz)

    assert str(sample_rate) in str(excinfo.value)
    assert f"{cutoff_hz:g} Hz" in str(excinfo.value)


@pytest.mark.parametrize("cutoff_hz", [0.0, -3500.0, float("nan")])
def test_non_positive_cutoff_raises(cutoff_hz):
    with pytest.raises(ValueError, match="cut-off"):
        lowpass_anchor(np.zeros(1000, dtype=np.float32), 48000, cutoff_hz)


def test_three_dimensional_input_raises_naming_its_shape():
    with pytest.raises(ValueError, match=r"\(10, 2, 2\)"):
        lowpass_anchor(np.zeros((10, 2, 2), dtype=np.float32), 48000, 3500.0)


def test_a_reference_shorter_than_the_filter_keeps_its_length():
    short = np.ones((50, 2), dtype=np.float32)

    assert lowpass_anchor(short, 48000, 3500.0).shape == (50, 2)
    assert lowpass_anchor(np.zeros(0, dtype=np.float32), 48000, 3500.0).shape == (0,)
