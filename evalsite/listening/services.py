"""Writes for listening tests: build, publish, close; join, rate, flag, complete.

Cross-object rules raise ``ApplicationError`` (400), ``NotFoundError`` (404) or ``ConflictError``
(409) with a module-level message that the tests assert on. Listener-facing errors never reveal
system labels, checkpoints or roles.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import secrets
import string
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    Condition,
    ListeningTest,
    Participant,
    Rating,
    Stimulus,
    StimulusHandle,
    Trial,
)
from evalsite.listening.selectors import (
    AB_ANSWER_VALUES,
    COMPARISON_KINDS,
    NO_PREFERENCE,
    PLAY_EVENT_TYPES,
    SCREENED_OUT_MESSAGE,
    headphone_check_pending,
    headphone_trials,
)
from evalsite.runs.models import Checkpoint, EvalItem, Generation

MUSHRA_MAX_SIGNALS = 12
MUSHRA_MAX_ITEM_S = 12.0
ANCHOR_CUTOFFS = {Condition.Role.ANCHOR_LP35: 3500.0, Condition.Role.ANCHOR_LP70: 7000.0}
CMOS_REFERENCE_LABEL = "reference recording"

NO_CHECKPOINTS = "a listening test needs at least one checkpoint."
MIXED_EVAL_SETS = (
    "the checkpoints' runs use different eval sets ({names}); pick checkpoints evaluated on one set."
)
MUSHRA_TOO_MANY = (
    "MUSHRA allows at most 12 signals per trial counting the hidden reference and the two anchors; "
    "{n} checkpoints + 3 = {total}."
)
NO_USABLE_ITEMS = "no eval item has output from every checkpoint{reference}; nothing to build a test from."
AB_NEEDS_TWO = "an AB preference test compares checkpoints in pairs; pick at least two checkpoints (got {n})."
COMPARISON_ONLY_CMOS = "a comparison checkpoint is only used by CMOS tests; this test is {kind}."
COMPARISON_IS_RATED = (
    "the comparison checkpoint {label} is also one of the rated checkpoints; rate it against another."
)
NO_PREFERENCE_ONLY_AB = "'no preference' is an AB preference option; this test is {kind}."
DUPLICATE_CHECKPOINTS = "each checkpoint may be rated once per test; listed more than once: {labels}."
TOO_MANY_SYSTEMS = (
    "a listening test rates at most {limit} checkpoints (EVALSITE_LISTENING_MAX_SYSTEMS); got {n}."
)
DUPLICATE_ITEMS = "each eval item may be listed once; listed more than once: {keys}."
TOO_MANY_ITEMS = "a listening test uses at most {limit} eval items (EVALSITE_LISTENING_MAX_ITEMS); got {n}."
TOO_MANY_TRIALS = (
    "this test would have {n} trials ({per_item} per item × {items} items); at most {limit} "
    "(EVALSITE_LISTENING_MAX_TRIALS): pick fewer items or checkpoints."
)
ANCHOR_SELF_TEST_FAILED = "the anchor filters fail the BS.1534-3 mask at {rate} Hz: {failures}"
NOT_DRAFT = "test {name!r} is {status}; only a draft can be published."
NOTHING_TO_PUBLISH = "test {name!r} has no main (non-training) trial."
NOT_PUBLISHED = "test {name!r} is {status}; only a published test can be closed."
TEST_NOT_OPEN = "This test is not open for listening."
TEST_FULL = "This test has all the votes it needs. Thank you for your interest."
PARTICIPANT_DONE = "You have already finished this test."
UNKNOWN_TRIAL = "Unknown trial."
UNKNOWN_STIMULUS = "Unknown sound for this trial."
TRIAL_ALREADY_COMPLETED = "This trial is already finished; its answers can no longer change."
SCORE_OUT_OF_RANGE = "score must be {rule}; got {score!r}."
RATE_ALL_FIRST = "Please rate every sound before continuing ({missing} still unrated)."
ANSWER_FIRST = "Please answer before continuing."
ANSWER_ON_B = "This answer belongs to the second sound (B) of the trial."
FLAG_BAD_REGION = "the marked region must lie within the sound (0 to {duration:.2f} s) with end after start; got {start!r} to {end!r}."
FLAG_BAD_CATEGORY = "category must be one of {choices}; got {category!r}."
REQUEST_ID_REQUIRED = "request_id must be a non-empty string of at most 64 characters."
PLAY_ALL_FIRST = "Please listen to every sound before continuing ({missing} not played yet)."
SCREENED_OUT = SCREENED_OUT_MESSAGE
# Quality controls. Ranges follow the P.808 toolkit's ±1 tolerance on 5-point scales; MUSHRA's follow
# BS.1534-3 post-screening (the hidden reference is rated 90 or more) and its "Bad"/"Poor" bands.
GOLD_BAD_RANGE = (1.0, 2.0)  # an obviously degraded clip: "Bad", ±1
GOLD_GOOD_RANGE = (4.0, 5.0)  # the reference recording: "Excellent", ±1
SMOS_SAME_RANGE = (4.0, 5.0)  # the same speaker: "definitely" or "probably" the same
SMOS_DIFFERENT_RANGE = (1.0, 2.0)  # an obviously different voice: "definitely" or "probably" different
MUSHRA_REFERENCE_RANGE = (90.0, 100.0)
MUSHRA_DEGRADED_RANGE = (0.0, 40.0)
MUSHRA_TRAP_VALUES = (0, 25, 50, 75, 100)
MUSHRA_TRAP_TOLERANCE = 10.0
CMOS_CLEAN_RANGE = (1.0, 3.0)  # the clean sound at least "slightly better" than its degraded copy
AB_CLEAN_RANGE = (1.0, 1.0)  # the clean sound preferred
SMOS_OTHER_VOICE_RATIO = 1.6  # pitch and formants up by ~8 semitones when no other speaker is labelled
CALIBRATION_ITEMS = 10  # items whose references and outputs set the calibration level
# A trapping sound has exactly the length (and rate, channels, level) of the output it stands in for,
# so neither its file size nor its duration nor its loudness tells it apart: the spoken request is
# fitted into the item. Preferred: the first TRAP_PREFIX_S of the real output, a pause, then the
# request (P.808 §6.3.8); where that does not fit, the request alone. Phrasings go from the full one
# to the bare answer, each read at TRAP_WPM (eSpeak's default 160 words a minute, then a brisk 220);
# only the shortest is read faster (TRAP_FAST_WPM, up to eSpeak's 450), for items of about a second.
TRAP_PREFIX_S = 1.0
TRAP_PAUSE_S = 0.3
TRAP_LEAD_S = 0.05  # silence before the request when no real output precedes it, and after it at least
TRAP_WPM = (160, 220)
TRAP_FAST_WPM = (300, 380, 450)
TRAP_TEXT = (
    "This is an attention check. Please select the answer {label}.",
    "Please select the answer {label}.",
    "Answer: {label}.",
)
MUSHRA_TRAP_TEXT = (
    "This is an attention check. Please rate this sound {value}.",
    "Please rate this sound {value}.",
    "Rate this {value}.",
)
AB_TRAP_TEXT = (
    "This is an attention check. Please answer: I prefer {label}.",
    "Please answer: I prefer {label}.",
    "I prefer {label}.",
)
TRAP_ITEM_TOO_SHORT = (
    "item {item} is {duration:.2f} s long; the shortest spoken attention check ({text!r} at "
    "{wpm} words a minute) needs {need:.2f} s. Use longer items, or no trapping trials."
)
# A control sound whose level is within this of the sound it stands in for is used as it is.
CONTROL_LEVEL_TOLERANCE_DB = 0.5
CONTROL_FADE_S = 0.02  # fade where a control sound is cut, so the cut does not click
LIMITER_KNEE = 0.5  # a level-matched control sound is soft-limited above this, towards MAX_PEAK
HEADPHONE_CHECK_FIRST = "Please complete the headphone check first."
CALIBRATE_FIRST = "Please set your volume with the calibration sound first."
CALIBRATION_NOT_ASKED = "This test has no level calibration (it comes with the headphone check)."
CALIBRATION_PLAY_FIRST = (
    "plays must be a whole number from 1 (play the calibration sound before confirming); got {plays!r}."
)
CALIBRATION_MAX_PLAYS = 10_000
UNKNOWN_PARTICIPANT = "This listening session belongs to another browser. Open your invitation link again."
CROWD_ID_IN_USE = (
    "This participant ID has already started this test in another browser. Please continue in "
    "the browser where you started; if you cannot, contact the researcher."
)
HEADPHONE_NOT_ASKED = "This test has no headphone check."
HEADPHONE_BAD_ANSWERS = "answers must be a list of {n} numbers, each 1, 2 or 3; got {answers!r}."


@dataclass
class BuildReport:
    warnings: list[str] = field(default_factory=list)


def _letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def _outputs_by_item(
    checkpoints: list[Checkpoint], params_hash: str | None
) -> dict[int, dict[int, Generation]]:
    rows = Generation.objects.filter(
        checkpoint__in=checkpoints, status=Generation.Status.DONE
    ).select_related("asset")
    if params_hash:
        rows = rows.filter(params_hash=params_hash)
    by_item: dict[int, dict[int, Generation]] = {}
    for g in rows.order_by("created_at"):
        by_item.setdefault(g.item_id, {})[g.checkpoint_id] = g  # latest wins
    return by_item


def _degraded(samples, rate: int):
    """An obviously bad version of a clip: hard-clipped at 5 % of its peak, at the clip's level
    (clipping raises the level a lot; a louder sound would give the control trial away)."""
    import numpy as np

    from evalsite.listening.calibration import active_level_dbfs

    peak = float(np.abs(samples).max()) or 1.0
    return _at_level(
        np.clip(samples, -0.05 * peak, 0.05 * peak) / 0.05, rate, active_level_dbfs(samples, rate)
    )


def _at_level(samples, rate: int, target_dbfs: float | None):
    """``samples`` scaled to an active level (``calibration.active_level_dbfs``) of ``target_dbfs``.

    Peaks that scaling would push past ``calibration.MAX_PEAK`` are soft-limited above
    ``LIMITER_KNEE`` (speech has a higher crest factor than most material), and the gain is
    found again, so the level is met while nothing clips.
    """
    import numpy as np

    from evalsite.listening.calibration import MAX_PEAK, active_level_dbfs

    out = np.asarray(samples, dtype=np.float64)
    if target_dbfs is None:
        return out.astype(np.float32)
    for _ in range(12):
        level = active_level_dbfs(out, rate)
        if level is None or abs(level - target_dbfs) < 0.02:
            break
        out = out * 10 ** ((target_dbfs - level) / 20)
        magnitude = np.abs(out)
        over = magnitude > LIMITER_KNEE
        if magnitude.max() > MAX_PEAK:
            room = MAX_PEAK - LIMITER_KNEE
            out[over] = np.sign(out[over]) * (
                LIMITER_KNEE + room * np.tanh((magnitude[over] - LIMITER_KNEE) / room)
            )
    return out.astype(np.float32)


def _fitted(samples, rate: int, like, like_rate: int):
    """``samples`` made to stand in for ``like``: its sample rate, channels, number of frames (cut with
    a short fade, or padded with silence) and active level."""
    import numpy as np

    from evalsite.audio.decoding import resample
    from evalsite.listening.calibration import active_level_dbfs

    samples = resample(samples, rate, like_rate)
    if samples.ndim == 1:
        samples = samples[:, None]
    frames, channels = like.shape
    if samples.shape[1] != channels:
        samples = np.repeat(samples.mean(axis=1, keepdims=True), channels, axis=1)
    if len(samples) > frames:
        samples = samples[:frames].copy()
        fade = min(frames, int(CONTROL_FADE_S * like_rate))
        samples[frames - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    else:
        samples = np.concatenate([samples, np.zeros((frames - len(samples), channels), dtype=np.float32)])
    return _at_level(samples, like_rate, active_level_dbfs(like, like_rate))


def _other_voice(samples, rate: int):
    """A clip read out ``SMOS_OTHER_VOICE_RATIO`` times faster at the same rate: pitch and formants
    rise together, so the voice is plainly not the same person's."""
    import numpy as np

    from evalsite.audio.decoding import resample

    return resample(np.asarray(samples, dtype=np.float32), int(round(rate * SMOS_OTHER_VOICE_RATIO)), rate)


