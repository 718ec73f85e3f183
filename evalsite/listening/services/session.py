"""A listener's session: joining a test (the assignment engine), level calibration, headphone check."""

from __future__ import annotations

import random
import secrets
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from evalsite.audio.headphone_check import N_TRIALS, PASS_CORRECT
from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.listening.calibration import CALIBRATION_S, calibration_level
from evalsite.listening.models import (
    Assignment,
    Condition,
    ListeningTest,
    Participant,
    Stimulus,
    StimulusHandle,
    Trial,
)
from evalsite.listening.selectors import (
    SCREENED_OUT_MESSAGE,
    headphone_trials,
)
from evalsite.listening.services.heard import CALIBRATION_SOUND, unheard_sounds

TEST_NOT_OPEN = "This test is not open for listening."
TEST_FULL = "This test has all the votes it needs. Thank you for your interest."
PARTICIPANT_DONE = "You have already finished this test."
SCREENED_OUT = SCREENED_OUT_MESSAGE
HEADPHONE_CHECK_FIRST = "Please complete the headphone check first."
CALIBRATE_FIRST = "Please set your volume with the calibration sound first."
CALIBRATION_NOT_ASKED = "This test has no level calibration (it comes with the headphone check)."
CALIBRATION_PLAY_FIRST = (
    "plays must be a whole number from 1 (play the calibration sound before confirming); got {plays!r}."
)
CALIBRATION_MAX_PLAYS = 10_000
CALIBRATION_NOT_HEARD = (
    "Please play the calibration sound (it lasts {seconds:g} s) and set your volume before confirming."
)
CROWD_ID_IN_USE = (
    "This participant ID has already started this test in another browser. Please continue in "
    "the browser where you started; if you cannot, contact the researcher."
)
HEADPHONE_NOT_ASKED = "This test has no headphone check."
HEADPHONE_BAD_ANSWERS = "answers must be a list of {n} numbers, each 1, 2 or 3; got {answers!r}."


# Assignment engine

ITEM_LOOKAHEAD = 64  # least-covered trials of a system looked through for an item new to the listener


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


def trial_systems(test: ListeningTest) -> dict[int, tuple[int, ...]]:
    """The rated systems each main trial holds, as sorted condition ids: one for MOS, SMOS and CMOS
    (whose comparison is no system), a pair for AB, all of them for MUSHRA."""
    systems: dict[int, list[int]] = {
        pk: []
        for pk in Trial.objects.filter(test=test, is_training=False, control=Trial.Control.NONE).values_list(
            "pk", flat=True
        )
    }
    for trial_id, condition_id in Stimulus.objects.filter(
        trial_id__in=systems, condition__role=Condition.Role.SYSTEM
    ).values_list("trial_id", "condition_id"):
        systems[trial_id].append(condition_id)
    return {pk: tuple(sorted(ids)) for pk, ids in systems.items()}


