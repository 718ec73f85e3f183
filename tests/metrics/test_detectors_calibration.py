"""Detectors report events, not frames, and meet their calibration on planted artifacts.

The planted-artifact generator is ``benchmarks/detector_calibration.py`` (the full run and its
figures are in benchmarks/README.md); here a small seeded set keeps the test fast.
"""

import numpy as np
import pytest

from benchmarks.detector_calibration import KIND_DETECTOR, Clip, Score, espeak_clips, evaluate, plant
from evalsite.demo.speech import synthesize
from metrics.detectors import (
    DETECTORS,
    DetectorEvent,
    detect_all,
    detect_tonal_buzz,
    merge_events,
    proportion_interval,
    region_agreement,
)


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    x, sr = synthesize("The birch canoe slid on the smooth planks.", voice="en-us")
    return x.astype(np.float64), sr


def test_merge_events_joins_overlapping_and_near_events_and_keeps_the_strongest():
    evs = [
        DetectorEvent("x", 0.5, 0.6, 1.0, {"f": 1}),
        DetectorEvent("x", 0.0, 0.1, 1.0, {"f": 2}),
        DetectorEvent("x", 0.05, 0.2, 4.0, {"f": 3}),  # overlaps the second
        DetectorEvent("x", 0.24, 0.3, 2.0, {"f": 4}),  # 40 ms after it: joined at min_gap_s 0.05
    ]
    out = merge_events(evs, min_gap_s=0.05)
    assert [(e.start_s, e.end_s, e.strength, dict(e.detail)) for e in out] == [
        (0.0, 0.3, 4.0, {"f": 3, "n_merged": 3}),
        (0.5, 0.6, 1.0, {"f": 1, "n_merged": 1}),
    ]
    assert [e.start_s for e in merge_events(evs, min_gap_s=0.03)] == [0.0, 0.24, 0.5]
    assert [e.start_s for e in merge_events(evs, min_gap_s=0.05, min_duration_s=0.2)] == [0.0]


def test_merge_events_rejects_bad_arguments_naming_them():
    with pytest.raises(ValueError, match="min_gap_s"):
        merge_events([], min_gap_s=-1.0)
    with pytest.raises(ValueError, match="one detector"):
        merge_events([DetectorEvent("a", 0, 0, 1), DetectorEvent("b", 0, 0, 1)], min_gap_s=0.0)


def test_a_harmonic_buzz_is_one_event_not_one_per_partial(speech):
    # A 120 Hz sawtooth hum under the whole clip: 39 partials. Before events were merged this gave
    # 62 tonal_buzz events (one per partial and interruption); it is one artifact.
    x, sr = speech
    t = np.arange(x.size) / sr
    hum = 0.02 * sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 40))
    for reference in (x, None):
        events = detect_tonal_buzz(x + hum, sr, reference)
        assert len(events) == 1
        assert events[0].detail["n_merged"] > 10
        assert events[0].duration_s > 0.8 * x.size / sr


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_no_detector_reports_overlapping_events(name, speech):
    # Every kind of damage at once, so each detector has candidates to merge.
    x, sr = speech
    rng = np.random.default_rng(3)
    y = x + 0.02 * rng.standard_normal(x.size) * (np.arange(x.size) % 4000 < 400)
    y[5000:5002] += 0.4
    y[20000:26000] = np.clip(3 * y[20000:26000], -1, 1)
    y[30000:36000] = 0.0
    events = [e for e in detect_all(y, sr, x, detectors=[name])]
    for a, b in zip(events, events[1:]):
        if name != "nan_or_silence" or a.detail["kind"] == b.detail["kind"]:
            assert b.start_s > a.end_s, (a, b)


# --- calibration on a small planted set ---------------------------------------------------------
# The full run (60 eSpeak NG clips, the real recordings) is benchmarks/detector_calibration.py and
# its figures are in benchmarks/README.md; the first 24 of those clips here keep the test under
# ~10 s. This guards the calibration; the figures on clips the thresholds were not chosen on are in
# the README too.


@pytest.fixture(scope="module")
def calibration():
    return evaluate(espeak_clips(24), seed=0)