def _trap_readings(texts: tuple[str, ...]):
    """(real output before the request in s, phrasing, words a minute), most preferred first."""
    for prefix_s in (TRAP_PREFIX_S, 0.0):
        for text in texts:
            for wpm in TRAP_WPM:
                yield prefix_s, text, wpm
    for wpm in TRAP_FAST_WPM:
        yield 0.0, texts[-1], wpm


def _trapping_samples(source, rate: int, texts: tuple[str, ...], item_key: str = ""):
    """A spoken request fitted into ``source``'s frames (P.808 §6.3.8 trapping question): the first
    ``TRAP_PREFIX_S`` of the real output and a pause where they fit, the request, then silence; same
    shape as ``source`` and at its active level. ``texts``: phrasings of the request, longest first.

    Raises ``ApplicationError(TRAP_ITEM_TOO_SHORT)`` when not even the shortest phrasing fits.
    """
    import numpy as np

    from evalsite.audio.decoding import resample
    from evalsite.audio.speech import synthesize
    from evalsite.listening.calibration import active_level_dbfs

    frames, channels = source.shape
    spoken: dict[tuple[str, int], Any] = {}
    for prefix_s, text, wpm in _trap_readings(texts):
        if (text, wpm) not in spoken:
            speech, speech_rate = synthesize(text, voice="en-us", rate_wpm=wpm)
            voiced = np.flatnonzero(np.abs(speech) > 1e-3)  # eSpeak pads the words with silence
            spoken[text, wpm] = resample(speech[voiced[0] : voiced[-1] + 1], speech_rate, rate)
        speech = spoken[text, wpm]
        head = int(prefix_s * rate)
        start = head + int((TRAP_PAUSE_S if head else TRAP_LEAD_S) * rate)
        if start + len(speech) + int(TRAP_LEAD_S * rate) <= frames:
            break
    else:
        raise ApplicationError(
            TRAP_ITEM_TOO_SHORT.format(
                item=item_key,
                duration=frames / rate,
                text=text,
                wpm=wpm,
                need=(len(speech) + 2 * int(TRAP_LEAD_S * rate)) / rate,
            )
        )
    out = np.zeros((frames, channels), dtype=np.float32)
    if head:
        out[:head] = source[:head]
        fade = int(CONTROL_FADE_S * rate)
        out[head - fade : head] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    level = active_level_dbfs(source, rate)
    # The request at the output's level first: the whole then needs (almost) no further gain, so
    # the real output before it keeps its own level.
    out[start : start + len(speech)] = _at_level(speech, rate, level)[:, None]
    return _at_level(out, rate, level)


def _expect(low: float, high: float, of: str = Stimulus.Expected.SCORE) -> dict[str, Any]:
    return {"min": float(low), "max": float(high), "of": str(of)}