def balanced_pick(
    *,
    coverage: dict[int, int],
    systems: dict[int, Hashable],
    items: dict[int, int],
    want: int,
    rng: random.Random,
) -> list[int]:
    """``want`` trials for one listener in which every system (``systems``: trial -> what it rates)
    occurs equally often, or within one where ``want`` is no multiple of their number.

    A Latin-square rotation by counting: each system's share goes to its least-covered trials first,
    and among those to items the listener has not met yet (ties by ``rng``), so over listeners every
    trial fills evenly and a listener hears each system on different items. The systems that get the
    extra trial of an uneven share are the least covered ones, so those extras rotate too. Where a
    system has too few trials for its share, the rest are topped up by coverage alone.
    """
    want = min(want, len(coverage))
    tie = {pk: rng.random() for pk in coverage}
    groups: dict[Hashable, list[int]] = {}
    for pk in coverage:
        groups.setdefault(systems.get(pk, ()), []).append(pk)
    keys = sorted(
        groups, key=lambda k: (sum(coverage[pk] for pk in groups[k]) / len(groups[k]), rng.random())
    )
    base, extra = divmod(want, len(keys)) if keys else (0, 0)
    quota = {k: base + (i < extra) for i, k in enumerate(keys)}
    chosen: dict[int, None] = {}  # insertion-ordered set
    seen_items: set[int | None] = set()
    queues = {k: sorted(groups[k], key=lambda pk: (coverage[pk], tie[pk])) for k in keys}
    heads = dict.fromkeys(keys, 0)  # each queue's first trial not chosen yet

    def next_of(key: Hashable) -> int | None:
        queue, head = queues[key], heads[key]
        while head < len(queue) and queue[head] in chosen:
            head += 1
        heads[key] = head
        if head == len(queue):
            return None
        # Among the least-covered, the first on an item the listener has not met (looking a bounded
        # way ahead: joins run under the test's lock, and the item preference is only a preference).
        least = coverage[queue[head]]
        for pk in queue[head : head + ITEM_LOOKAHEAD]:
            if coverage[pk] > least:
                break
            if pk not in chosen and items.get(pk) not in seen_items:
                return pk
        return queue[head]

    while len(chosen) < want:
        progressed = False
        for key in keys:
            pk = next_of(key) if quota[key] > 0 else None
            if pk is None:
                continue
            chosen[pk] = None
            seen_items.add(items.get(pk))
            quota[key] -= 1
            progressed = True
            if len(chosen) == want:
                break
        if not progressed:
            break
    order = sorted(coverage, key=lambda pk: (coverage[pk], tie[pk]))
    topped_up = [pk for pk in order if pk not in chosen][: want - len(chosen)]
    return [*chosen, *topped_up]


def assignment_choose_trials(
    test: ListeningTest,
    rng: random.Random,
    systems: dict[int, tuple[int, ...]] | None = None,
    items: dict[int, int] | None = None,
) -> list[int]:
    """The main trials for a new participant: balanced over the systems (``balanced_pick``), least-covered
    first, ties broken by ``rng``. ``systems`` / ``items`` (trial -> systems, trial -> item) are read
    when not given.

    Votes of screened-out participants do not count, so the engine tops up behind them.
    Raises ``ConflictError(TEST_FULL)`` when every trial already has ``votes_target`` votes.
    """
    coverage = trial_coverage(test)
    open_trials = [pk for pk, n in coverage.items() if n < test.votes_target]
    if not open_trials:
        raise ConflictError(TEST_FULL)
    if systems is None:
        systems = trial_systems(test)
    if items is None:
        items = dict(Trial.objects.filter(pk__in=coverage).values_list("pk", "item_id"))
    want = test.trials_per_participant or len(coverage)
    return balanced_pick(coverage=coverage, systems=systems, items=items, want=want, rng=rng)


@dataclass(frozen=True)
class _JoinLayout:
    """The trials of a published test as a join needs them (they no longer change once published)."""

    training: list[int]
    controls: dict[str, list[int]]
    stimuli: dict[int, list[int]]  # trial id -> stimulus ids, in id order
    systems: dict[int, tuple[int, ...]]  # main trial id -> the systems it rates
    items: dict[int, int]  # trial id -> eval item id


def _join_layout(test: ListeningTest) -> _JoinLayout:
    training, controls, stimuli, items = [], {Trial.Control.GOLD: [], Trial.Control.TRAPPING: []}, {}, {}
    for trial_id, is_training, control, item_id in (
        Trial.objects.filter(test=test)
        .order_by("index")
        .values_list("pk", "is_training", "control", "item_id")
    ):
        stimuli[trial_id], items[trial_id] = [], item_id
        if is_training:
            training.append(trial_id)
        elif control:
            controls[control].append(trial_id)
    for trial_id, stimulus_id in (
        Stimulus.objects.filter(trial__test=test).order_by("pk").values_list("trial_id", "pk")
    ):
        stimuli[trial_id].append(stimulus_id)
    return _JoinLayout(training, controls, stimuli, trial_systems(test), items)