@pytest.mark.parametrize("kind", sorted(KIND_DETECTOR))
def test_each_detector_finds_its_planted_artifacts_with_precision_and_recall(kind, calibration):
    s = calibration[KIND_DETECTOR[kind]]
    assert s.n_planted >= 10, s
    assert s.precision >= 0.9, s
    assert s.recall >= 0.8, s


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_each_detector_stays_quiet_on_clean_speech(name, calibration):
    s = calibration[name]
    assert s.clean_minutes > 0.4
    assert s.clean_per_minute < 1.0, s
    assert s.changed_per_minute < 1.0, s


def test_the_planter_puts_each_artifact_where_it_says(speech):
    x, sr = speech
    clip = Clip("t", x, sr)
    for kind in KIND_DETECTOR:
        out, planted = plant(kind, clip, seed=5)
        again, _ = plant(kind, clip, seed=5)
        np.testing.assert_array_equal(out, again)
        assert planted and all(p.kind == kind for p in planted)
        changed = np.flatnonzero(out != x) / sr
        spans = [(p.start_s, p.end_s) for p in planted]
        # Nothing changes outside the planted spans (band_limit filters the whole clip, then cuts).
        assert all(any(s - 1 / sr <= t <= e + 1 / sr for s, e in spans) for t in changed), kind
    with pytest.raises(ValueError, match="unknown artifact kind 'hum'"):
        plant("hum", clip, seed=0)


def test_scores_count_precision_and_recall_from_matches():
    s = Score(
        "clicks",
        n_events=10,
        n_true=9,
        n_planted=20,
        n_found=16,
        clean_events=1,
        clean_minutes=2.0,
        changed_events=0,
    )
    assert (s.precision, s.recall, s.clean_per_minute, s.changed_per_minute) == (0.9, 0.8, 0.5, 0.0)
    empty = Score("clicks", 0, 0, 0, 0, 0, 1.0, 0)
    assert empty.precision is None and empty.recall is None


# --- agreement with listener regions: n and a Wilson interval ------------------------------------


def test_the_wilson_interval_matches_the_formula_worked_by_hand():
    # 8 of 10, 95 %: z = 1.959964 (the normal 97.5 % point), p = 0.8, n = 10;
    # centre (p + z²/2n) / (1 + z²/n) = 0.992073 / 1.384146 = 0.716740;
    # half width z / (1 + z²/n) · √(p(1−p)/n + z²/4n²) = 1.416010 · √0.025603647 = 0.226578.
    low, high = proportion_interval(8, 10)
    assert low == pytest.approx(0.716740 - 0.226578, abs=2e-6)
    assert high == pytest.approx(0.716740 + 0.226578, abs=2e-6)


@pytest.mark.parametrize(
    ("k", "n", "published"),
    [
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
    ],
)
def test_the_wilson_interval_reproduces_newcombe_1998_table_1(k, n, published):
    # Newcombe, "Two-sided confidence intervals for the single proportion", Stat. Med. 17:857 (1998),
    # Table I, method 3 (score interval without continuity correction), to 4 decimals.
    assert [round(v, 4) for v in proportion_interval(k, n)] == list(published)


def test_region_agreement_reports_n_and_an_interval_for_precision_and_recall():
    found = region_agreement([(1.0, 1.1), (5.0, 5.2), (9.0, 9.1)], [(1.15, 2.0), (9.0, 9.5)])
    assert (
        found["n_detected"],
        found["n_detected_matched"],
        found["n_flagged"],
        found["n_flagged_matched"],
    ) == (
        3,
        2,
        2,
        2,
    )
    assert found["precision_ci"] == proportion_interval(2, 3)
    assert found["recall_ci"] == proportion_interval(2, 2)
    assert found["precision_ci"][0] < 2 / 3 < found["precision_ci"][1]
    assert found["recall_ci"][1] == pytest.approx(1.0)
    wider = region_agreement([(1.0, 1.1)], [(1.0, 2.0)], confidence=0.99)["precision_ci"]
    assert wider[0] < region_agreement([(1.0, 1.1)], [(1.0, 2.0)])["precision_ci"][0]


def test_proportion_interval_rejects_impossible_counts_naming_them():
    with pytest.raises(ValueError, match="successes=5, n=3"):
        proportion_interval(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        region_agreement([], [], confidence=1.0)
    assert proportion_interval(0, 0) is None