class _ControlBuilder:
    """Builds the gold and trapping trials of one test: each has the shape of the test's ordinary
    trials (same number of sounds, an open reference where those have one), and what it expects
    is kept on its sounds (``Stimulus.expected``), never sent to the listener.

    Every sound of a control trial belongs to a quality-control condition (role gold or
    trapping), so nothing that counts votes per condition can count it. A sound made or picked
    for a control trial takes the place of a checkpoint's output of the same item and is fitted
    to it (sample rate, channels, length, active level): the served file has the same size and
    duration and plays as loud, so nothing but listening tells a control trial apart.
    """

    def __init__(
        self,
        test: ListeningTest,
        checkpoints: list[Checkpoint],
        outputs,
        anchors: dict[int, dict],
        comparison: Checkpoint | None,
        usable: list[EvalItem],
    ):
        self.test, self.checkpoints, self.outputs, self.anchors = test, checkpoints, outputs, anchors
        self.comparison, self.usable = comparison, usable
        self.conditions: dict[str, Condition] = {}
        self.rng = random.Random(f"{test.seed}:controls")

    def condition(self, control: str, what: str) -> Condition:
        role = Condition.Role.GOLD if control == Trial.Control.GOLD else Condition.Role.TRAPPING
        label = f"{role.label}, {what}"[:200]
        if label not in self.conditions:
            self.conditions[label] = Condition.objects.create(test=self.test, label=label, role=role)
        return self.conditions[label]

    def output(self, item: EvalItem, checkpoint: Checkpoint):
        return self.outputs[item.pk][checkpoint.pk].asset

    def store(self, samples, rate: int):
        from evalsite.audio.decoding import decoded_from_array
        from evalsite.audio.services import audio_asset_store

        asset, _ = audio_asset_store(decoded=decoded_from_array(samples, rate), original_name="sound.wav")
        return asset

    def degraded(self, asset, like=None):
        """``asset`` clipped (``_degraded``), fitted to ``like`` where that is another sound."""
        from evalsite.audio.selectors import audio_asset_samples

        samples, rate = audio_asset_samples(asset)
        bad = _degraded(samples, rate)
        if like is not None and like.pk != asset.pk:
            return self.store(_fitted(bad, rate, *audio_asset_samples(like)), like.sample_rate)
        return self.store(bad, rate)

    def fitted(self, asset, like):
        """``asset`` standing in for ``like``: itself when it already matches, else a fitted copy."""
        from evalsite.audio.selectors import audio_asset_samples
        from evalsite.listening.calibration import active_level_dbfs

        samples, rate = audio_asset_samples(asset)
        target, target_rate = audio_asset_samples(like)
        if rate == target_rate and samples.shape == target.shape:
            level, wanted = active_level_dbfs(samples, rate), active_level_dbfs(target, rate)
            if level is None or wanted is None or abs(level - wanted) <= CONTROL_LEVEL_TOLERANCE_DB:
                return asset
        return self.store(_fitted(samples, rate, target, target_rate), target_rate)

    def trap(self, asset, texts: tuple[str, ...], item: EvalItem):
        from evalsite.audio.selectors import audio_asset_samples

        samples, rate = audio_asset_samples(asset)
        return self.store(_trapping_samples(samples, rate, texts, item.key), rate)

    def trial(
        self,
        control: str,
        item: EvalItem,
        index: int,
        sounds: list[tuple[str, Any, dict | None]],
        reference=None,
    ) -> Trial:
        """One control trial; ``sounds`` are (what, asset, expected) in build order."""
        trial = Trial.objects.create(
            test=self.test, item=item, index=index, control=control, reference=reference
        )
        Stimulus.objects.bulk_create(
            [
                Stimulus(trial=trial, condition=self.condition(control, what), asset=asset, expected=expected)
                for what, asset, expected in sounds
            ]
        )
        return trial

    def clean(self, item: EvalItem, n: int):
        """A clean version of the item for comparison gold: the reference, else a checkpoint's output."""
        if item.reference is not None:
            return "clean reference", item.reference
        checkpoint = self.checkpoints[n % len(self.checkpoints)]
        return f"clean output of {checkpoint.run.name}@{checkpoint.step}", self.output(item, checkpoint)

    # --- gold ------------------------------------------------------------------------------

    def gold(self, n: int, item: EvalItem, index: int) -> Trial:
        kind, gold = self.test.kind, Trial.Control.GOLD
        # The output whose place the control sound takes (its length and level are the control's).
        slot = self.output(item, self.checkpoints[n % len(self.checkpoints)])
        if kind == ListeningTest.Kind.MOS:
            if n % 2 == 1 and item.reference is not None:
                return self.trial(
                    gold,
                    item,
                    index,
                    [("reference", self.fitted(item.reference, slot), _expect(*GOLD_GOOD_RANGE))],
                )
            return self.trial(
                gold, item, index, [("degraded output", self.degraded(slot), _expect(*GOLD_BAD_RANGE))]
            )
        if kind == ListeningTest.Kind.SMOS:
            if n % 2 == 1:
                what, asset = self.same_speaker(item, slot)
                return self.trial(
                    gold, item, index, [(what, asset, _expect(*SMOS_SAME_RANGE))], item.reference
                )
            what, asset = self.other_speaker(item, slot)
            return self.trial(
                gold, item, index, [(what, asset, _expect(*SMOS_DIFFERENT_RANGE))], item.reference
            )
        if kind == ListeningTest.Kind.MUSHRA:
            # The system slots hold a heavily degraded copy of the reference (and, with more than one
            # checkpoint, the other checkpoints' outputs); hidden reference and anchors as always.
            degraded = self.degraded(item.reference, like=self.output(item, self.checkpoints[0]))
            sounds = [
                ("hidden reference", item.reference, _expect(*MUSHRA_REFERENCE_RANGE)),
                ("degraded reference", degraded, _expect(*MUSHRA_DEGRADED_RANGE)),
            ]
            sounds += [
                (f"output of {c.run.name}@{c.step}", self.output(item, c), None) for c in self.checkpoints[1:]
            ]
            sounds += [(role.label, asset, None) for role, asset in self.anchors[item.pk].items()]
            return self.trial(gold, item, index, sounds, item.reference)
        what, clean = self.clean(item, n)
        expected = _expect(
            *(CMOS_CLEAN_RANGE if kind == ListeningTest.Kind.CMOS else AB_CLEAN_RANGE),
            of=Stimulus.Expected.PREFERENCE,
        )
        return self.trial(
            gold,
            item,
            index,
            [
                (what, self.fitted(clean, slot), expected),
                ("degraded copy", self.degraded(clean, like=slot), None),
            ],
        )

    def same_speaker(self, item: EvalItem, slot):
        """Another recording of the item's speaker (other words, same voice), else the reference itself."""
        same = [i for i in self.usable if i.pk != item.pk and item.speaker and i.speaker == item.speaker]
        if same:
            return "same speaker, other recording", self.fitted(
                same[self.rng.randrange(len(same))].reference, slot
            )
        return "reference copy", self.fitted(item.reference, slot)

    def other_speaker(self, item: EvalItem, slot):
        """A recording of a speaker labelled differently, else the reference with its voice shifted."""
        from evalsite.audio.selectors import audio_asset_samples

        others = [i for i in self.usable if item.speaker and i.speaker and i.speaker != item.speaker]
        if others:
            return "other speaker", self.fitted(others[self.rng.randrange(len(others))].reference, slot)
        samples, rate = audio_asset_samples(item.reference)
        return "shifted voice", self.store(
            _fitted(_other_voice(samples, rate), rate, *audio_asset_samples(slot)), slot.sample_rate
        )

    # --- trapping ----------------------------------------------------------------------------

    def trapping(self, n: int, item: EvalItem, index: int) -> Trial:
        from evalsite.listening.selectors import ACR_SCALE, CCR_SCALE, SMOS_SCALE

        kind, trapping = self.test.kind, Trial.Control.TRAPPING
        checkpoint = self.checkpoints[n % len(self.checkpoints)]
        source = self.output(item, checkpoint)
        what = f"instruction over {checkpoint.run.name}@{checkpoint.step}"
        if kind in (ListeningTest.Kind.MOS, ListeningTest.Kind.SMOS):
            label = self.rng.choice((ACR_SCALE if kind == ListeningTest.Kind.MOS else SMOS_SCALE)["labels"])
            asset = self.trap(source, tuple(t.format(label=label["text"]) for t in TRAP_TEXT), item)
            reference = item.reference if kind == ListeningTest.Kind.SMOS else None
            return self.trial(
                trapping, item, index, [(what, asset, _expect(label["value"], label["value"]))], reference
            )
        if kind == ListeningTest.Kind.MUSHRA:
            value = self.rng.choice(MUSHRA_TRAP_VALUES)
            asset = self.trap(source, tuple(t.format(value=value) for t in MUSHRA_TRAP_TEXT), item)
            expected = _expect(
                max(0.0, value - MUSHRA_TRAP_TOLERANCE), min(100.0, value + MUSHRA_TRAP_TOLERANCE)
            )
            sounds = [(what, asset, expected), ("hidden reference", item.reference, None)]
            sounds += [
                (f"output of {c.run.name}@{c.step}", self.output(item, c), None)
                for c in self.checkpoints
                if c.pk != checkpoint.pk
            ]
            sounds += [(role.label, asset, None) for role, asset in self.anchors[item.pk].items()]
            return self.trial(trapping, item, index, sounds, item.reference)
        if kind == ListeningTest.Kind.CMOS:
            label = self.rng.choice(CCR_SCALE["labels"])
            asset = self.trap(source, tuple(t.format(label=label["text"]) for t in TRAP_TEXT), item)
            versus = item.reference if self.comparison is None else self.output(item, self.comparison)
            expected = _expect(label["value"], label["value"], of=Stimulus.Expected.ANSWER)
            return self.trial(trapping, item, index, [(what, asset, expected), ("comparison", versus, None)])
        from evalsite.listening.selectors import AB_ANSWER_VALUES

        letter = self.rng.choice(("A", "B"))
        asset = self.trap(source, tuple(t.format(label=letter) for t in AB_TRAP_TEXT), item)
        partner = self.checkpoints[(n + 1) % len(self.checkpoints)]
        expected = _expect(AB_ANSWER_VALUES[letter], AB_ANSWER_VALUES[letter], of=Stimulus.Expected.ANSWER)
        return self.trial(
            trapping,
            item,
            index,
            [
                (what, asset, expected),
                (f"output of {partner.run.name}@{partner.step}", self.output(item, partner), None),
            ],
        )


