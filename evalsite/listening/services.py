"""Writes for listening tests: build, publish, close; join, rate, flag, complete.

Cross-object rules raise ``ApplicationError`` (400), ``NotFoundError`` (404) or ``ConflictError``
(409) with a module-level message that the tests assert on. Listener-facing errors never reveal
system labels, checkpoints or roles.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    ListeningTest,
    Participant,
    Rating,
    Stimulus,
    StimulusHandle,
    Condition,
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
MIXED_EVAL_SETS = "the checkpoints' runs use different eval sets ({names}); pick checkpoints evaluated on one set."
MUSHRA_TOO_MANY = (
    "MUSHRA allows at most 12 signals per trial counting the hidden reference and the two anchors; "
    "{n} checkpoints + 3 = {total}."
)
NO_USABLE_ITEMS = "no eval item has output from every checkpoint{reference}; nothing to build a test from."
AB_NEEDS_TWO = "an AB preference test compares checkpoints in pairs; pick at least two checkpoints (got {n})."
COMPARISON_ONLY_CMOS = "a comparison checkpoint is only used by CMOS tests; this test is {kind}."
COMPARISON_IS_RATED = "the comparison checkpoint {label} is also one of the rated checkpoints; rate it against another."
NO_PREFERENCE_ONLY_AB = "'no preference' is an AB preference option; this test is {kind}."
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
CONTROL_TRIALS_ONLY_MOS = "gold and trapping trials are built for MOS (ACR) tests; this test is {kind}."
GOLD_BAD_RANGE = (1.0, 2.0)  # an obviously degraded clip: "Bad", with the P.808 toolkit's ±1 tolerance
GOLD_GOOD_RANGE = (4.0, 5.0)  # the reference recording: "Excellent", ±1
TRAP_PREFIX_S = 1.0
TRAP_TEXT = "This is an attention check. Please select the answer {label}."
HEADPHONE_CHECK_FIRST = "Please complete the headphone check first."
HEADPHONE_NOT_ASKED = "This test has no headphone check."
HEADPHONE_BAD_ANSWERS = "answers must be a list of {n} numbers, each 1, 2 or 3; got {answers!r}."


@dataclass
class BuildReport:
    warnings: list[str] = field(default_factory=list)


def _letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def _outputs_by_item(checkpoints: list[Checkpoint], params_hash: str | None) -> dict[int, dict[int, Generation]]:
    rows = Generation.objects.filter(checkpoint__in=checkpoints, status=Generation.Status.DONE).select_related("asset")
    if params_hash:
        rows = rows.filter(params_hash=params_hash)
    by_item: dict[int, dict[int, Generation]] = {}
    for g in rows.order_by("created_at"):
        by_item.setdefault(g.item_id, {})[g.checkpoint_id] = g  # latest wins
    return by_item


def _degraded(samples, rate: int):
    """An obviously bad version of a clip: hard-clipped at 5 % of its peak, back at the same peak."""
    import numpy as np

    peak = float(np.abs(samples).max()) or 1.0
    return np.clip(samples, -0.05 * peak, 0.05 * peak) / 0.05


def _trapping_samples(prefix, rate: int, label: str):
    """The first ``TRAP_PREFIX_S`` of a real clip, a short pause, then a spoken instruction (P.808 §6.3.8)."""
    import numpy as np

    from evalsite.audio.decoding import resample
    from evalsite.demo.speech import synthesize

    head = prefix[: int(TRAP_PREFIX_S * rate)]
    speech, speech_rate = synthesize(TRAP_TEXT.format(label=label), voice="en-us")
    speech = resample(speech, speech_rate, rate)
    level = float(np.sqrt(np.mean(head ** 2))) or 0.1
    speech = speech * min(level / (float(np.sqrt(np.mean(speech ** 2))) or 1.0), 0.9 / (np.abs(speech).max() or 1.0))
    channels = head.shape[1]
    pause = np.zeros((int(0.3 * rate), channels), dtype=np.float32)
    return np.concatenate([head, pause, np.repeat(speech[:, None], channels, axis=1)]).astype(np.float32)


def _control_trials(test: ListeningTest, usable: list[EvalItem], outputs, checkpoints, index: int,
                    gold_items: int, trapping_items: int) -> None:
    """Build the gold and trapping trials: ordinary-looking trials whose expected answer stays here."""
    from evalsite.audio.decoding import decoded_from_array
    from evalsite.audio.selectors import audio_asset_samples
    from evalsite.audio.services import audio_asset_store
    from evalsite.listening.selectors import ACR_SCALE

    rng = random.Random(f"{test.seed}:controls")
    conditions = {}
    for role in (Condition.Role.GOLD, Condition.Role.TRAPPING):
        if (gold_items if role == Condition.Role.GOLD else trapping_items):
            conditions[role] = Condition.objects.create(test=test, label=role.label, role=role)
    for n in range(gold_items):
        item = usable[n % len(usable)]
        if n % 2 == 1 and item.reference is not None:
            asset, expected = item.reference, GOLD_GOOD_RANGE
        else:
            samples, rate = audio_asset_samples(outputs[item.pk][checkpoints[n % len(checkpoints)].pk].asset)
            asset, _ = audio_asset_store(decoded=decoded_from_array(_degraded(samples, rate), rate),
                                         original_name="sound.wav")
            expected = GOLD_BAD_RANGE
        trial = Trial.objects.create(test=test, item=item, index=index, control=Trial.Control.GOLD,
                                     expected_min=expected[0], expected_max=expected[1])
        Stimulus.objects.create(trial=trial, condition=conditions[Condition.Role.GOLD], asset=asset)
        index += 1
    for n in range(trapping_items):
        item = usable[(gold_items + n) % len(usable)]
        label = rng.choice(ACR_SCALE["labels"])
        samples, rate = audio_asset_samples(outputs[item.pk][checkpoints[n % len(checkpoints)].pk].asset)
        asset, _ = audio_asset_store(decoded=decoded_from_array(_trapping_samples(samples, rate, label["text"]), rate),
                                     original_name="sound.wav")
        trial = Trial.objects.create(test=test, item=item, index=index, control=Trial.Control.TRAPPING,
                                     expected_min=label["value"], expected_max=label["value"])
        Stimulus.objects.create(trial=trial, condition=conditions[Condition.Role.TRAPPING], asset=asset)
        index += 1


def _anchor_assets(reference, rate_checked: dict[int, bool], warnings: list[str], item_key: str) -> dict[str, Any]:
    """Make (or find) the two anchors of a reference clip, after the filter self-test at its rate."""
    from evalsite.audio.anchors import anchor_effectiveness_warning, anchor_filter_self_test, lowpass_anchor
    from evalsite.audio.decoding import decoded_from_array
    from evalsite.audio.selectors import audio_asset_samples
    from evalsite.audio.services import audio_asset_store

    samples, rate = audio_asset_samples(reference)
    if rate not in rate_checked:
        result = anchor_filter_self_test(rate)
        if not result.passed:
            raise ApplicationError(ANCHOR_SELF_TEST_FAILED.format(rate=rate, failures="; ".join(result.failures)))
        rate_checked[rate] = True
    assets = {}
    for role, cutoff in ANCHOR_CUTOFFS.items():
        warning = anchor_effectiveness_warning(samples, rate, cutoff)
        if warning:
            warnings.append(f"item {item_key}: {warning}")
        anchor = lowpass_anchor(samples, rate, cutoff)
        assets[role], _ = audio_asset_store(decoded=decoded_from_array(anchor, rate),
                                            original_name=f"anchor-{int(cutoff)}.wav")
    return assets


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
    training trials.
    """
    if not checkpoints:
        raise ApplicationError(NO_CHECKPOINTS)
    if comparison is not None and kind != ListeningTest.Kind.CMOS:
        raise ApplicationError(COMPARISON_ONLY_CMOS.format(kind=kind))
    if allow_no_preference and kind != ListeningTest.Kind.AB:
        raise ApplicationError(NO_PREFERENCE_ONLY_AB.format(kind=kind))
    if (gold_items or trapping_items) and kind != ListeningTest.Kind.MOS:
        raise ApplicationError(CONTROL_TRIALS_ONLY_MOS.format(kind=kind))
    checkpoints = list(Checkpoint.objects.filter(pk__in=[c.pk for c in checkpoints]).select_related("run__eval_set")
                       .order_by("run__name", "step"))
    if comparison is not None:
        comparison = Checkpoint.objects.select_related("run__eval_set").get(pk=comparison.pk)
        if comparison.pk in {c.pk for c in checkpoints}:
            raise ApplicationError(COMPARISON_IS_RATED.format(label=f"{comparison.run.name}@{comparison.step}"))
    if kind == ListeningTest.Kind.AB and len(checkpoints) < 2:
        raise ApplicationError(AB_NEEDS_TWO.format(n=len(checkpoints)))
    sources = checkpoints + ([comparison] if comparison is not None else [])
    eval_sets = {c.run.eval_set_id for c in sources}
    if items is None:
        if len(eval_sets) != 1 or None in eval_sets:
            names = sorted({c.run.eval_set.name if c.run.eval_set else "none" for c in sources})
            raise ApplicationError(MIXED_EVAL_SETS.format(names=", ".join(names)))
        items = list(EvalItem.objects.filter(eval_set_id=eval_sets.pop()).select_related("reference").order_by("key"))
    if kind == ListeningTest.Kind.MUSHRA and len(checkpoints) + 3 > MUSHRA_MAX_SIGNALS:
        raise ApplicationError(MUSHRA_TOO_MANY.format(n=len(checkpoints), total=len(checkpoints) + 3))

    test = ListeningTest(
        name=name, kind=kind, seed=seed if seed is not None else secrets.randbits(31), votes_target=votes_target,
        trials_per_participant=trials_per_participant, title=title, instructions=instructions, owner=owner,
        completion_code=completion_code, completion_redirect=completion_redirect,
        screened_out_redirect=screened_out_redirect, allow_no_preference=allow_no_preference,
        require_play_all=require_play_all, headphone_check=headphone_check, gold_items=gold_items,
        trapping_items=trapping_items,
    )
    test.full_clean()
    test.save()
    conditions = {}
    for c in checkpoints:
        conditions[c.pk] = Condition.objects.create(test=test, label=f"{c.run.name}@{c.step}", role="system", checkpoint=c)
    if kind == ListeningTest.Kind.MUSHRA:
        for role in (Condition.Role.HIDDEN_REFERENCE, *ANCHOR_CUTOFFS):
            conditions[role] = Condition.objects.create(test=test, label=role.label, role=role)
    if kind == ListeningTest.Kind.CMOS:
        conditions[Condition.Role.COMPARISON] = Condition.objects.create(
            test=test, role=Condition.Role.COMPARISON, checkpoint=comparison,
            label=f"{comparison.run.name}@{comparison.step}" if comparison is not None else CMOS_REFERENCE_LABEL,
        )

    warnings: list[str] = []
    outputs = _outputs_by_item(sources, params_hash)
    needs_reference = kind in (ListeningTest.Kind.MUSHRA, ListeningTest.Kind.SMOS) or (
        kind == ListeningTest.Kind.CMOS and comparison is None)
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
        raise ApplicationError(NO_USABLE_ITEMS.format(reference=" and a reference" if needs_reference else ""))

    rate_checked: dict[int, bool] = {}
    index = 0
    for n, item in enumerate(usable):
        training = n < training_items
        have = outputs[item.pk]
        if kind == ListeningTest.Kind.MUSHRA:
            if item.reference.duration_s > MUSHRA_MAX_ITEM_S:
                warnings.append(f"item {item.key} is {item.reference.duration_s:.1f} s; BS.1534-3 asks for about 10 s "
                                f"at most (justify longer items in the report)")
            trial = Trial.objects.create(test=test, item=item, index=index, is_training=training,
                                         reference=item.reference)
            index += 1
            for c in checkpoints:
                Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
            Stimulus.objects.create(trial=trial, condition=conditions[Condition.Role.HIDDEN_REFERENCE], asset=item.reference)
            for role, asset in _anchor_assets(item.reference, rate_checked, warnings, item.key).items():
                Stimulus.objects.create(trial=trial, condition=conditions[role], asset=asset)
        elif kind == ListeningTest.Kind.CMOS:
            versus = have[comparison.pk].asset if comparison is not None else item.reference
            for c in checkpoints:
                trial = Trial.objects.create(test=test, item=item, index=index, is_training=training)
                index += 1
                Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
                Stimulus.objects.create(trial=trial, condition=conditions[Condition.Role.COMPARISON], asset=versus)
        elif kind == ListeningTest.Kind.AB:
            for first, second in itertools.combinations(checkpoints, 2):
                trial = Trial.objects.create(test=test, item=item, index=index, is_training=training)
                index += 1
                for c in (first, second):
                    Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
        else:
            for c in checkpoints:
                trial = Trial.objects.create(test=test, item=item, index=index, is_training=training,
                                             reference=item.reference if kind == ListeningTest.Kind.SMOS else None)
                index += 1
                Stimulus.objects.create(trial=trial, condition=conditions[c.pk], asset=have[c.pk].asset)
    if gold_items or trapping_items:
        _control_trials(test, usable, outputs, checkpoints, index, gold_items, trapping_items)
    test.build_warnings = warnings
    test.save(update_fields=["build_warnings", "updated_at"])
    return test


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
    """Votes each main trial has or will get: assignments of participants not screened out."""
    counts = (
        Trial.objects.filter(test=test, is_training=False, control=Trial.Control.NONE)
        .annotate(n=Count("assignments", filter=~Q(assignments__participant__status=Participant.Status.SCREENED_OUT)))
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


@transaction.atomic
def participant_join(
    *, test: ListeningTest, external_id: str = "", study_id: str = "", session_id: str = ""
) -> Participant:
    """Admit a listener (or return the same crowd worker's existing participant: resume)."""
    test = ListeningTest.objects.select_for_update().get(pk=test.pk)
    if test.status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(TEST_NOT_OPEN)
    external_id = external_id.strip()[:200]
    if external_id:
        existing = Participant.objects.filter(test=test, external_id=external_id).first()
        if existing is not None:
            return existing
    token = secrets.token_urlsafe(18)
    seed = random.Random(f"{test.seed}:{token}").getrandbits(31)
    rng = random.Random(seed)
    main = assignment_choose_trials(test, rng)
    participant = Participant.objects.create(
        test=test, token=token, external_id=external_id, study_id=study_id[:200], session_id=session_id[:200],
        seed=seed, consented_at=timezone.now(),
    )
    training = list(Trial.objects.filter(test=test, is_training=True).order_by("index").values_list("pk", flat=True))
    rng.shuffle(training)
    for control in (Trial.Control.GOLD, Trial.Control.TRAPPING):
        # One of each configured control, mixed into the main trials like any other.
        pool = list(Trial.objects.filter(test=test, control=control).order_by("index").values_list("pk", flat=True))
        if pool:
            main.append(rng.choice(pool))
    rng.shuffle(main)
    trials = {t.pk: t for t in Trial.objects.filter(pk__in=training + main).prefetch_related("stimuli")}
    # Two bulk inserts instead of one per trial: a join holds the test row lock, so it must be short.
    assignments = Assignment.objects.bulk_create(
        [Assignment(participant=participant, trial_id=trial_id, position=position)
         for position, trial_id in enumerate(training + main)]
    )
    handles = []
    for assignment in assignments:
        stimuli = list(trials[assignment.trial_id].stimuli.all())
        rng.shuffle(stimuli)
        handles += [StimulusHandle(assignment=assignment, stimulus=s, position=i) for i, s in enumerate(stimuli)]
    StimulusHandle.objects.bulk_create(handles)
    return participant


# ---------------------------------------------------------------------------------------------
# Headphone check


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
    valid = (isinstance(answers, list) and len(answers) == N_TRIALS
             and all(isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= 3 for a in answers))
    if not valid:
        raise ApplicationError(HEADPHONE_BAD_ANSWERS.format(n=N_TRIALS, answers=answers), extra={"field": "answers"})
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


def _open_assignment(participant: Participant, assignment_token: str) -> Assignment:
    if participant.test.status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(TEST_NOT_OPEN)
    if participant.status == Participant.Status.COMPLETED:
        raise ConflictError(PARTICIPANT_DONE)
    if participant.status == Participant.Status.SCREENED_OUT:
        raise ConflictError(SCREENED_OUT)
    if headphone_check_pending(participant):
        raise ConflictError(HEADPHONE_CHECK_FIRST)
    # Lock only the participant's own assignment row, not the trial every listener shares.
    assignment = (Assignment.objects.select_for_update(of=("self",)).select_related("trial")
                  .filter(participant=participant, token=str(assignment_token)).first())
    if assignment is None:
        raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
    return assignment


def _handle(assignment: Assignment, handle_token: str) -> StimulusHandle:
    handle = (StimulusHandle.objects.select_related("stimulus__asset")
              .filter(assignment=assignment, token=str(handle_token)).first())
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


def _comparison_handles(assignment: Assignment) -> tuple[StimulusHandle, StimulusHandle]:
    """Sounds A and B of a CMOS/AB trial, in this participant's presentation order."""
    a, b = StimulusHandle.objects.filter(assignment=assignment).order_by("position")
    return a, b


def _answer(test: ListeningTest, assignment: Assignment, handle: StimulusHandle, score: Any) -> float:
    """Validate an answer; comparisons are answered on sound B, as B relative to A."""
    if test.kind not in COMPARISON_KINDS:
        return validate_score(test.kind, score)
    a, b = _comparison_handles(assignment)
    if handle.pk != b.pk:
        raise ApplicationError(ANSWER_ON_B, extra={"field": "stimulus"})
    choices = None
    if test.kind == ListeningTest.Kind.AB:
        choices = {a.token: AB_ANSWER_VALUES["A"], b.token: AB_ANSWER_VALUES["B"]}
        if test.allow_no_preference:
            choices[NO_PREFERENCE] = AB_ANSWER_VALUES[NO_PREFERENCE]
    return validate_score(test.kind, score, choices=choices)


@transaction.atomic
def rating_submit(*, participant: Participant, trial: str, stimulus: str, score: Any, request_id: Any) -> Rating:
    """Save one rating the moment it is given.

    CMOS and AB answer the trial on its second sound (B): ``score`` is the CMOS answer (−3..3,
    B relative to A) or the AB choice (A's or B's stimulus token, or ``"none"``); see ``Rating``
    for what is stored. Idempotent: the same ``request_id`` again changes nothing, and a late
    retry of an older request never overwrites a newer answer (every request id is remembered).
    """
    request_id = _request_id(request_id)
    assignment = _open_assignment(participant, trial)
    handle = _handle(assignment, stimulus)
    value = _answer(participant.test, assignment, handle, score)
    if assignment.completed_at is not None:
        raise ConflictError(TRIAL_ALREADY_COMPLETED, extra={"field": "trial"})
    rating = Rating.objects.select_for_update().filter(participant=participant, stimulus=handle.stimulus).first()
    if rating is None:
        return Rating.objects.create(participant=participant, assignment=assignment, stimulus=handle.stimulus,
                                     score=value, request_id=request_id, history=[request_id],
                                     is_training=assignment.trial.is_training)
    if request_id in rating.history:
        return rating
    rating.score = value
    rating.request_id = request_id
    rating.history = [*rating.history, request_id]
    rating.save(update_fields=["score", "request_id", "history", "updated_at"])
    return rating


@transaction.atomic
def flag_submit(
    *, participant: Participant, trial: str, stimulus: str, start: Any, end: Any, category: Any, note: Any = "",
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
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end))
    if not numeric or not (0 <= start < end <= duration + 1e-3):
        raise ApplicationError(FLAG_BAD_REGION.format(duration=duration, start=start, end=end),
                               extra={"field": "start" if not numeric or start < 0 else "end"})
    if category not in ArtifactFlag.Category.values:
        raise ApplicationError(FLAG_BAD_CATEGORY.format(choices=", ".join(ArtifactFlag.Category.values),
                                                        category=category), extra={"field": "category"})
    try:
        with transaction.atomic():
            return ArtifactFlag.objects.create(
                participant=participant, assignment=assignment, stimulus=handle.stimulus, start_s=float(start),
                end_s=min(float(end), duration), category=category, note=str(note or "")[:1000], request_id=request_id,
            )
    except IntegrityError:
        return ArtifactFlag.objects.get(participant=participant, request_id=request_id)


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
    assignment = _open_assignment(participant, trial)
    if assignment.completed_at is None:
        rated = set(Rating.objects.filter(assignment=assignment).values_list("stimulus_id", flat=True))
        if participant.test.kind in COMPARISON_KINDS:
            if not rated:
                raise ApplicationError(ANSWER_FIRST, extra={"field": "trial"})
        else:
            missing = [h for h in assignment.handles.all() if h.stimulus_id not in rated]
            if missing:
                raise ApplicationError(RATE_ALL_FIRST.format(missing=len(missing)), extra={"field": "trial"})
        if participant.test.require_play_all:
            played = {e.get("stimulus") for e in assignment.telemetry if e.get("type") in PLAY_EVENT_TYPES}
            unplayed = [h for h in assignment.handles.all() if h.token not in played]
            if unplayed:
                raise ApplicationError(PLAY_ALL_FIRST.format(missing=len(unplayed)), extra={"field": "trial"})
        assignment.completed_at = timezone.now()
        assignment.save(update_fields=["completed_at", "updated_at"])
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
    assignment = Assignment.objects.select_for_update().filter(participant=participant, token=str(trial)).first()
    if assignment is None:
        raise NotFoundError(UNKNOWN_TRIAL, extra={"field": "trial"})
    if not isinstance(events, list):
        raise ApplicationError("events must be a list", extra={"field": "events"})
    own = set(assignment.handles.values_list("token", flat=True))
    clean = [e for e in events[:2000] if isinstance(e, dict) and (e.get("stimulus") is None or e.get("stimulus") in own)]
    Assignment.objects.filter(pk=assignment.pk).update(telemetry=(assignment.telemetry + clean)[-5000:])
    if isinstance(device, dict):
        Participant.objects.filter(pk=participant.pk).update(device={k: device[k] for k in list(device)[:20]})