class CrowdIdInUse(ConflictError):
    """Another browser already joined the test with this crowd id (409, ``CROWD_ID_IN_USE``)."""


def _crowd_id(external_id: str) -> str:
    return external_id.strip()[:200]


def participant_returning(
    *, test: ListeningTest, resume_token: str | None, external_id: str = ""
) -> Participant | None:
    """The participant a browser joined ``test`` as (``resume_token``: the token its signed cookie
    binds to this test), whatever their status; None when it has none, or when the link names
    another crowd id than theirs (another worker at the same computer is another person).

    A read: the invite page uses it to skip the consent form for a returning listener.
    """
    if not resume_token:
        return None
    own = Participant.objects.select_related("test").filter(test=test, token=resume_token).first()
    external_id = _crowd_id(external_id)
    if own is None or (external_id and own.external_id != external_id):
        return None
    return own


def participant_join(
    *,
    test: ListeningTest,
    external_id: str = "",
    study_id: str = "",
    session_id: str = "",
    resume_token: str | None = None,
) -> Participant:
    """Admit a listener, or resume the participant this browser already joined the test as.

    ``resume_token`` is the participant token that the browser's signed cookie binds to this test;
    its participant comes back as it is (finished and screened-out ones too, so they are shown
    their end page rather than the test again), unless the link names another crowd id.

    A crowd id (``PROLIFIC_PID``) is no secret: it travels in URLs and anyone may type one. So a
    returning worker gets their participant back only through that cookie; any other browser
    presenting the id is refused with ``CrowdIdInUse``, and the existing session, its answers
    included, stays untouched.

    Joins take the test's row lock in turn (the assignment engine balances on what earlier joins
    were given), so everything that does not depend on it is read before taking it.
    """
    external_id = _crowd_id(external_id)
    layout = _join_layout(test)
    with transaction.atomic():
        test = ListeningTest.objects.select_for_update().get(pk=test.pk)
        if test.status != ListeningTest.Status.PUBLISHED:
            raise ConflictError(TEST_NOT_OPEN)
        returning = participant_returning(test=test, resume_token=resume_token, external_id=external_id)
        if returning is not None:
            return returning
        if external_id and Participant.objects.filter(test=test, external_id=external_id).exists():
            raise CrowdIdInUse(CROWD_ID_IN_USE, fields=("PROLIFIC_PID",))
        token = secrets.token_urlsafe(18)
        seed = random.Random(f"{test.seed}:{token}").getrandbits(31)
        rng = random.Random(seed)
        main = assignment_choose_trials(test, rng, layout.systems, layout.items)
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


@transaction.atomic
def calibration_confirm(*, participant: Participant, plays: Any) -> Participant:
    """Record that the listener set their volume with the calibration noise (before the headphone check).

    Confirmed once: a repeated confirmation (a retried request) returns the participant unchanged.
    """
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
        raise ApplicationError(CALIBRATION_PLAY_FIRST.format(plays=plays), fields=("plays",))
    # ``plays`` is the page's own count, kept as detail; whether the noise was heard is decided from
    # what the server sent (``services.heard``).
    if unheard_sounds(participant_id=participant.pk, sounds={CALIBRATION_SOUND: "calibration"}):
        raise ApplicationError(CALIBRATION_NOT_HEARD.format(seconds=CALIBRATION_S))
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
        raise ApplicationError(HEADPHONE_BAD_ANSWERS.format(n=N_TRIALS, answers=answers), fields=("answers",))
    correct = sum(a == t["answer"] for a, t in zip(answers, headphone_trials(participant)))
    participant.headphone_answers = answers
    participant.headphone_passed = correct >= PASS_CORRECT
    fields = ["headphone_answers", "headphone_passed", "updated_at"]
    if not participant.headphone_passed:
        participant.status = Participant.Status.SCREENED_OUT
        fields.append("status")
    participant.save(update_fields=fields)
    return participant