def _control_trials(builder: _ControlBuilder, index: int, gold_items: int, trapping_items: int) -> None:
    """Build the gold and trapping trials after the ordinary ones, cycling through the usable items."""
    usable = builder.usable
    for n in range(gold_items):
        builder.gold(n, usable[n % len(usable)], index)
        index += 1
    for n in range(trapping_items):
        builder.trapping(n, usable[(gold_items + n) % len(usable)], index)
        index += 1


def _anchor_assets(
    reference, rate_checked: dict[int, bool], warnings: list[str], item_key: str
) -> dict[str, Any]:
    """Make (or find) the two anchors of a reference clip, after the filter self-test at its rate."""
    from evalsite.audio.anchors import anchor_effectiveness_warning, anchor_filter_self_test, lowpass_anchor
    from evalsite.audio.decoding import decoded_from_array
    from evalsite.audio.selectors import audio_asset_samples
    from evalsite.audio.services import audio_asset_store

    samples, rate = audio_asset_samples(reference)
    if rate not in rate_checked:
        result = anchor_filter_self_test(rate)
        if not result.passed:
            raise ApplicationError(
                ANCHOR_SELF_TEST_FAILED.format(rate=rate, failures="; ".join(result.failures))
            )
        rate_checked[rate] = True
    assets = {}
    for role, cutoff in ANCHOR_CUTOFFS.items():
        warning = anchor_effectiveness_warning(samples, rate, cutoff)
        if warning:
            warnings.append(f"item {item_key}: {warning}")
        anchor = lowpass_anchor(samples, rate, cutoff)
        assets[role], _ = audio_asset_store(
            decoded=decoded_from_array(anchor, rate), original_name=f"anchor-{int(cutoff)}.wav"
        )
    return assets


def _check_build_lists(checkpoints: list[Checkpoint], items: list[EvalItem] | None) -> None:
    """Each checkpoint and item once, and no more of them than the operator allows: one request must not
    hold a web worker for a minute building (or resolving) a test nobody could run."""
    if len(checkpoints) > settings.EVALSITE_LISTENING_MAX_SYSTEMS:
        raise ApplicationError(
            TOO_MANY_SYSTEMS.format(limit=settings.EVALSITE_LISTENING_MAX_SYSTEMS, n=len(checkpoints))
        )
    times = Counter(c.pk for c in checkpoints)
    if len(times) < len(checkpoints):
        labels = sorted({f"{c.run.name}@{c.step}" for c in checkpoints if times[c.pk] > 1})
        raise ApplicationError(DUPLICATE_CHECKPOINTS.format(labels=", ".join(labels)))
    times = Counter(i.pk for i in items or [])
    if len(times) < len(items or []):
        keys = sorted({i.key for i in items if times[i.pk] > 1})
        raise ApplicationError(DUPLICATE_ITEMS.format(keys=", ".join(keys[:10])))


@transaction.atomic
def listening_test_build(
    *,
    name: str,
    kind: str,
    checkpoints: list[Checkpoint],
    items: list[EvalItem] | None = None,
    params_hash: str | None = None,
    training_items: int = 1,
    votes_target: int = 10,
    trials_per_participant: int | None = None,
    seed: int | None = None,
    title: str = "Listening test",
    instructions: str = "",
    owner=None,
    completion_code: str = "",
    completion_redirect: str = "",
    screened_out_redirect: str = "",
    comparison: Checkpoint | None = None,
    allow_no_preference: bool = False,
    require_play_all: bool = False,
    headphone_check: bool = False,
    gold_items: int = 0,
    trapping_items: int = 0,
) -> ListeningTest:
    """Build a draft test from checkpoints × eval items.

    MUSHRA: one trial per item with the open reference, the hidden reference, the 3.5 kHz and
    7 kHz low-pass anchors (made here, after the filter mask self-test) and every checkpoint's
    output. SMOS: one trial per item × checkpoint, rated for similarity to the item's reference
    recording. MOS: one trial per item × checkpoint. CMOS (P.800 Annex E): one trial per item ×
    checkpoint holding that output and the ``comparison`` checkpoint's output of the item (the
    reference recording when ``comparison`` is None); listeners hear both blind, as A and B.
    AB: one trial per item × pair of checkpoints; ``allow_no_preference`` lets listeners answer
    "no preference". Items without output from every checkpoint (or without a reference where
    one is needed) are skipped with a warning. The first ``training_items`` usable items become
    training trials. ``gold_items`` / ``trapping_items`` quality-control trials are built for every
    kind (see ``_ControlBuilder``); with ``headphone_check`` the level of the material is measured
    for the calibration that comes before the check.
    """
    if not checkpoints:
        raise ApplicationError(NO_CHECKPOINTS)
    _check_build_lists(checkpoints, items)
    if comparison is not None and kind != ListeningTest.Kind.CMOS:
        raise ApplicationError(COMPARISON_ONLY_CMOS.format(kind=kind))
    if allow_no_preference and kind != ListeningTest.Kind.AB:
        raise ApplicationError(NO_PREFERENCE_ONLY_AB.format(kind=kind))
    checkpoints = list(
        Checkpoint.objects.filter(pk__in=[c.pk for c in checkpoints])
        .select_related("run__eval_set")
        .order_by("run__name", "step")
    )
    if comparison is not None:
        comparison = Checkpoint.objects.select_related("run__eval_set").get(pk=comparison.pk)
        if comparison.pk in {c.pk for c in checkpoints}:
            raise ApplicationError(
                COMPARISON_IS_RATED.format(label=f"{comparison.run.name}@{comparison.step}")
            )
    if kind == ListeningTest.Kind.AB and len(checkpoints) < 2:
        raise ApplicationError(AB_NEEDS_TWO.format(n=len(checkpoints)))
    sources = checkpoints + ([comparison] if comparison is not None else [])
    eval_sets = {c.run.eval_set_id for c in sources}
    if items is None:
        if len(eval_sets) != 1 or None in eval_sets:
            names = sorted({c.run.eval_set.name if c.run.eval_set else "none" for c in sources})
            raise ApplicationError(MIXED_EVAL_SETS.format(names=", ".join(names)))
        items = list(
            EvalItem.objects.filter(eval_set_id=eval_sets.pop()).select_related("reference").order_by("key")
        )
    if kind == ListeningTest.Kind.MUSHRA and len(checkpoints) + 3 > MUSHRA_MAX_SIGNALS:
        raise ApplicationError(MUSHRA_TOO_MANY.format(n=len(checkpoints), total=len(checkpoints) + 3))
    if len(items) > settings.EVALSITE_LISTENING_MAX_ITEMS:
        raise ApplicationError(
            TOO_MANY_ITEMS.format(limit=settings.EVALSITE_LISTENING_MAX_ITEMS, n=len(items))
        )
    per_item = {
        ListeningTest.Kind.MUSHRA: 1,
        ListeningTest.Kind.AB: len(checkpoints) * (len(checkpoints) - 1) // 2,
    }.get(kind, len(checkpoints))
    if per_item * len(items) > settings.EVALSITE_LISTENING_MAX_TRIALS:
        raise ApplicationError(
            TOO_MANY_TRIALS.format(
                n=per_item * len(items),
                per_item=per_item,
                items=len(items),
                limit=settings.EVALSITE_LISTENING_MAX_TRIALS,
            )
        )

    test = ListeningTest(
        name=name,
        kind=kind,
        seed=seed if seed is not None else secrets.randbits(31),
        votes_target=votes_target,
        trials_per_participant=trials_per_participant,
        title=title,
        instructions=instructions,
        owner=owner,
        completion_code=completion_code,
        completion_redirect=completion_redirect,
        screened_out_redirect=screened_out_redirect,
        allow_no_preference=allow_no_preference,
        require_play_all=require_play_all,
        headphone_check=headphone_check,
        gold_items=gold_items,
        trapping_items=trapping_items,
    )
    test.full_clean()
    test.save()
    conditions = {}
    for c in checkpoints:
        conditions[c.pk] = Condition.objects.create(
            test=test, label=f"{c.run.name}@{c.step}", role="system", checkpoint=c
        )
    if kind == ListeningTest.Kind.MUSHRA:
        for role in (Condition.Role.HIDDEN_REFERENCE, *ANCHOR_CUTOFFS):
            conditions[role] = Condition.objects.create(test=test, label=role.label, role=role)
    if kind == ListeningTest.Kind.CMOS:
        conditions[Condition.Role.COMPARISON] = Condition.objects.create(
            test=test,
            role=Condition.Role.COMPARISON,
            checkpoint=comparison,
            label=f"{comparison.run.name}@{comparison.step}"
            if comparison is not None
            else CMOS_REFERENCE_LABEL,
        )

    warnings: list[str] = []
    outputs = _outputs_by_item(sources, params_hash)
    needs_reference = kind in (ListeningTest.Kind.MUSHRA, ListeningTest.Kind.SMOS) or (
        kind == ListeningTest.Kind.CMOS and comparison is None
    )
    usable = []
    for item in items:
        have = outputs.get(item.pk, {})
        missing = [f"{c.run.name}@{c.step}" for c in sources if c.pk not in have]
        if missing:
            warnings.append(f"item {item.key} skipped: no output from {', '.join(missing)}")
        elif needs_reference and item.reference is None:
            warnings.append(f"item {item.key} skipped: no reference recording")
        else:
            usable.append(item)
    if not usable:
        raise ApplicationError(
            NO_USABLE_ITEMS.format(reference=" and a reference" if needs_reference else "")
        )

    rate_checked: dict[int, bool] = {}
    anchors: dict[int, dict] = {}
    index = 0
    for n, item in enumerate(usable):
        training = n < training_items
        have = outputs[item.pk]
        if kind == ListeningTest.Kind.MUSHRA:
            if item.reference.duration_s > MUSHRA_MAX_ITEM_S:
                warnings.append(
                    f"item {item.key} is {item.reference.duration_s:.1f} s; BS.1534-3 asks for about 10 s "
                    f"at most (justify longer items in the report)"
                )
            trial = Trial.objects.create(
                test=test, item=item, index=index, is_training=training, reference=item.reference
            )
            index += 1
            for c in checkpoints:
                Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
            Stimulus.objects.create(
                trial=trial, condition=conditions[Condition.Role.HIDDEN_REFERENCE], asset=item.reference
            )
            anchors[item.pk] = _anchor_assets(item.reference, rate_checked, warnings, item.key)
            for role, asset in anchors[item.pk].items():
                Stimulus.objects.create(trial=trial, condition=conditions[role], asset=asset)
        elif kind == ListeningTest.Kind.CMOS:
            versus = have[comparison.pk].asset if comparison is not None else item.reference
            for c in checkpoints:
                trial = Trial.objects.create(test=test, item=item, index=index, is_training=training)
                index += 1
                Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
                Stimulus.objects.create(
                    trial=trial, condition=conditions[Condition.Role.COMPARISON], asset=versus
                )
        elif kind == ListeningTest.Kind.AB:
            for first, second in itertools.combinations(checkpoints, 2):
                trial = Trial.objects.create(test=test, item=item, index=index, is_training=training)
                index += 1
                for c in (first, second):
                    Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
        else:
            for c in checkpoints:
                trial = Trial.objects.create(
                    test=test,
                    item=item,
                    index=index,
                    is_training=training,
                    reference=item.reference if kind == ListeningTest.Kind.SMOS else None,
                )
                index += 1
                Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
    if gold_items or trapping_items:
        builder = _ControlBuilder(test, checkpoints, outputs, anchors, comparison, usable)
        _control_trials(builder, index, gold_items, trapping_items)
    test.build_warnings = warnings
    fields = ["build_warnings", "updated_at"]
    if headphone_check:
        test.calibration_level_dbfs = _material_level(usable, [outputs[i.pk] for i in usable])
        fields.append("calibration_level_dbfs")
    test.save(update_fields=fields)
    return test


