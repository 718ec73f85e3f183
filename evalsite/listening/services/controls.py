"""Gold and trapping trials (quality controls) and the sounds they are made of.

A control sound takes the place of a checkpoint's output and is fitted to it (rate, channels, length,
level), so nothing but listening tells a control trial apart.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from evalsite.audio.decoding import decoded_from_array, resample
from evalsite.audio.selectors import audio_asset_samples
from evalsite.audio.services import audio_asset_store
from evalsite.audio.speech import synthesize
from evalsite.core.exceptions import ApplicationError
from evalsite.listening.calibration import MAX_PEAK, active_level_dbfs
from evalsite.listening.models import (
    Condition,
    ListeningTest,
    Stimulus,
    Trial,
)
from evalsite.listening.selectors import (
    AB_ANSWER_VALUES,
    ACR_SCALE,
    CCR_SCALE,
    SMOS_SCALE,
)
from evalsite.runs.models import Checkpoint, EvalItem, Generation

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


def _degraded(samples, rate: int):
    """An obviously bad version of a clip: hard-clipped at 5 % of its peak, at the clip's level
    (clipping raises the level a lot; a louder sound would give the control trial away)."""
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
    Returns the samples and the phrasing spoken.

    Raises ``ApplicationError(TRAP_ITEM_TOO_SHORT)`` when not even the shortest phrasing fits.
    """
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
    return _at_level(out, rate, level), text


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
        asset, _ = audio_asset_store(decoded=decoded_from_array(samples, rate), original_name="sound.wav")
        return asset

    def degraded(self, asset, like=None):
        """``asset`` clipped (``_degraded``), fitted to ``like`` where that is another sound."""
        samples, rate = audio_asset_samples(asset)
        bad = _degraded(samples, rate)
        if like is not None and like.pk != asset.pk:
            return self.store(_fitted(bad, rate, *audio_asset_samples(like)), like.sample_rate)
        return self.store(bad, rate)

    def fitted(self, asset, like):
        """``asset`` standing in for ``like``: itself when it already matches, else a fitted copy."""
        samples, rate = audio_asset_samples(asset)
        target, target_rate = audio_asset_samples(like)
        if rate == target_rate and samples.shape == target.shape:
            level, wanted = active_level_dbfs(samples, rate), active_level_dbfs(target, rate)
            if level is None or wanted is None or abs(level - wanted) <= CONTROL_LEVEL_TOLERANCE_DB:
                return asset
        return self.store(_fitted(samples, rate, target, target_rate), target_rate)

    def trap(self, asset, texts: tuple[str, ...], item: EvalItem):
        """The trapping sound made from ``asset`` and the request it speaks."""
        samples, rate = audio_asset_samples(asset)
        trapped, text = _trapping_samples(samples, rate, texts, item.key)
        return self.store(trapped, rate), text

    def trial(
        self,
        control: str,
        item: EvalItem,
        index: int,
        sounds: list[tuple[str, Any, dict | None]],
        reference=None,
        instruction: str = "",
    ) -> Trial:
        """One control trial; ``sounds`` are (what, asset, expected) in build order; ``instruction``:
        the request spoken in the first sound (trapping)."""
        trial = Trial.objects.create(
            test=self.test, item=item, index=index, control=control, reference=reference
        )
        Stimulus.objects.bulk_create(
            [
                Stimulus(
                    trial=trial,
                    condition=self.condition(control, what),
                    asset=asset,
                    expected=expected,
                    instruction=instruction if i == 0 else "",
                )
                for i, (what, asset, expected) in enumerate(sounds)
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
        others = [i for i in self.usable if item.speaker and i.speaker and i.speaker != item.speaker]
        if others:
            return "other speaker", self.fitted(others[self.rng.randrange(len(others))].reference, slot)
        samples, rate = audio_asset_samples(item.reference)
        return "shifted voice", self.store(
            _fitted(_other_voice(samples, rate), rate, *audio_asset_samples(slot)), slot.sample_rate
        )

    # --- trapping ----------------------------------------------------------------------------

    def trapping(self, n: int, item: EvalItem, index: int) -> Trial:
        kind, trapping = self.test.kind, Trial.Control.TRAPPING
        checkpoint = self.checkpoints[n % len(self.checkpoints)]
        source = self.output(item, checkpoint)
        what = f"instruction over {checkpoint.run.name}@{checkpoint.step}"
        if kind in (ListeningTest.Kind.MOS, ListeningTest.Kind.SMOS):
            label = self.rng.choice((ACR_SCALE if kind == ListeningTest.Kind.MOS else SMOS_SCALE)["labels"])
            asset, said = self.trap(source, tuple(t.format(label=label["text"]) for t in TRAP_TEXT), item)
            reference = item.reference if kind == ListeningTest.Kind.SMOS else None
            return self.trial(
                trapping,
                item,
                index,
                [(what, asset, _expect(label["value"], label["value"]))],
                reference,
                instruction=said,
            )
        if kind == ListeningTest.Kind.MUSHRA:
            value = self.rng.choice(MUSHRA_TRAP_VALUES)
            asset, said = self.trap(source, tuple(t.format(value=value) for t in MUSHRA_TRAP_TEXT), item)
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
            return self.trial(trapping, item, index, sounds, item.reference, instruction=said)
        if kind == ListeningTest.Kind.CMOS:
            label = self.rng.choice(CCR_SCALE["labels"])
            asset, said = self.trap(source, tuple(t.format(label=label["text"]) for t in TRAP_TEXT), item)
            versus = item.reference if self.comparison is None else self.output(item, self.comparison)
            expected = _expect(label["value"], label["value"], of=Stimulus.Expected.ANSWER)
            return self.trial(
                trapping,
                item,
                index,
                [(what, asset, expected), ("comparison", versus, None)],
                instruction=said,
            )

        letter = self.rng.choice(("A", "B"))
        asset, said = self.trap(source, tuple(t.format(label=letter) for t in AB_TRAP_TEXT), item)
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
            instruction=said,
        )


def control_trials_build(
    *,
    test: ListeningTest,
    checkpoints: list[Checkpoint],
    outputs: dict[int, dict[int, Generation]],
    anchors: dict[int, dict],
    comparison: Checkpoint | None,
    usable: list[EvalItem],
    index: int,
) -> None:
    """Build the test's gold and trapping trials after the ordinary ones (from ``index`` on), cycling
    through the usable items."""
    builder = _ControlBuilder(test, checkpoints, outputs, anchors, comparison, usable)
    for n in range(test.gold_items):
        builder.gold(n, usable[n % len(usable)], index)
        index += 1
    for n in range(test.trapping_items):
        builder.trapping(n, usable[(test.gold_items + n) % len(usable)], index)
        index += 1
