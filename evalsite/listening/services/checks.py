"""Design checks run when a test is built: what would make its results hard to read, grouped by kind.

Each check that fails gives one warning ``{"kind", "message", "items"}`` (the affected eval item keys,
none for a test-wide one), stored on the test as ``design_warnings``; publishing such a test needs an
explicit confirmation (``build.listening_test_publish(confirm=True)``). The thresholds are module
constants, and the messages name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evalsite.audio.anchors import ANCHOR_MIN_REMOVED_DB, reference_bandwidth_hz
from evalsite.listening.models import ListeningTest, Trial

ANCHOR_NOT_EFFECTIVE = "anchor_not_effective"
REFERENCE_BAND_LIMITED = "reference_band_limited"
CONTROL_REUSES_TRAINING = "control_reuses_training"
UNBALANCED_ASSIGNMENT = "unbalanced_assignment"
KIND_ORDER = (ANCHOR_NOT_EFFECTIVE, REFERENCE_BAND_LIMITED, CONTROL_REUSES_TRAINING, UNBALANCED_ASSIGNMENT)

# A reference is band-limited when its spectrum, 60 dB below its peak (above any 16-bit noise floor,
# below the level of real high-frequency content), ends under 80 % of its Nyquist frequency: a 44.1 kHz
# file cut at 16 kHz by an MP3 encoder (73 %), 8 kHz speech resampled to 16 kHz (50 %). Wide-band
# outputs are then judged against a dull reference. eSpeak NG speech at 22.05 kHz reaches 96-100 %.
REFERENCE_BANDWIDTH_FLOOR_DB = -60.0
REFERENCE_MIN_BANDWIDTH_FRACTION = 0.8

ANCHOR_NOT_EFFECTIVE_MESSAGE = (
    "low-pass anchor hard to tell from the reference ({details}): where it removes the most it removes "
    "less than {threshold:g} dB of the sound, so listeners cannot use it as an anchor; use references "
    "with more bandwidth or leave these items out"
)
REFERENCE_BAND_LIMITED_MESSAGE = (
    "reference band-limited on {n} item(s): its content ends at {low:.0f}-{high:.0f} Hz ({floor:g} dB "
    "bandwidth), under {fraction:.0%} of its Nyquist frequency, so outputs with more bandwidth are judged "
    "against a duller reference"
)
CONTROL_REUSES_TRAINING_MESSAGE = (
    "{n} control (gold/trapping) trial(s) use a training item: listeners have heard it in training, so the "
    "control tests memory instead of attention; build with fewer training items or more items"
)
UNBALANCED_ASSIGNMENT_MESSAGE = (
    "unbalanced assignment: each listener gets {per_listener} trials over {systems} {what}, so they cannot "
    "all occur equally often per listener; pick a multiple of {systems} (e.g. {suggest}) trials per listener"
)


@dataclass
class DesignChecks:
    """The failed checks of one build, gathered item by item and grouped by kind."""

    anchors: dict[float, dict[str, float]] = field(default_factory=dict)  # cut-off -> item -> removed dB
    band_limited: dict[str, float] = field(default_factory=dict)  # item -> bandwidth in Hz
    warnings: dict[str, dict] = field(default_factory=dict)  # kind -> warning, for test-wide checks

    def anchor(self, item_key: str, cutoff_hz: float, removed_db: float | None) -> None:
        """Record an anchor that removes too little (``removed_db`` None: a silent reference)."""
        self.anchors.setdefault(cutoff_hz, {})[item_key] = -np.inf if removed_db is None else removed_db

    def reference(self, item_key: str, samples: np.ndarray, sample_rate: int) -> None:
        """Measure the item's reference and record it when it is band-limited."""
        bandwidth = reference_bandwidth_hz(samples, sample_rate, REFERENCE_BANDWIDTH_FLOOR_DB)
        if bandwidth < REFERENCE_MIN_BANDWIDTH_FRACTION * sample_rate / 2:
            self.band_limited[item_key] = bandwidth

    def add(self, kind: str, message: str, items: list[str]) -> None:
        self.warnings[kind] = {"kind": kind, "message": message, "items": items}

    def as_list(self) -> list[dict]:
        found = dict(self.warnings)
        if self.anchors:
            details = "; ".join(
                f"{cutoff:g} Hz anchor on {len(by_item)} item(s), removing {_db_range(by_item.values())}"
                for cutoff, by_item in sorted(self.anchors.items())
            )
            items = sorted({key for by_item in self.anchors.values() for key in by_item})
            message = ANCHOR_NOT_EFFECTIVE_MESSAGE.format(details=details, threshold=ANCHOR_MIN_REMOVED_DB)
            found[ANCHOR_NOT_EFFECTIVE] = {"kind": ANCHOR_NOT_EFFECTIVE, "message": message, "items": items}
        if self.band_limited:
            values = self.band_limited.values()
            message = REFERENCE_BAND_LIMITED_MESSAGE.format(
                n=len(self.band_limited),
                low=min(values),
                high=max(values),
                floor=REFERENCE_BANDWIDTH_FLOOR_DB,
                fraction=REFERENCE_MIN_BANDWIDTH_FRACTION,
            )
            found[REFERENCE_BAND_LIMITED] = {
                "kind": REFERENCE_BAND_LIMITED,
                "message": message,
                "items": sorted(self.band_limited),
            }
        return [found[kind] for kind in KIND_ORDER if kind in found]


def _db_range(values) -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "nothing (silent reference)"
    low, high = min(finite), max(finite)
    return f"{high:.0f} dB" if round(low) == round(high) else f"{low:.0f} to {high:.0f} dB"


def check_controls(test: ListeningTest, checks: DesignChecks) -> None:
    """Control trials must not replay an item the listener met in training."""
    training = set(test.trials.filter(is_training=True).values_list("item_id", flat=True))
    reused = (
        test.trials.exclude(control=Trial.Control.NONE)
        .filter(item_id__in=training)
        .values_list("item__key", flat=True)
    )
    if reused:
        keys = sorted(set(reused))
        checks.add(CONTROL_REUSES_TRAINING, CONTROL_REUSES_TRAINING_MESSAGE.format(n=len(reused)), keys)


def check_assignment(test: ListeningTest, systems: dict[int, tuple[int, ...]], checks: DesignChecks) -> None:
    """Each listener should hear each system equally often: possible only when the trials per listener
    are a multiple of the number of distinct system sets a trial can hold (one per system for MOS,
    SMOS and CMOS, one per pair for AB; MUSHRA holds them all at once, so it is always balanced)."""
    kinds = set(systems.values())
    per_listener = test.trials_per_participant
    if per_listener is None or per_listener >= len(systems) or len(kinds) < 2:
        return
    if per_listener % len(kinds):
        what = "system pairs" if test.kind == ListeningTest.Kind.AB else "systems"
        suggest = max(len(kinds), round(per_listener / len(kinds)) * len(kinds))
        message = UNBALANCED_ASSIGNMENT_MESSAGE.format(
            per_listener=per_listener, systems=len(kinds), what=what, suggest=suggest
        )
        checks.add(UNBALANCED_ASSIGNMENT, message, [])