def _material_level(items: list[EvalItem], outputs: list[dict[int, Generation]]) -> float | None:
    """Active RMS level (dBFS) of the test's material, from the first ``CALIBRATION_ITEMS`` items'
    references and outputs: the calibration noise plays at it."""
    from evalsite.audio.selectors import audio_asset_samples
    from evalsite.listening.calibration import material_level_dbfs

    assets = []
    for item, have in list(zip(items, outputs))[:CALIBRATION_ITEMS]:
        assets += ([item.reference] if item.reference is not None else []) + [g.asset for g in have.values()]
    return material_level_dbfs([audio_asset_samples(a) for a in assets])


@transaction.atomic
def listening_test_publish(*, test: ListeningTest) -> ListeningTest:
    test = ListeningTest.objects.select_for_update().get(pk=test.pk)
    if test.status != ListeningTest.Status.DRAFT:
        raise ConflictError(NOT_DRAFT.format(name=test.name, status=test.status))
    if not test.trials.filter(is_training=False, control=Trial.Control.NONE).exists():
        raise ApplicationError(NOTHING_TO_PUBLISH.format(name=test.name))
    test.status = ListeningTest.Status.PUBLISHED
    test.published_at = timezone.now()
    test.save(update_fields=["status", "published_at", "updated_at"])
    return test


@transaction.atomic
def listening_test_close(*, test: ListeningTest) -> ListeningTest:
    test = ListeningTest.objects.select_for_update().get(pk=test.pk)
    if test.status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(NOT_PUBLISHED.format(name=test.name, status=test.status))
    test.status = ListeningTest.Status.CLOSED
    test.closed_at = timezone.now()
    test.save(update_fields=["status", "closed_at", "updated_at"])
    return test


# ---------------------------------------------------------------------------------------------
# Assignment engine


def trial_coverage(test: ListeningTest) -> dict[int, int]:
    """Votes each main trial has or will get: assignments of participants not screened out, finished
    ones always, unfinished ones only while their participant joined less than
    ``EVALSITE_ASSIGNMENT_HOLD_MIN`` ago.

    Without that hold, every join would reserve its trials for good: listeners who open the link and
    leave (or a script joining from many addresses) would fill a test that has no answers.
    """
    hold_from = timezone.now() - timedelta(minutes=settings.EVALSITE_ASSIGNMENT_HOLD_MIN)
    counted = ~Q(assignments__participant__status=Participant.Status.SCREENED_OUT) & (
        Q(assignments__completed_at__isnull=False) | Q(assignments__participant__consented_at__gte=hold_from)
    )
    counts = (
        Trial.objects.filter(test=test, is_training=False, control=Trial.Control.NONE)
        .annotate(n=Count("assignments", filter=counted))
        .values_list("pk", "n")
    )
    return dict(counts)


def assignment_choose_trials(test: ListeningTest, rng: random.Random) -> list[int]:
    """The least-covered main trials (ties broken by ``rng``) for a new participant.

    Votes of screened-out participants do not count, so the engine tops up behind them.
    Raises ``ConflictError(TEST_FULL)`` when every trial already has ``votes_target`` votes.
    """
    coverage = trial_coverage(test)
    open_trials = [pk for pk, n in coverage.items() if n < test.votes_target]
    if not open_trials:
        raise ConflictError(TEST_FULL)
    want = test.trials_per_participant or len(coverage)
    order = sorted(coverage, key=lambda pk: (coverage[pk], rng.random()))
    return order[: min(want, len(order))]


@dataclass(frozen=True)
class _JoinLayout:
    """The trials of a published test as a join needs them (they no longer change once published)."""

    training: list[int]
    controls: dict[str, list[int]]
    stimuli: dict[int, list[int]]  # trial id -> stimulus ids, in id order


def _join_layout(test: ListeningTest) -> _JoinLayout:
    training, controls, stimuli = [], {Trial.Control.GOLD: [], Trial.Control.TRAPPING: []}, {}
    for trial_id, is_training, control in (
        Trial.objects.filter(test=test).order_by("index").values_list("pk", "is_training", "control")
    ):
        stimuli[trial_id] = []
        if is_training:
            training.append(trial_id)
        elif control:
            controls[control].append(trial_id)
    for trial_id, stimulus_id in (
        Stimulus.objects.filter(trial__test=test).order_by("pk").values_list("trial_id", "pk")
    ):
        stimuli[trial_id].append(stimulus_id)
    return _JoinLayout(training, controls, stimuli)


class CrowdIdInUse(ConflictError):
    """Another browser already joined the test with this crowd id (409, ``CROWD_ID_IN_USE``)."""


