"""Detectors report events, not frames, and meet their calibration on planted artifacts.

The planted-artifact generator is ``benchmarks/detector_calibration.py`` (the full run and its
figures are in benchmarks/README.md); here a small seeded set keeps the test fast.
"""

import numpy as np
import pytest

from evalsite.demo.speech import synthesize
from metrics.detectors import DETECTORS, DetectorEvent, detect_all, detect_tonal_buzz, merge_events


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
