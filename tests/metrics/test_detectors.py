"""Artifact detectors on synthetic signals with artifacts planted at known times.

Two clean signals at 22.05 kHz: eSpeak NG speech (offline, deterministic) and a harmonic
vowel-like signal (gliding f0 with vibrato, formant-shaped harmonics, breath noise, 3 Hz
amplitude modulation). Each artifact is planted in a copy; the clean signal is the reference.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, resample_poly, sosfilt, sosfiltfilt

from evalsite.demo.speech import synthesize
from metrics.detectors import (
    CLICKS,
    DC_OFFSET,
    DETECTORS,
    TONAL_BUZZ,
    ClickConfig,
    DcOffsetConfig,
    DetectorEvent,
    detect_all,
    detect_clicks,
    detect_clipping,
    detect_dc_offset,
    detect_hf_loss,
    detect_nan_or_silence,
    detect_spectral_discontinuities,
    detect_tonal_buzz,
    event_rate,
    proportion_interval,
    region_agreement,
)

SR = 22050
SIGNALS = ("speech", "vowel")


def _vowel(sr: int = SR, seconds: float = 3.0, f0: float = 140.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    freq = f0 * (1 + 0.04 * np.sin(2 * np.pi * 2.5 * t) + 0.05 * t)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    x = np.zeros_like(t)
    for k in range(1, int(0.45 * sr / f0)):
        fk = k * freq
        formants = sum(
            g * np.exp(-(((fk - fc) / bw) ** 2))
            for g, fc, bw in ((4, 700, 150), (3, 1200, 200), (2, 2600, 300))
        )
        x += np.where(fk < 0.45 * sr, k**-1.5 * (1 + formants), 0.0) * np.sin(k * phase)
    breath = sosfilt(
        butter(2, 2000, "high", fs=sr, output="sos"), np.random.default_rng(7).standard_normal(t.size)
    )
    x = x / np.sqrt(np.mean(x**2)) + 10 ** (-30 / 20) * breath / np.sqrt(np.mean(breath**2))
    x *= 0.2 + 0.4 * (
        1 - np.cos(2 * np.pi * 3 * t)
    )  # syllable-rate envelope, loudest at 0.5, 0.83, 1.17, 1.5 s ...
    return 0.5 * x / np.max(np.abs(x))


@pytest.fixture(scope="module")
def clean() -> dict[str, np.ndarray]:
    speech, rate = synthesize("The birch canoe slid on the smooth planks.", voice="en-us")
    assert rate == SR
    return {"speech": speech.astype(np.float64), "vowel": _vowel()}


def _at(t: float) -> int:
    return int(round(t * SR))


# --- planting ------------------------------------------------------------------------------------
# Each returns (output, planted regions as (start_s, end_s)); points have start == end.


def plant_clicks(name, x):
    # At 0.5 s the vowel is at its loudest, and its pitch pulses leave residual peaks a 0.3 click
    # does not clear by ClickConfig.isolation_k (the documented limit in loud voiced sound).
    y, amp = x.copy(), {"speech": 0.3, "vowel": 0.5}[name]
    for sign, t in ((1, 0.5), (-1, 1.7)):
        y[_at(t)] += sign * amp
    return y, [(0.5, 0.5), (1.7, 1.7)]


def plant_clipping(name, x):
    t0 = {"speech": 1.0, "vowel": 1.1}[name]
    y = x.copy()
    y[_at(t0) : _at(t0 + 0.2)] *= 4
    return np.clip(y, -1.0, 1.0), [(t0, t0 + 0.2)]


def plant_dc(name, x):
    y = x.copy()
    y[_at(1.0) : _at(1.5)] += 0.1
    return y, [(1.0, 1.5)]


def plant_discontinuity(name, x):
    """A 30 ms burst of spectral change: the segment high-passed at 3 kHz and boosted."""
    t0 = {"speech": 1.0, "vowel": 1.5}[name]
    a, b = _at(t0), _at(t0 + 0.03)
    y = x.copy()
    y[a:b] = 3 * sosfilt(butter(4, 3000, "high", fs=SR, output="sos"), x[a:b])
    return y, [(t0, t0 + 0.03)]


def plant_hf_loss(name, x):
    low = sosfiltfilt(butter(8, 2000, fs=SR, output="sos"), x)
    y = x.copy()
    y[_at(1.0) : _at(2.0)] = low[_at(1.0) : _at(2.0)]
    return y, [(1.0, 2.0)]


def plant_buzz(name, x):
    # A sine of peak −25 dBFS. In the vowel, 1 kHz sits among strong formant harmonics that are as
    # prominent in the reference, so its buzz goes at 3 kHz.
    f = {"speech": 1000.0, "vowel": 3000.0}[name]
    t = np.arange(x.size) / SR
    return x + np.where((t >= 0.8) & (t < 1.8), 10 ** (-25 / 20) * np.sin(2 * np.pi * f * t), 0.0), [
        (0.8, 1.8)
    ]


def plant_nan(name, x):
    y = x.copy()
    y[_at(0.8) : _at(0.8) + 5] = np.nan
    return y, [(0.8, 0.8 + 5 / SR)]


def plant_silence(name, x):
    y = x.copy()
    y[_at(1.2) : _at(1.6)] = 0.0
    return y, [(1.2, 1.6)]


PLANTS = {
    "clicks": plant_clicks,
    "clipping": plant_clipping,
    "dc_offset": plant_dc,
    "spectral_discontinuity": plant_discontinuity,
    "hf_loss": plant_hf_loss,
    "tonal_buzz": plant_buzz,
    "nan": plant_nan,
    "silence": plant_silence,
}
# Detectors that may legitimately also respond to an artifact: a DC step, a gain step at the edge of
# a clipped stretch, a zeroed NaN sample or an abrupt cut into silence is also a click and a
# spectral discontinuity; silence is also total high-frequency loss.
ALSO_ALLOWED = {
    "clicks": {"spectral_discontinuity"},
    "clipping": {"clicks", "spectral_discontinuity"},
    "dc_offset": {"clicks", "spectral_discontinuity"},
    "spectral_discontinuity": {"clicks"},
    "hf_loss": {"clicks", "spectral_discontinuity"},
    "tonal_buzz": set(),
    "nan": {"nan_or_silence", "clicks", "spectral_discontinuity"},
    "silence": {"nan_or_silence", "clicks", "spectral_discontinuity", "hf_loss"},
}


def _containing(events, detector, t, tol):
    """Events of ``detector`` whose time range, widened by ``tol``, contains ``t``."""
    return [e for e in events if e.detector == detector and e.start_s - tol <= t <= e.end_s + tol]


# --- clean signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNALS)
def test_clean_signals_give_no_events_alone_or_against_themselves(clean, name):
    x = clean[name]
    assert detect_all(x, SR) == []
    assert detect_all(x, SR, x) == []


@pytest.mark.parametrize("name", SIGNALS)
def test_clean_output_with_noise_floor_delay_and_gain_gives_no_events_against_its_reference(clean, name):
    x = clean[name]
    rng = np.random.default_rng(11)
    y = 0.8 * np.concatenate([np.zeros(3), x[:-3]]) + 10 ** (-50 / 20) * rng.standard_normal(x.size)
    assert detect_all(y[:-4], SR, x) == []  # lengths differ by a few samples: truncated to the shorter


def test_peak_normalised_speech_is_not_clipping(clean):
    x = clean["speech"] / np.max(np.abs(clean["speech"]))
    assert detect_clipping(x, SR) == []


# --- each detector finds its planted artifact ----------------------------------------------------


@pytest.mark.parametrize("use_reference", [True, False], ids=["reference", "no-reference"])
@pytest.mark.parametrize("name", SIGNALS)
def test_clicks_are_found_at_the_planted_samples(clean, name, use_reference):
    y, planted = plant_clicks(name, clean[name])
    events = detect_clicks(y, SR, clean[name] if use_reference else None)
    assert len(events) == 2
    for t, _ in planted:
        (ev,) = _containing(events, "clicks", t, 0.002)
        assert ev.strength > 1 and ev.end_s - ev.start_s < 0.005
        assert abs(ev.detail["peak_s"] - t) < 1e-3


def test_a_click_that_the_reference_has_too_is_not_reported(clean):
    y, _ = plant_clicks("speech", clean["speech"])
    assert detect_clicks(y, SR, y) == []
    assert len(detect_clicks(y, SR)) == 2


@pytest.mark.parametrize("name", SIGNALS)
def test_clipping_is_found_inside_the_scaled_region(clean, name):
    y, [(t0, t1)] = plant_clipping(name, clean[name])
    events = detect_clipping(y, SR, clean[name])
    assert events and all(e.detector == "clipping" and e.strength > 1 for e in events)
    assert abs(events[0].start_s - t0) < 0.01
    assert all(t0 - 0.001 <= e.start_s and e.end_s <= t1 + 0.001 for e in events)
    assert all(e.detail["level"] in (1.0, -1.0) and e.detail["longest_run"] >= 3 for e in events)


def test_a_flat_top_below_full_scale_is_clipping(clean):
    y = np.clip(clean["speech"], -0.3, 0.3)
    events = detect_clipping(y, SR)
    assert events and all(e.strength >= 1 for e in events) and max(e.strength for e in events) > 1
    assert {round(e.detail["level"], 6) for e in events} <= {0.3, -0.3}


@pytest.mark.parametrize("use_reference", [True, False], ids=["reference", "no-reference"])
@pytest.mark.parametrize("name", SIGNALS)
def test_dc_offset_region_matches_the_planted_offset(clean, name, use_reference):
    y, [(t0, t1)] = plant_dc(name, clean[name])
    (ev,) = detect_dc_offset(y, SR, clean[name] if use_reference else None)
    assert abs(ev.start_s - t0) < 0.02 and abs(ev.end_s - t1) < 0.02
    assert ev.strength == pytest.approx(ev.detail["max_abs_mean"] / 0.03) and ev.strength > 3
    assert ev.detail["region_mean"] == pytest.approx(0.1, abs=0.015)
    assert ev.detail["clip_mean"] == pytest.approx(float(np.mean(y)))


def test_a_dc_offset_the_reference_has_too_is_not_reported(clean):
    y, _ = plant_dc("vowel", clean["vowel"])
    assert detect_dc_offset(y, SR, y) == []


@pytest.mark.parametrize("name", SIGNALS)
def test_a_30ms_burst_of_spectral_change_is_a_discontinuity(clean, name):
    y, [(t0, t1)] = plant_discontinuity(name, clean[name])
    events = detect_spectral_discontinuities(y, SR, clean[name])
    assert events and all(t0 - 0.02 <= e.end_s and e.start_s <= t1 + 0.02 for e in events)
    assert max(e.strength for e in events) > 1
    assert all(e.detail["mode"] == "reference" for e in events)


def test_without_a_reference_a_discontinuity_in_a_steady_vowel_is_found(clean):
    y, [(t0, t1)] = plant_discontinuity("vowel", clean["vowel"])
    events = detect_spectral_discontinuities(y, SR)
    assert events and all(t0 - 0.02 <= e.end_s and e.start_s <= t1 + 0.02 for e in events)
    assert max(e.strength for e in events) > 1 and events[0].detail["mode"] == "self"


@pytest.mark.parametrize("name", SIGNALS)
def test_high_frequency_loss_is_found_where_the_output_was_low_passed(clean, name):
    y, [(t0, t1)] = plant_hf_loss(name, clean[name])
    events = detect_hf_loss(y, SR, clean[name])
    assert events and all(e.strength > 1 for e in events)
    assert all(t0 - 0.03 <= e.start_s and e.end_s <= t1 + 0.03 for e in events)
    assert events[0].start_s - t0 < 0.05 and t1 - events[-1].end_s < 0.1
    assert all(e.detail["median_loss_db"] > 20 and e.detail["cutoff_hz"] == SR / 4 for e in events)
    assert detect_hf_loss(y, SR) == []  # nothing to compare with


@pytest.mark.parametrize("use_reference", [True, False], ids=["reference", "no-reference"])
@pytest.mark.parametrize("name", SIGNALS)
def test_a_steady_tone_is_tonal_buzz_at_its_frequency_and_time(clean, name, use_reference):
    y, [(t0, t1)] = plant_buzz(name, clean[name])
    (ev,) = detect_tonal_buzz(y, SR, clean[name] if use_reference else None)
    assert abs(ev.start_s - t0) < 0.02 and abs(ev.end_s - t1) < 0.02
    assert ev.detail["frequency_hz"] == pytest.approx({"speech": 1000, "vowel": 3000}[name], abs=15)
    assert ev.strength > 1


@pytest.mark.parametrize("name", SIGNALS)
def test_nan_samples_are_reported_and_do_not_break_the_other_detectors(clean, name):
    y, [(t0, t1)] = plant_nan(name, clean[name])
    y[_at(2.0)] = np.inf
    events = detect_all(y, SR, clean[name])
    non_finite = [e for e in events if e.detector == "nan_or_silence"]
    assert [(e.detail["kind"], e.detail["n_nan"], e.detail["n_inf"], e.strength) for e in non_finite] == [
        ("non_finite", 5, 0, 5.0),
        ("non_finite", 0, 1, 1.0),
    ]
    assert non_finite[0].start_s == pytest.approx(t0, abs=1e-4) and non_finite[0].end_s == pytest.approx(
        t1, abs=1e-4
    )
    assert all(min(abs(e.start_s - t0), abs(e.start_s - 2.0)) < 0.03 for e in events)
    assert all(np.isfinite(e.strength) for e in events)


@pytest.mark.parametrize("name", SIGNALS)
def test_a_zeroed_region_is_silence_only_where_the_reference_is_not_silent(clean, name):
    y, [(t0, t1)] = plant_silence(name, clean[name])
    (ev,) = detect_nan_or_silence(y, SR, clean[name])
    assert ev.detail["kind"] == "silence" and ev.strength > 1
    assert abs(ev.start_s - t0) < 0.02 and abs(ev.end_s - t1) < 0.02
    assert ev.detail["rms_dbfs"] == -200.0 and ev.detail["reference_rms_dbfs"] > -50
    assert detect_nan_or_silence(y, SR) == []  # without a reference only a silent clip counts


def test_a_silent_clip_is_silence_without_a_reference():
    (ev,) = detect_nan_or_silence(np.zeros(SR), SR)
    assert (ev.detail["kind"], ev.start_s, ev.end_s, ev.strength) == ("silence", 0.0, 1.0, 5.0)


# --- cross-talk: each artifact triggers only related detectors, only near it ---------------------


@pytest.mark.parametrize("use_reference", [True, False], ids=["reference", "no-reference"])
@pytest.mark.parametrize("artifact", list(PLANTS))
@pytest.mark.parametrize("name", SIGNALS)
def test_detect_all_reports_only_related_detectors_near_the_planted_artifact(
    clean, name, artifact, use_reference
):
    y, planted = PLANTS[artifact](name, clean[name])
    events = detect_all(y, SR, clean[name] if use_reference else None)
    own = {"nan": "nan_or_silence", "silence": "nan_or_silence"}.get(artifact, artifact)
    assert {e.detector for e in events} <= {own} | ALSO_ALLOWED[artifact]
    for e in events:
        assert any(a - 0.05 <= e.end_s and e.start_s <= b + 0.05 for a, b in planted), e
    assert events == sorted(events, key=lambda e: (e.start_s, e.detector))


def test_levinson_recursion_matches_scipy_toeplitz_solver():
    from scipy.linalg import solve_toeplitz

    from metrics.detectors.clicks import _levinson

    frames = np.random.default_rng(3).standard_normal((4, 500))
    r = np.stack([np.correlate(f, f, "full")[499 : 499 + 17] for f in frames])
    a = _levinson(r)
    for i in range(4):
        np.testing.assert_allclose(a[i], solve_toeplitz(r[i, :16], -r[i, 1:]), rtol=0, atol=1e-12)


def test_the_click_predictor_recovers_the_innovation_of_an_autoregressive_process():
    from scipy.signal import lfilter

    from metrics.detectors.clicks import _lpc_residual

    w = 0.01 * np.random.default_rng(5).standard_normal(SR)
    x = lfilter([1.0], [1.0, -1.6, 0.9], w)  # resonance near 1.2 kHz
    e = _lpc_residual(x, SR, 16)
    assert np.isnan(e[:16]).all()
    assert np.corrcoef(e[1000:], w[1000:])[0, 1] > 0.95  # ~0.97: one short Hann-windowed fit per 25 ms
    assert np.std(e[1000:]) == pytest.approx(np.std(w[1000:]), rel=0.02)


# --- thresholds: one frozen config per detector ---------------------------------------------------


def test_a_detector_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLICKS.mad_k = 1.0  # type: ignore[misc]


def test_a_threshold_given_as_keyword_is_the_same_as_a_config_holding_it(clean):
    y, _ = plant_clicks("speech", clean["speech"])
    by_config = detect_clicks(y, SR, config=ClickConfig(mad_k=30.0, isolation_k=5.0))
    assert by_config == detect_clicks(y, SR, mad_k=30.0, isolation_k=5.0)
    assert detect_clicks(y, SR, config=dataclasses.replace(CLICKS, mad_k=1e6)) == []
    assert detect_clicks(y, SR, config=CLICKS) == detect_clicks(y, SR)


def test_a_config_field_that_is_no_keyword_argument_changes_the_result(clean):
    y, _ = plant_dc("vowel", clean["vowel"])
    (default,) = detect_dc_offset(y, SR)
    (coarse,) = detect_dc_offset(y, SR, config=DcOffsetConfig(hop_s=0.05))
    assert DC_OFFSET.hop_s == 0.01 and coarse != default
    assert abs(coarse.start_s - 1.0) < 0.05 and abs(coarse.end_s - 1.5) < 0.05


def test_the_default_configs_keep_the_documented_thresholds():
    assert (CLICKS.mad_k, CLICKS.isolation_k, CLICKS.lpc_order) == (20.0, 3.5, 16)
    assert (TONAL_BUZZ.prominence_db, TONAL_BUZZ.min_duration_s) == (10.0, 0.3)


# --- input handling ------------------------------------------------------------------------------


def test_stereo_input_raises_naming_the_shape():
    with pytest.raises(ValueError, match=r"shape \(2, 1000\)"):
        detect_all(np.zeros((2, 1000)), SR)
    for fn in DETECTORS.values():
        with pytest.raises(ValueError, match=r"shape \(2, 1000\)"):
            fn(np.zeros((2, 1000)), SR)
    with pytest.raises(ValueError, match=r"reference .*shape \(2, 1000\)"):
        detect_all(np.zeros(1000), SR, np.zeros((2, 1000)))


def test_empty_input_raises_naming_the_length():
    for bad in (np.zeros(0), np.zeros((1, 0))):
        with pytest.raises(ValueError, match="length 0"):
            detect_all(bad, SR)


def test_reference_much_longer_than_the_output_raises_naming_both_lengths():
    with pytest.raises(ValueError, match="1000.*3000"):
        detect_all(np.zeros(1000), SR, np.zeros(3000))


def test_hf_cutoff_at_or_above_nyquist_is_rejected(clean):
    with pytest.raises(ValueError, match="cutoff_hz"):
        detect_hf_loss(clean["speech"], SR, clean["speech"], cutoff_hz=SR / 2)


def test_integer_pcm_and_unknown_detector_names_are_rejected():
    with pytest.raises(ValueError, match="int16"):
        detect_all(np.zeros(1000, dtype=np.int16), SR)
    with pytest.raises(ValueError, match="'nope'.*clicks"):
        detect_all(np.zeros(1000), SR, detectors=["clicks", "nope"])


def test_a_1_by_t_array_or_tensor_gives_the_same_events_as_a_1d_array(clean):
    torch = pytest.importorskip("torch")
    y, _ = plant_clicks("speech", clean["speech"])
    expected = detect_all(y, SR)
    assert detect_all(y[None], SR) == expected
    assert detect_all(torch.from_numpy(y)[None], SR) == expected


@pytest.mark.parametrize("n", [1, 7, 40, 500, 3000])
def test_very_short_clips_do_not_crash(n):
    x = 0.1 * np.random.default_rng(n).standard_normal(n)
    assert detect_all(x, SR) == [] and detect_all(x, SR, x) == []


def test_a_selection_of_detectors_runs_only_those(clean):
    y, _ = plant_dc("speech", clean["speech"])
    assert {e.detector for e in detect_all(y, SR, detectors=["dc_offset"])} == {"dc_offset"}
    assert detect_all(y, SR, detectors=[]) == []


def test_detectors_work_at_24khz(clean):
    x = resample_poly(clean["speech"], 160, 147)
    y = x.copy()
    y[12000] += 0.3
    y[24000:36000] += 0.1
    events = detect_all(y, 24000, x)
    assert _containing(events, "clicks", 0.5, 0.002)
    (dc,) = [e for e in events if e.detector == "dc_offset"]
    assert abs(dc.start_s - 1.0) < 0.02 and abs(dc.end_s - 1.5) < 0.02


# --- events, rates and agreement with listeners ---------------------------------------------------


def test_events_are_frozen_and_json_serialisable(clean):
    y, _ = plant_nan("speech", clean["speech"])
    events = detect_all(y, SR, clean["speech"])
    assert events and {e.detector for e in events} <= set(DETECTORS)
    json.dumps([e.to_dict() for e in events])
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].strength = 0.0


def test_event_rate_is_events_per_minute():
    events = [DetectorEvent("clicks", t, t + 0.001, 2.0) for t in (1.0, 2.0, 3.0)]
    assert event_rate(events, 30.0) == 6.0
    assert event_rate([], 10.0) == 0.0
    with pytest.raises(ValueError, match="duration_s"):
        event_rate(events, 0.0)


def test_region_agreement_matches_hand_counts():
    detected = [(0.0, 0.1), (1.0, 1.2), (3.0, 3.05), (5.5, 5.6)]
    flagged = [(1.1, 1.5), (3.12, 3.3), (8.0, 9.0)]
    # Widened by 0.1 s: (1.0, 1.2) meets (1.1, 1.5); (3.0, 3.05) meets (3.02, 3.4); the rest meet nothing.
    assert region_agreement(detected, flagged, tolerance_s=0.1) == {
        "precision": 2 / 4,
        "recall": 2 / 3,
        "n_detected": 4,
        "n_flagged": 3,
        "n_detected_matched": 2,
        "n_flagged_matched": 2,
        "precision_ci": proportion_interval(2, 4),
        "recall_ci": proportion_interval(2, 3),
        "confidence": 0.95,
        "tolerance_s": 0.1,
    }
    strict = region_agreement(detected, flagged, tolerance_s=0.0)
    assert (strict["precision"], strict["recall"]) == (1 / 4, 1 / 3)


def test_region_agreement_counts_two_events_in_one_region_once_for_recall():
    events = [DetectorEvent("clicks", 1.0, 1.2, 2.0), DetectorEvent("clicks", 1.3, 1.4, 3.0)]
    r = region_agreement(events, [(1.1, 1.5)], tolerance_s=0.0)
    assert (r["precision"], r["recall"], r["n_detected_matched"], r["n_flagged_matched"]) == (1.0, 1.0, 2, 1)
    touching = region_agreement([(2.0, 2.1)], [(2.2, 2.5)], tolerance_s=0.1)
    assert touching["precision"] == 1.0  # touching after widening counts


def test_region_agreement_with_nothing_to_divide_by_is_none_and_bad_regions_raise():
    assert region_agreement([], [(1.0, 2.0)]) == {
        "precision": None,
        "recall": 0.0,
        "n_detected": 0,
        "n_flagged": 1,
        "n_detected_matched": 0,
        "n_flagged_matched": 0,
        "precision_ci": None,
        "recall_ci": proportion_interval(0, 1),
        "confidence": 0.95,
        "tolerance_s": 0.1,
    }
    assert region_agreement([(1.0, 2.0)], [])["recall"] is None
    with pytest.raises(ValueError, match="ends before it starts"):
        region_agreement([(2.0, 1.0)], [])
    with pytest.raises(ValueError, match="tolerance_s"):
        region_agreement([], [], tolerance_s=-0.1)


def test_the_detectors_import_without_the_model_stack():
    # The web tier's dashboards import them; torch there costs every web worker ~500 MiB.
    check = (
        "import sys, metrics, metrics.detectors; "
        "loaded = sorted({'torch', 'torchaudio', 'models'} & set(sys.modules)); "
        "assert not loaded, loaded"
    )
    subprocess.run(
        [sys.executable, "-c", check], cwd=Path(__file__).resolve().parents[2], check=True, timeout=120
    )