def participant_join(
    *,
    test: ListeningTest,
    external_id: str = "",
    study_id: str = "",
    session_id: str = "",
    resume_token: str | None = None,
) -> Participant:
    """Admit a listener, or resume the crowd worker whose browser proves it joined as them.

    A crowd id (``PROLIFIC_PID``) is no secret: it travels in URLs and anyone may type one. So a
    returning worker gets their participant back only when ``resume_token`` (the participant token
    that the browser's signed cookie holds) is that participant's; anyone else presenting the id is
    refused with ``CrowdIdInUse``, and the existing session, its answers included, stays untouched.

    Joins take the test's row lock in turn (the assignment engine balances on what earlier joins
    were given), so everything that does not depend on it is read before taking it.
    """
    external_id = external_id.strip()[:200]
    layout = _join_layout(test)
    with transaction.atomic():
        test = ListeningTest.objects.select_for_update().get(pk=test.pk)
        if test.status != ListeningTest.Status.PUBLISHED:
            raise ConflictError(TEST_NOT_OPEN)
        if external_id:
            existing = Participant.objects.filter(test=test, external_id=external_id).first()
            if existing is not None:
                if resume_token and secrets.compare_digest(existing.token, resume_token):
                    return existing
                raise CrowdIdInUse(CROWD_ID_IN_USE, extra={"field": "PROLIFIC_PID"})
        token = secrets.token_urlsafe(18)
        seed = random.Random(f"{test.seed}:{token}").getrandbits(31)
        rng = random.Random(seed)
        main = assignment_choose_trials(test, rng)
        participant = Participant.objects.create(
            test=test,
            token=token,
            external_id=external_id,
            study_id=study_id[:200],
            session_id=session_id[:200],
            seed=seed,
            consented_at=timezone.now(),
        )
        training = list(layout.training)
        rng.shuffle(training)
        for control in (Trial.Control.GOLD, Trial.Control.TRAPPING):
            # One of each configured control, mixed into the main trials like any other.
            if layout.controls[control]:
                main.append(rng.choice(layout.controls[control]))
        rng.shuffle(main)
        # Two bulk inserts instead of one per trial.
        assignments = Assignment.objects.bulk_create(
            [
                Assignment(participant=participant, trial_id=trial_id, position=position)
                for position, trial_id in enumerate(training + main)
            ]
        )
        handles = []
        for assignment in assignments:
            stimuli = list(layout.stimuli[assignment.trial_id])
            rng.shuffle(stimuli)
            handles += [
                StimulusHandle(assignment=assignment, stimulus_id=s, position=i)
                for i, s in enumerate(stimuli)
            ]
        StimulusHandle.objects.bulk_create(handles)
    return participant


# ---------------------------------------------------------------------------------------------
# Level calibration and headphone check


@transaction.atomic
def calibration_confirm(*, participant: Participant, plays: Any) -> Participant:
    """Record that the listener set their volume with the calibration noise (before the headphone check).

    Confirmed once: a repeated confirmation (a retried request) returns the participant unchanged.
    """
    from evalsite.listening.calibration import calibration_level

    participant = Participant.objects.select_for_update().select_related("test").get(pk=participant.pk)
    if not participant.test.headphone_check:
        raise ApplicationError(CALIBRATION_NOT_ASKED)
    if participant.calibrated_at is not None:
        return participant
    if participant.test.status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(TEST_NOT_OPEN)
    if participant.status != Participant.Status.ACTIVE:
        raise ConflictError(
            SCREENED_OUT if participant.status == Participant.Status.SCREENED_OUT else PARTICIPANT_DONE
        )
    if not (isinstance(plays, int) and not isinstance(plays, bool) and 1 <= plays <= CALIBRATION_MAX_PLAYS):
        raise ApplicationError(CALIBRATION_PLAY_FIRST.format(plays=plays), extra={"field": "plays"})
    participant.calibrated_at = timezone.now()
    participant.calibration = {
        "plays": plays,
        "level_dbfs": round(calibration_level(participant.test.calibration_level_dbfs), 2),
    }
    participant.save(update_fields=["calibrated_at", "calibration", "updated_at"])
    return participant


@transaction.atomic
def headphone_check_submit(*, participant: Participant, answers: Any) -> Participant:
    """Score the antiphase headphone check; fewer than 5 of 6 right screens the listener out.

    Taken once: a repeated submission (a retried request) returns the stored outcome unchanged.
    """
    from evalsite.audio.headphone_check import N_TRIALS, PASS_CORRECT

    participant = Participant.objects.select_for_update().select_related("test").get(pk=participant.pk)
    if not participant.test.headphone_check:
        raise ApplicationError(HEADPHONE_NOT_ASKED)
    if participant.headphone_passed is not None:
        return participant
    if participant.test.status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(TEST_NOT_OPEN)
    if participant.calibrated_at is None:
        raise ConflictError(CALIBRATE_FIRST)
    valid = (
        isinstance(answers, list)
        and len(answers) == N_TRIALS
        and all(isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= 3 for a in answers)
    )
    if not valid:
        raise ApplicationError(
            HEADPHONE_BAD_ANSWERS.format(n=N_TRIALS, answers=answers), extra={"field": "answers"}
        )
    correct = sum(a == t["answer"] for a, t in zip(answers, headphone_trials(participant)))
    participant.headphone_answers = answers
    participant.headphone_passed = correct >= PASS_CORRECT
    fields = ["headphone_answers", "headphone_passed", "updated_at"]
    if not participant.headphone_passed:
        participant.status = Participant.Status.SCREENED_OUT
        fields.append("status")
    participant.save(update_fields=fields)
    return participant


# ---------------------------------------------------------------------------------------------
# Answers


def _check_open(participant: Participant) -> None:
    """The test is open and this listener may answer (not done, not screened out, checks taken)."""
    if participant.test.status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(TEST_NOT_OPEN)
    if participant.status == Participant.Status.COMPLETED:
        raise ConflictError(PARTICIPANT_DONE)
    if participant.status == Participant.Status.SCREENED_OUT:
        raise ConflictError(SCREENED_OUT)
    if headphone_check_pending(participant):
        raise ConflictError(HEADPHONE_CHECK_FIRST)


def _open_assignment(participant: Participant, assignment_token: str) -> Assignment:
    _check_open(participant)
    # Lock only the participant's own assignment row, not the trial every listener shares.
    assignment = (
        Assignment.objects.select_for_update()
        .filter(participant=participant, token=str(assignment_token))
        .first()
    )
    if assignment is None:
        raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
    return assignment


def _handle(assignment: Assignment, handle_token: str) -> StimulusHandle:
    handle = (
        StimulusHandle.objects.select_related("stimulus__asset")
        .filter(assignment=assignment, token=str(handle_token))
        .first()
    )
    if handle is None:
        raise NotFoundError(UNKNOWN_STIMULUS, extra={"field": "stimulus"})
    return handle


def _request_id(request_id: Any) -> str:
    if not isinstance(request_id, str) or not request_id or len(request_id) > 64:
        raise ApplicationError(REQUEST_ID_REQUIRED, extra={"field": "request_id"})
    return request_id


def validate_score(kind: str, score: Any, *, choices: dict[str, float] | None = None) -> float:
    """The value to store for a listener's answer, or ``ApplicationError`` (field ``score``).

    AB answers are a choice, not a number: ``choices`` maps each accepted answer (a stimulus
    token, or ``"none"`` where allowed) to the value stored for it.
    """
    number = isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)
    if kind == ListeningTest.Kind.AB:
        choices = choices or {}
        rule = "the id of sound A or sound B" + (f' or "{NO_PREFERENCE}"' if NO_PREFERENCE in choices else "")
        if isinstance(score, str) and score in choices:
            return choices[score]
        ok = False
    elif kind == ListeningTest.Kind.MUSHRA:
        rule = "a number from 0 to 100"
        ok = number and 0 <= score <= 100
    elif kind == ListeningTest.Kind.CMOS:
        rule = "a whole number from -3 to 3"
        ok = number and float(score).is_integer() and -3 <= score <= 3
    else:
        rule = "a whole number from 1 to 5"
        ok = number and float(score).is_integer() and 1 <= score <= 5
    if not ok:
        raise ApplicationError(SCORE_OUT_OF_RANGE.format(rule=rule, score=score), extra={"field": "score"})
    return float(score)


