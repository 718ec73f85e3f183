"""A listener's answers: ratings (the hot path of a test under load), artifact flags, finishing a
trial, playback telemetry."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, transaction
from django.utils import timezone

from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    ListeningTest,
    Participant,
    Rating,
    StimulusHandle,
    Trial,
)
from evalsite.listening.selectors import (
    AB_ANSWER_VALUES,
    COMPARISON_KINDS,
    NO_PREFERENCE,
    headphone_check_pending,
    questionnaire_pending,
)
from evalsite.listening.services.heard import reference_sound, unheard_sounds
from evalsite.listening.services.questionnaire import PRE_QUESTIONNAIRE_FIRST
from evalsite.listening.services.session import (
    HEADPHONE_CHECK_FIRST,
    PARTICIPANT_DONE,
    SCREENED_OUT,
    TEST_NOT_OPEN,
)

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
UNKNOWN_PARTICIPANT = "This listening session belongs to another browser. Open your invitation link again."
PLAY_ALL_FIRST = "Please listen to every sound before continuing; not heard yet: {missing}."
SOUND_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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
        raise NotFoundError(UNKNOWN_TRIAL, fields=("trial",))
    return assignment


def _handle(assignment: Assignment, handle_token: str) -> StimulusHandle:
    handle = (
        StimulusHandle.objects.select_related("stimulus__asset")
        .filter(assignment=assignment, token=str(handle_token))
        .first()
    )
    if handle is None:
        raise NotFoundError(UNKNOWN_STIMULUS, fields=("stimulus",))
    return handle


def _request_id(request_id: Any) -> str:
    if not isinstance(request_id, str) or not request_id or len(request_id) > 64:
        raise ApplicationError(REQUEST_ID_REQUIRED, fields=("request_id",))
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
        raise ApplicationError(SCORE_OUT_OF_RANGE.format(rule=rule, score=score), fields=("score",))
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


def _check_target_open(target: _RatingTarget | None) -> None:
    """The same state checks, in the same order, as ``_check_open`` makes for every other answer."""
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


def _ab_choices(target: _RatingTarget) -> dict[str, float]:
    """AB answers by what the listener sends: sound A's or B's token, or "none" where allowed."""
    choices = {target.a_token: AB_ANSWER_VALUES["A"], target.b_token: AB_ANSWER_VALUES["B"]}
    if target.allow_no_preference:
        choices[NO_PREFERENCE] = AB_ANSWER_VALUES[NO_PREFERENCE]
    return choices


def _checked_value(target: _RatingTarget | None, score: Any) -> float:
    """The value to store, after the same checks in the same order as every other answer."""
    _check_target_open(target)
    if target.assignment_id is None:
        raise NotFoundError(UNKNOWN_TRIAL, fields=("trial",))
    if target.handle_id is None:
        raise NotFoundError(UNKNOWN_STIMULUS, fields=("stimulus",))
    choices = None
    if target.kind in COMPARISON_KINDS:
        # Comparisons are answered on sound B, as B relative to A.
        if target.handle_id != target.b_handle_id:
            raise ApplicationError(ANSWER_ON_B, fields=("stimulus",))
        if target.kind == ListeningTest.Kind.AB:
            choices = _ab_choices(target)
    value = validate_score(target.kind, score, choices=choices)
    if target.completed:
        raise ConflictError(TRIAL_ALREADY_COMPLETED, fields=("trial",))
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
        raise NotFoundError(UNKNOWN_TRIAL, fields=("trial",))
    if stored[0] is not None:
        raise ConflictError(TRIAL_ALREADY_COMPLETED, fields=("trial",))
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
        raise ConflictError(TRIAL_ALREADY_COMPLETED, fields=("trial",))
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
        raise ConflictError(TRIAL_ALREADY_COMPLETED, fields=("trial",))
    duration = handle.stimulus.asset.duration_s
    numeric = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)
    )
    if not numeric or not (0 <= start < end <= duration + 1e-3):
        raise ApplicationError(
            FLAG_BAD_REGION.format(duration=duration, start=start, end=end),
            fields=("start" if not numeric or start < 0 else "end",),
        )
    if category not in ArtifactFlag.Category.values:
        raise ApplicationError(
            FLAG_BAD_CATEGORY.format(choices=", ".join(ArtifactFlag.Category.values), category=category),
            fields=("category",),
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
_TRIAL_SQL = (
    "SELECT a.id, a.completed_at, a.trial_id FROM {assignment} a WHERE a.participant_id = %s AND a.token = %s"
)
_UNRATED_SQL = """
SELECT COUNT(*), COUNT(*) - COUNT(r.id)
FROM {handle} h LEFT JOIN {rating} r ON r.participant_id = %s AND r.stimulus_id = h.stimulus_id
WHERE h.assignment_id = %s
"""


def _check_answered(kind: str, sounds: int, unrated: int) -> None:
    if kind in COMPARISON_KINDS:
        if unrated == sounds:
            raise ApplicationError(ANSWER_FIRST, fields=("trial",))
    elif unrated:
        raise ApplicationError(RATE_ALL_FIRST.format(missing=unrated), fields=("trial",))


def _check_heard(participant: Participant, assignment_id: int, trial_id: int, assignment_token: str) -> None:
    """Every sound of the trial and its reference was heard (``require_play_all``), by the evidence
    the server holds (``services.heard``): telemetry play events do not count."""
    sounds = {}
    if Trial.objects.filter(pk=trial_id, reference__isnull=False).exists():
        sounds[reference_sound(assignment_token)] = "Reference"
    handles = StimulusHandle.objects.filter(assignment_id=assignment_id).order_by("position")
    for token, position in handles.values_list("token", "position"):
        sounds[token] = f"Sample {SOUND_LETTERS[position]}"
    unheard = unheard_sounds(participant_id=participant.pk, sounds=sounds)
    if unheard:
        raise ApplicationError(PLAY_ALL_FIRST.format(missing=", ".join(unheard)), fields=("trial",))


@transaction.atomic
def trial_complete(*, participant: Participant, trial: str) -> Participant:
    """Finish a trial once every sound in it is rated (a CMOS/AB trial: once it is answered);
    finishing the last one completes the test.

    Idempotent: finishing a finished trial (a retried request) just returns the participant.
    """
    if participant.status == Participant.Status.COMPLETED:
        if not Assignment.objects.filter(participant=participant, token=str(trial)).exists():
            raise NotFoundError(UNKNOWN_TRIAL, fields=("trial",))
        return participant
    _check_open(participant)
    if questionnaire_pending(participant, "pre"):
        # Checked here, not on each rating (the hot path): no trial is finished before the pre-test page.
        raise ConflictError(PRE_QUESTIONNAIRE_FIRST)
    play_all = participant.test.require_play_all
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(
            _TRIAL_SQL.format(assignment=_table(Assignment)) + lock,
            [participant.pk, str(trial)],
        )
        row = cursor.fetchone()
        if row is None:
            raise NotFoundError(UNKNOWN_TRIAL, fields=("trial",))
        assignment_id, completed_at, trial_id = row
        if completed_at is None:
            cursor.execute(
                _UNRATED_SQL.format(handle=_table(StimulusHandle), rating=_table(Rating)),
                [participant.pk, assignment_id],
            )
            sounds, unrated = cursor.fetchone()
    if completed_at is None:
        _check_answered(participant.test.kind, sounds, unrated)
        if play_all:
            _check_heard(participant, assignment_id, trial_id, str(trial))
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

    Only events about the reference (``stimulus`` null) or one of this trial's own sounds are kept.
    They are detail for screening: whether a sound was heard is decided from what the server sent
    (``services.heard``), never from these events.
    """
    assignment = (
        Assignment.objects.select_for_update().filter(participant=participant, token=str(trial)).first()
    )
    if assignment is None:
        raise NotFoundError(UNKNOWN_TRIAL, fields=("trial",))
    if not isinstance(events, list):
        raise ApplicationError("events must be a list", fields=("events",))
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