@dataclass(frozen=True)
class _RatingTarget:
    """What one answer needs to know, read by one joined query (see ``_rating_target``)."""

    participant_id: int
    participant_status: str
    headphone_passed: bool | None
    test_id: int
    kind: str
    test_status: str
    headphone_check: bool
    allow_no_preference: bool
    assignment_id: int | None
    completed: bool
    is_training: bool
    handle_id: int | None
    stimulus_id: int | None
    a_token: str | None  # sounds A and B of the assignment (CMOS/AB)
    b_handle_id: int | None
    b_token: str | None

    def participant(self, token: str) -> Participant:
        """The participant and its test as model instances holding only what was read (the rest loads on use)."""
        participant = _loaded(
            Participant,
            {
                "id": self.participant_id,
                "test_id": self.test_id,
                "token": token,
                "status": self.participant_status,
                "headphone_passed": self.headphone_passed,
            },
        )
        participant.test = _loaded(
            ListeningTest,
            {
                "id": self.test_id,
                "kind": self.kind,
                "status": self.test_status,
                "headphone_check": self.headphone_check,
                "allow_no_preference": self.allow_no_preference,
            },
        )
        return participant


def _loaded(model, values: dict[str, Any]):
    """A model instance as if loaded from the database with only these fields (others load on access)."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(DEFAULT_DB_ALIAS, names, [values[name] for name in names])


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


# Participant, test, the assignment of ``trial``, its sound ``stimulus`` and its sounds A and B, by
# their tokens in one statement; LEFT JOINs so that an unknown trial or sound is told apart.
_TARGET_SQL = """
SELECT p.id, p.status, p.headphone_passed, t.id, t.kind, t.status, t.headphone_check, t.allow_no_preference,
       a.id, a.completed_at, tr.is_training, h.id, h.stimulus_id, ha.token, hb.id, hb.token
FROM {participant} p
JOIN {test} t ON t.id = p.test_id
LEFT JOIN {assignment} a ON a.participant_id = p.id AND a.token = %s
LEFT JOIN {trial} tr ON tr.id = a.trial_id
LEFT JOIN {handle} h ON h.assignment_id = a.id AND h.token = %s
LEFT JOIN {handle} ha ON ha.assignment_id = a.id AND ha.position = 0
LEFT JOIN {handle} hb ON hb.assignment_id = a.id AND hb.position = 1
WHERE p.token = %s
"""


def _rating_target(participant_token: str, trial: Any, stimulus: Any) -> _RatingTarget | None:
    sql = _TARGET_SQL.format(
        participant=_table(Participant),
        test=_table(ListeningTest),
        assignment=_table(Assignment),
        trial=_table(Trial),
        handle=_table(StimulusHandle),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [str(trial), str(stimulus), participant_token])
        row = cursor.fetchone()
    if row is None:
        return None
    (
        pid,
        pstatus,
        passed,
        tid,
        kind,
        tstatus,
        headphone,
        no_pref,
        aid,
        completed_at,
        training,
        hid,
        sid,
        a_token,
        b_id,
        b_token,
    ) = row
    return _RatingTarget(
        pid,
        pstatus,
        None if passed is None else bool(passed),
        tid,
        kind,
        tstatus,
        bool(headphone),
        bool(no_pref),
        aid,
        completed_at is not None,
        bool(training),
        hid,
        sid,
        a_token,
        b_id,
        b_token,
    )


def _checked_value(target: _RatingTarget | None, score: Any) -> float:
    """The value to store, after the same checks in the same order as every other answer."""
    if target is None:
        raise NotFoundError(UNKNOWN_PARTICIPANT)
    if target.test_status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(TEST_NOT_OPEN)
    if target.participant_status == Participant.Status.COMPLETED:
        raise ConflictError(PARTICIPANT_DONE)
    if target.participant_status == Participant.Status.SCREENED_OUT:
        raise ConflictError(SCREENED_OUT)
    if target.headphone_check and target.headphone_passed is None:
        raise ConflictError(HEADPHONE_CHECK_FIRST)
    if target.assignment_id is None:
        raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
    if target.handle_id is None:
        raise NotFoundError(UNKNOWN_STIMULUS, extra={"field": "stimulus"})
    choices = None
    if target.kind in COMPARISON_KINDS:
        # Comparisons are answered on sound B, as B relative to A.
        if target.handle_id != target.b_handle_id:
            raise ApplicationError(ANSWER_ON_B, extra={"field": "stimulus"})
        if target.kind == ListeningTest.Kind.AB:
            choices = {target.a_token: AB_ANSWER_VALUES["A"], target.b_token: AB_ANSWER_VALUES["B"]}
            if target.allow_no_preference:
                choices[NO_PREFERENCE] = AB_ANSWER_VALUES[NO_PREFERENCE]
    value = validate_score(target.kind, score, choices=choices)
    if target.completed:
        raise ConflictError(TRIAL_ALREADY_COMPLETED, extra={"field": "trial"})
    return value


_RATING_FIELDS = [
    "id",
    "created_at",
    "updated_at",
    "participant_id",
    "assignment_id",
    "stimulus_id",
    "score",
    "request_id",
    "history",
    "is_training",
]

# One statement: lock the assignment (only while it is unfinished, so a concurrent trial_complete
# either sees this rating or refuses it), insert the rating, or on a second answer to the same sound
# take the new score unless this request id was seen before (a retry, or a late replay of an older
# request: nothing changes and nothing is returned).
_UPSERT_SQL = """
WITH open_assignment AS (
    SELECT id FROM {assignment} WHERE id = %(assignment)s AND completed_at IS NULL FOR UPDATE
)
INSERT INTO {rating} AS r (created_at, updated_at, participant_id, assignment_id, stimulus_id, score, request_id,
                           history, is_training)
SELECT %(now)s, %(now)s, %(participant)s, open_assignment.id, %(stimulus)s, %(score)s, %(request_id)s,
       jsonb_build_array(%(request_id)s::text), %(training)s
FROM open_assignment
ON CONFLICT (participant_id, stimulus_id) DO UPDATE
SET score = EXCLUDED.score, request_id = EXCLUDED.request_id, history = r.history || EXCLUDED.history,
    updated_at = EXCLUDED.updated_at
WHERE NOT (r.history ? EXCLUDED.request_id)
RETURNING {returning}
"""

_STORED_SQL = """
SELECT a.completed_at, {returning}
FROM {assignment} a LEFT JOIN {rating} r ON r.participant_id = %s AND r.stimulus_id = %s
WHERE a.id = %s
"""


def _rating_from_row(row) -> Rating:
    values = dict(zip(_RATING_FIELDS, row))
    if isinstance(values["history"], str):
        values["history"] = json.loads(values["history"])
    return _loaded(Rating, values)


def _rating_upsert_postgresql(target: _RatingTarget, value: float, request_id: str) -> Rating:
    returning = ", ".join(f"r.{name}" for name in _RATING_FIELDS)
    params = {
        "assignment": target.assignment_id,
        "now": timezone.now(),
        "participant": target.participant_id,
        "stimulus": target.stimulus_id,
        "score": value,
        "request_id": request_id,
        "training": target.is_training,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            _UPSERT_SQL.format(assignment=_table(Assignment), rating=_table(Rating), returning=returning),
            params,
        )
        row = cursor.fetchone()
        if row is not None:
            return _rating_from_row(row)
        # Nothing written: the trial was finished meanwhile, or this request id was seen before.
        cursor.execute(
            _STORED_SQL.format(assignment=_table(Assignment), rating=_table(Rating), returning=returning),
            [target.participant_id, target.stimulus_id, target.assignment_id],
        )
        stored = cursor.fetchone()
    if stored is None:
        raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
    if stored[0] is not None:
        raise ConflictError(TRIAL_ALREADY_COMPLETED, extra={"field": "trial"})
    rating = _rating_from_row(stored[1:])
    if rating.pk is None or request_id not in rating.history:
        raise RuntimeError(
            f"rating upsert for assignment {target.assignment_id} wrote nothing and found no reason"
        )
    return rating


def _rating_write_orm(target: _RatingTarget, value: float, request_id: str) -> Rating:
    """Any other database, inside a transaction: the same steps one statement at a time (SQLite
    serialises them with the write lock it takes at BEGIN)."""
    completed = (
        Assignment.objects.select_for_update()
        .filter(pk=target.assignment_id)
        .values_list("completed_at", flat=True)
        .first()
    )
    if completed is not None:
        raise ConflictError(TRIAL_ALREADY_COMPLETED, extra={"field": "trial"})
    rating = (
        Rating.objects.select_for_update()
        .filter(participant_id=target.participant_id, stimulus_id=target.stimulus_id)
        .first()
    )
    if rating is None:
        return Rating.objects.create(
            participant_id=target.participant_id,
            assignment_id=target.assignment_id,
            stimulus_id=target.stimulus_id,
            score=value,
            request_id=request_id,
            history=[request_id],
            is_training=target.is_training,
        )
    if request_id in rating.history:
        return rating
    rating.score = value
    rating.request_id = request_id
    rating.history = [*rating.history, request_id]
    rating.save(update_fields=["score", "request_id", "history", "updated_at"])
    return rating


def rating_submit(
    *, participant: Participant | str, trial: str, stimulus: str, score: Any, request_id: Any
) -> Rating:
    """Save one rating the moment it is given.

    ``participant`` is the participant or (the listener endpoint) its token. CMOS and AB answer
    the trial on its second sound (B): ``score`` is the CMOS answer (−3..3, B relative to A) or the
    AB choice (A's or B's stimulus token, or ``"none"``); see ``Rating`` for what is stored.
    Idempotent: the same ``request_id`` again changes nothing, and a late retry of an older request
    never overwrites a newer answer (every request id is remembered). On PostgreSQL this is two
    statements (one read, one upsert), the hot path of a listening test under load.
    """
    request_id = _request_id(request_id)
    token = participant if isinstance(participant, str) else participant.token
    if connection.vendor == "postgresql":
        target = _rating_target(token, trial, stimulus)
        rating = _rating_upsert_postgresql(target, _checked_value(target, score), request_id)
    else:
        with transaction.atomic():
            target = _rating_target(token, trial, stimulus)
            rating = _rating_write_orm(target, _checked_value(target, score), request_id)
    rating.participant = participant if isinstance(participant, Participant) else target.participant(token)
    return rating


@transaction.atomic
def flag_submit(
    *,
    participant: Participant,
    trial: str,
    stimulus: str,
    start: Any,
    end: Any,
    category: Any,
    note: Any = "",
    request_id: Any,
) -> ArtifactFlag:
    """Save a time-localised artifact flag (seconds into the stimulus); idempotent by request id."""
    request_id = _request_id(request_id)
    existing = ArtifactFlag.objects.filter(participant=participant, request_id=request_id).first()
    if existing is not None:
        return existing
    assignment = _open_assignment(participant, trial)
    handle = _handle(assignment, stimulus)
    if assignment.completed_at is not None:
        raise ConflictError(TRIAL_ALREADY_COMPLETED, extra={"field": "trial"})
    duration = handle.stimulus.asset.duration_s
    numeric = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)
    )
    if not numeric or not (0 <= start < end <= duration + 1e-3):
        raise ApplicationError(
            FLAG_BAD_REGION.format(duration=duration, start=start, end=end),
            extra={"field": "start" if not numeric or start < 0 else "end"},
        )
    if category not in ArtifactFlag.Category.values:
        raise ApplicationError(
            FLAG_BAD_CATEGORY.format(choices=", ".join(ArtifactFlag.Category.values), category=category),
            extra={"field": "category"},
        )
    try:
        with transaction.atomic():
            return ArtifactFlag.objects.create(
                participant=participant,
                assignment=assignment,
                stimulus=handle.stimulus,
                start_s=float(start),
                end_s=min(float(end), duration),
                category=category,
                note=str(note or "")[:1000],
                request_id=request_id,
            )
    except IntegrityError:
        return ArtifactFlag.objects.get(participant=participant, request_id=request_id)


# One of a participant's assignments by token, locked like every answer to it, and then how many
# sounds it has and how many of them this participant has not rated (read after the lock, so an
# answer that was being saved is counted).
_TRIAL_SQL = "SELECT a.id, a.completed_at, {telemetry} FROM {assignment} a WHERE a.participant_id = %s AND a.token = %s"
_UNRATED_SQL = """
SELECT COUNT(*), COUNT(*) - COUNT(r.id)
FROM {handle} h LEFT JOIN {rating} r ON r.participant_id = %s AND r.stimulus_id = h.stimulus_id
WHERE h.assignment_id = %s
"""


@transaction.atomic
def trial_complete(*, participant: Participant, trial: str) -> Participant:
    """Finish a trial once every sound in it is rated (a CMOS/AB trial: once it is answered);
    finishing the last one completes the test.

    Idempotent: finishing a finished trial (a retried request) just returns the participant.
    """
    if participant.status == Participant.Status.COMPLETED:
        if not Assignment.objects.filter(participant=participant, token=str(trial)).exists():
            raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
        return participant
    _check_open(participant)
    play_all = participant.test.require_play_all
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(
            _TRIAL_SQL.format(telemetry="a.telemetry" if play_all else "NULL", assignment=_table(Assignment))
            + lock,
            [participant.pk, str(trial)],
        )
        row = cursor.fetchone()
        if row is None:
            raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
        assignment_id, completed_at, telemetry = row
        if completed_at is None:
            cursor.execute(
                _UNRATED_SQL.format(handle=_table(StimulusHandle), rating=_table(Rating)),
                [participant.pk, assignment_id],
            )
            sounds, unrated = cursor.fetchone()
    if completed_at is None:
        if participant.test.kind in COMPARISON_KINDS:
            if unrated == sounds:
                raise ApplicationError(ANSWER_FIRST, extra={"field": "trial"})
        elif unrated:
            raise ApplicationError(RATE_ALL_FIRST.format(missing=unrated), extra={"field": "trial"})
        if play_all:
            events = json.loads(telemetry) if isinstance(telemetry, str) else telemetry or []
            played = {
                e.get("stimulus") for e in events if isinstance(e, dict) and e.get("type") in PLAY_EVENT_TYPES
            }
            tokens = StimulusHandle.objects.filter(assignment_id=assignment_id).values_list(
                "token", flat=True
            )
            unplayed = [token for token in tokens if token not in played]
            if unplayed:
                raise ApplicationError(PLAY_ALL_FIRST.format(missing=len(unplayed)), extra={"field": "trial"})
        now = timezone.now()
        Assignment.objects.filter(pk=assignment_id).update(completed_at=now, updated_at=now)
    if not participant.assignments.filter(completed_at__isnull=True).exists():
        participant.status = Participant.Status.COMPLETED
        participant.completed_at = timezone.now()
        participant.save(update_fields=["status", "completed_at", "updated_at"])
    return participant


@transaction.atomic
def telemetry_append(*, participant: Participant, trial: str, events: Any, device: Any = None) -> None:
    """Keep playback events (play, heard, switch, seek, loop) of a trial for screening; bounded in size.

    Only events about the reference (``stimulus`` null) or one of this trial's own sounds are kept,
    so a listener cannot satisfy ``require_play_all`` with another trial's (or person's) tokens.
    """
    assignment = (
        Assignment.objects.select_for_update().filter(participant=participant, token=str(trial)).first()
    )
    if assignment is None:
        raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
    if not isinstance(events, list):
        raise ApplicationError("events must be a list", extra={"field": "events"})
    own = set(assignment.handles.values_list("token", flat=True))
    clean = [kept for e in events[:2000] if (kept := _telemetry_event(e, own)) is not None]
    Assignment.objects.filter(pk=assignment.pk).update(telemetry=(assignment.telemetry + clean)[-5000:])
    if isinstance(device, dict):
        Participant.objects.filter(pk=participant.pk).update(
            device={
                str(k)[:40]: v
                for k, v in list(device.items())[:20]
                if _telemetry_number(v) is not None or v is None
            }
        )


TELEMETRY_TYPES = frozenset({"play", "pause", "heard", "switch", "seek", "loop"})


def _telemetry_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e9:
        return None
    return value


def _telemetry_event(event: Any, own: set[str]) -> dict[str, Any] | None:
    """The event as the listening page sends it (``t``, ``type``, ``stimulus``, ``pos``), or None.

    Only these four keys, a known type and finite numbers are stored: the page never sends more, and a
    script posting arbitrary keys or huge strings could otherwise grow one row by megabytes per request.
    """
    if not isinstance(event, dict) or event.get("type") not in TELEMETRY_TYPES:
        return None
    stimulus = event.get("stimulus")
    if stimulus is not None and stimulus not in own:
        return None
    t, pos = _telemetry_number(event.get("t")), _telemetry_number(event.get("pos", 0))
    if t is None or pos is None:
        return None
    return {"t": t, "type": event["type"], "stimulus": stimulus, "pos": pos}
