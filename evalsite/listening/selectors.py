"""Reads for listeners (the state of one participant's session, with opaque ids only) and for
researchers (progress; comparison answers with the presentation order undone)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Max, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest
from django.urls import reverse
from django.utils import timezone

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
from evalsite.listening.questionnaire import STAGE_NAMES, STAGES, TEXT, Questionnaire

COMPARISON_KINDS = (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB)
NO_PREFERENCE = "none"
# An AB rating is stored on sound B as B's standing relative to A.
AB_ANSWER_VALUES = {"A": -1.0, "B": 1.0, NO_PREFERENCE: 0.0}

# Telemetry events that show a sound was played: "play" starts playback, "heard" is sent by the
# listener page once a sound has played for about a second or to its end.
HEARD_REFERENCE = "ref"
QUALITY_CONTROL_ROLES = (Condition.Role.GOLD, Condition.Role.TRAPPING)
SCREENED_OUT_MESSAGE = "Thank you for your interest. Unfortunately you cannot take part in this test."

MUSHRA_SCALE = {
    "min": 0,
    "max": 100,
    "step": 1,
    "labels": [
        {"value": 90, "text": "Excellent"},
        {"value": 70, "text": "Good"},
        {"value": 50, "text": "Fair"},
        {"value": 30, "text": "Poor"},
        {"value": 10, "text": "Bad"},
    ],
}
ACR_SCALE = {
    "min": 1,
    "max": 5,
    "step": 1,
    "labels": [
        {"value": 5, "text": "Excellent"},
        {"value": 4, "text": "Good"},
        {"value": 3, "text": "Fair"},
        {"value": 2, "text": "Poor"},
        {"value": 1, "text": "Bad"},
    ],
}
SMOS_SCALE = {
    "min": 1,
    "max": 5,
    "step": 1,
    "labels": [
        {"value": 5, "text": "Definitely the same speaker"},
        {"value": 4, "text": "Probably the same speaker"},
        {"value": 3, "text": "Not sure"},
        {"value": 2, "text": "Probably a different speaker"},
        {"value": 1, "text": "Definitely a different speaker"},
    ],
}
CCR_SCALE = {
    "min": -3,
    "max": 3,
    "step": 1,
    "labels": [
        {"value": 3, "text": "Much better"},
        {"value": 2, "text": "Better"},
        {"value": 1, "text": "Slightly better"},
        {"value": 0, "text": "About the same"},
        {"value": -1, "text": "Slightly worse"},
        {"value": -2, "text": "Worse"},
        {"value": -3, "text": "Much worse"},
    ],
}
DEFAULT_INSTRUCTIONS = {
    ListeningTest.Kind.MUSHRA: (
        "Listen to the reference, then rate how each sound compares with it in basic audio quality on the "
        "0-100 scale. One of the sounds is the reference itself: at least one sound should be rated 100. "
        "You can switch between sounds at any time; only the slider of the sound you are hearing can be moved."
    ),
    ListeningTest.Kind.SMOS: (
        "Listen to the reference recording and to the sound. Rate how likely it is that they were spoken "
        "by the same person, whatever the words or the audio quality."
    ),
    ListeningTest.Kind.MOS: "Listen to the sound and rate its overall quality.",
    ListeningTest.Kind.CMOS: (
        "You will hear two versions of the same sound, A and B. Listen to both (you can switch between them "
        "at any time; playback continues at the same point), then rate the quality of B compared with the "
        "quality of A."
    ),
    ListeningTest.Kind.AB: (
        "You will hear two versions of the same sound, A and B. Listen to both (you can switch between them "
        "at any time; playback continues at the same point), then choose the one you prefer."
    ),
}
SCALES = {
    ListeningTest.Kind.MUSHRA: MUSHRA_SCALE,
    ListeningTest.Kind.SMOS: SMOS_SCALE,
    ListeningTest.Kind.MOS: ACR_SCALE,
    ListeningTest.Kind.CMOS: CCR_SCALE,
}


def scale_of(test: ListeningTest) -> dict[str, Any]:
    if test.kind == ListeningTest.Kind.AB:
        return {"no_preference": test.allow_no_preference}
    return SCALES[test.kind]


def _listener_answer(kind: str, score: float, handles: list[StimulusHandle]) -> float | str:
    """A stored score as the listener gave it: AB answers go back to the chosen sound's token."""
    if kind != ListeningTest.Kind.AB:
        return score
    if score > 0:
        return handles[1].token
    return handles[0].token if score < 0 else NO_PREFERENCE


def rating_answer(rating: Rating) -> float | str:
    """What the listener answered in ``rating`` (the echo of a saved answer)."""
    kind = rating.participant.test.kind
    handles = (
        list(StimulusHandle.objects.filter(assignment_id=rating.assignment_id).order_by("position"))
        if kind == ListeningTest.Kind.AB
        else []
    )
    return _listener_answer(kind, rating.score, handles)


def headphone_trials(participant: Participant) -> list[dict[str, Any]]:
    """The participant's headphone-check trials: opaque token, interval order and right answer.

    Server-side only; the listener gets the tokens' URLs, never the order or the answers. Tokens
    are HMACs of the participant's token, so they need no rows and cannot be guessed.
    """
    from django.utils.crypto import salted_hmac

    from evalsite.audio.headphone_check import correct_answer, trial_orders  # numpy + soundfile: on demand

    return [
        {
            "token": salted_hmac("evalsite.listening.headphone", f"{participant.token}:{i}").hexdigest()[:32],
            "order": order,
            "answer": correct_answer(order),
        }
        for i, order in enumerate(trial_orders(participant.seed))
    ]


def headphone_check_pending(participant: Participant) -> bool:
    """The headphone check (with its level calibration first) is still to be taken."""
    return participant.test.headphone_check and participant.headphone_passed is None


def questionnaire_pending(participant: Participant, stage: str) -> bool:
    """The test asks a ``stage`` ("pre"/"post") questionnaire the listener has not submitted yet."""
    return bool(participant.test.questionnaire.get(stage)) and stage not in participant.questionnaire


def calibration_pending(participant: Participant) -> bool:
    """The level calibration that opens the headphone check is still to be confirmed."""
    return headphone_check_pending(participant) and participant.calibrated_at is None


def audio_url(participant: Participant, handle_token: str) -> str:
    return reverse("listening:audio", args=[participant.token, handle_token])


def reference_url(participant: Participant, assignment: Assignment) -> str:
    # The open reference is addressed through the assignment's own token, so it needs no extra row
    # and is as unguessable and per-participant as the stimuli.
    return reverse("listening:reference-audio", args=[participant.token, assignment.token])


def _heard(assignment: Assignment, tokens) -> list[str]:
    """Sounds of a trial already heard (per its telemetry), so a reload need not replay them."""
    own = set(tokens)
    heard = {
        e.get("stimulus") for e in assignment.telemetry if isinstance(e, dict) and e.get("type") == "heard"
    }
    return sorted((own & heard) | ({HEARD_REFERENCE} if None in heard else set()))


def listener_progress(
    participant: Participant, steps: list[tuple[bool, bool]] | None = None
) -> dict[str, Any]:
    """Where the listener is: phase, resume position, completion and screened-out info.

    ``steps`` is ``(done, training)`` per assignment in the listener's order; without it one
    small query reads them (the complete endpoint's hot path needs nothing else).
    """
    test = participant.test
    if steps is None:
        steps = [
            (completed is not None, training)
            for completed, training in Assignment.objects.filter(participant=participant)
            .order_by("position")
            .values_list("completed_at", "trial__is_training")
        ]
    position = next((i for i, (done, _) in enumerate(steps) if not done), len(steps))
    done = position >= len(steps) or participant.status == Participant.Status.COMPLETED
    screened_out = participant.status == Participant.Status.SCREENED_OUT
    headphone = headphone_check_pending(participant) and not done
    # The pre-test questionnaire comes right after consent, the post-test one between the last trial and
    # the completion code (which it withholds, so it is not skipped on the way to the code).
    post = done and questionnaire_pending(participant, "post")
    phase = (
        "screened_out"
        if screened_out
        else "post_questionnaire"
        if post
        else "done"
        if done
        else "pre_questionnaire"
        if questionnaire_pending(participant, "pre")
        else ("calibration" if calibration_pending(participant) else "headphone")
        if headphone
        else "training"
        if steps[position][1]
        else "main"
    )
    done = done and not post
    return {
        "phase": phase,
        "position": position,
        "completion": (
            {"code": test.completion_code or None, "redirect": test.completion_redirect or None}
            if done and not screened_out
            else None
        ),
        "screened_out": (
            {"message": SCREENED_OUT_MESSAGE, "redirect": test.screened_out_redirect or None}
            if screened_out
            else None
        ),
    }


def listener_state(participant: Participant) -> dict[str, Any]:
    """Everything the listener page needs, in the listener's order, without any identifying label."""
    test = participant.test
    assignments = list(
        Assignment.objects.filter(participant=participant).select_related("trial").order_by("position")
    )
    handles: dict[int, list[StimulusHandle]] = {}
    for h in StimulusHandle.objects.filter(assignment__participant=participant).order_by("position"):
        handles.setdefault(h.assignment_id, []).append(h)
    ratings = {r.stimulus_id: r.score for r in Rating.objects.filter(participant=participant)}
    kind = test.kind
    flags: dict[int, list[ArtifactFlag]] = {}
    for f in ArtifactFlag.objects.filter(participant=participant).order_by("created_at"):
        flags.setdefault(f.assignment_id, []).append(f)
    trials = []
    for a in assignments:
        own = handles.get(a.pk, [])
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        token_of = {h.stimulus_id: h.token for h in own}
        trials.append(
            {
                "id": a.token,
                "training": a.trial.is_training,
                "done": a.completed_at is not None,
                "reference": {"url": reference_url(participant, a)} if a.trial.reference_id else None,
                "stimuli": [
                    {"id": h.token, "url": audio_url(participant, h.token), "label": letters[i]}
                    for i, h in enumerate(own)
                ],
                "ratings": {
                    token_of[sid]: _listener_answer(kind, score, own)
                    for sid, score in ratings.items()
                    if sid in token_of
                },
                "heard": _heard(a, token_of.values()) if test.require_play_all else [],
                "flags": [
                    {
                        "id": f.token,
                        "stimulus": token_of.get(f.stimulus_id),
                        "start": f.start_s,
                        "end": f.end_s,
                        "category": f.category,
                        "note": f.note,
                    }
                    for f in flags.get(a.pk, [])
                ],
            }
        )
    progress = listener_progress(participant, [(t["done"], t["training"]) for t in trials])
    return {
        "test": {
            "kind": test.kind,
            "title": test.title,
            "instructions": test.instructions or DEFAULT_INSTRUCTIONS[test.kind],
            "scale": scale_of(test),
            "require_play_all": test.require_play_all,
        },
        "phase": progress["phase"],
        "position": progress["position"],
        "trials": trials,
        "flag_categories": [{"value": v, "label": str(label)} for v, label in ArtifactFlag.Category.choices],
        "completion": progress["completion"],
        "calibration": (
            {"url": reverse("listening:calibration-audio", args=[participant.token])}
            if progress["phase"] == "calibration"
            else None
        ),
        "headphone_check": (
            {
                "trials": [
                    {
                        "id": t["token"],
                        "url": reverse("listening:headphone-audio", args=[participant.token, t["token"]]),
                    }
                    for t in headphone_trials(participant)
                ]
            }
            if progress["phase"] == "headphone"
            else None
        ),
        "screened_out": progress["screened_out"],
    }


def _require_kind(rating: Rating, kind: str) -> None:
    actual = rating.stimulus.condition.test.kind
    if actual != kind:
        raise ValueError(f"rating {rating.pk} belongs to a {actual} test, not {kind}")


def cmos_score(rating: Rating) -> float:
    """CMOS score of the system relative to the comparison, whichever order they were heard in.

    The rating is stored on sound B as "B relative to A"; when B was the comparison (the system
    came first, as A) the sign flips.
    """
    _require_kind(rating, ListeningTest.Kind.CMOS)
    if rating.stimulus.condition.role == Condition.Role.COMPARISON:
        return -rating.score or 0.0
    return rating.score


def ab_choice(rating: Rating) -> Stimulus | None:
    """The stimulus (hence condition) the listener preferred, or None for "no preference"."""
    _require_kind(rating, ListeningTest.Kind.AB)
    if rating.score == 0:
        return None
    if rating.score > 0:
        return rating.stimulus
    return (
        Stimulus.objects.select_related("condition")
        .exclude(pk=rating.stimulus_id)
        .get(trial_id=rating.stimulus.trial_id)
    )


def comparison_answers(
    test: ListeningTest, *, include_training: bool = False, completed_only: bool = False
) -> list[dict[str, Any]]:
    """CMOS/AB answers with the presentation order undone, one row per answered trial
    (``completed_only``: per completed trial, the votes the analysis counts).

    CMOS rows: ``system``, ``comparison``, ``system_first``, ``raw`` (B relative to A) and
    ``score`` (system relative to comparison). AB rows: ``a``, ``b`` (condition labels in the
    order heard), ``raw`` and ``preferred`` (a condition label, or None for no preference).
    """
    if test.kind not in COMPARISON_KINDS:
        raise ValueError(f"test {test.name!r} is {test.kind}, not a comparison test")
    ratings = Rating.objects.filter(participant__test=test).select_related(
        "assignment__trial__item", "stimulus__condition__test"
    )
    if not include_training:
        ratings = ratings.filter(is_training=False)
    if completed_only:
        ratings = ratings.filter(assignment__completed_at__isnull=False)
    first = {
        h.assignment_id: h.stimulus.condition
        for h in StimulusHandle.objects.filter(assignment__participant__test=test, position=0).select_related(
            "stimulus__condition"
        )
    }
    rows = []
    for r in ratings.order_by("participant_id", "assignment__position"):
        a, b = first[r.assignment_id], r.stimulus.condition
        row = {
            "participant": r.participant_id,
            "item": r.assignment.trial.item.key,
            "raw": r.score,
            "training": r.is_training,
        }
        if test.kind == ListeningTest.Kind.CMOS:
            system, versus = (a, b) if b.role == Condition.Role.COMPARISON else (b, a)
            row.update(
                system=system.label, comparison=versus.label, system_first=system is a, score=cmos_score(r)
            )
        else:
            row.update(
                a=a.label, b=b.label, preferred=b.label if r.score > 0 else a.label if r.score < 0 else None
            )
        rows.append(row)
    return rows


def participant_stimulus_asset(participant: Participant, handle_token: str):
    """The audio behind one of this participant's stimulus tokens, or None."""
    handle = (
        StimulusHandle.objects.select_related("stimulus__asset")
        .filter(assignment__participant=participant, token=handle_token)
        .first()
    )
    return handle.stimulus.asset if handle else None


def participant_reference_asset(participant: Participant, assignment_token: str):
    """The open reference of one of this participant's trials, or None."""
    assignment = (
        Assignment.objects.select_related("trial__reference")
        .filter(participant=participant, token=assignment_token)
        .first()
    )
    return assignment.trial.reference if assignment and assignment.trial.reference_id else None


def _latest(model: type[Rating | ArtifactFlag], field: str) -> Subquery:
    return Subquery(model.objects.filter(participant=OuterRef("pk")).order_by(f"-{field}").values(field)[:1])


def participants_with_activity(participants: QuerySet[Participant]) -> QuerySet[Participant]:
    """``participants`` annotated with ``last_activity``: their latest answer (rating, flag, finished
    trial) or change of their own row (consent, calibration, headphone check, finishing).

    Read from the timestamps the answers carry anyway, so listening writes nothing more for it.
    The ratings and flags are subqueries: joined, they would multiply the rows other annotations count.
    """
    own = F("updated_at")
    return participants.annotate(
        last_activity=Greatest(
            own,
            Coalesce(Max("assignments__completed_at"), own),
            Coalesce(_latest(Rating, "updated_at"), own),
            Coalesce(_latest(ArtifactFlag, "updated_at"), own),
        )
    )


def abandoned_before() -> datetime:
    """Active listeners with no activity since this moment count as abandoned (``EVALSITE_ABANDONED_AFTER_MIN``)."""
    return timezone.now() - timedelta(minutes=settings.EVALSITE_ABANDONED_AFTER_MIN)


def participant_abandoned(participant: Participant, since: datetime) -> bool:
    """Started, not finished, not screened out, and silent since ``since`` (needs ``last_activity``).

    A reading, not a status: a listener who comes back and answers is no longer abandoned.
    """
    return participant.status == Participant.Status.ACTIVE and participant.last_activity < since


def participants_abandoned(test: ListeningTest) -> int:
    """How many of the test's listeners are abandoned now (``participant_abandoned``)."""
    active = participants_with_activity(
        Participant.objects.filter(test=test, status=Participant.Status.ACTIVE)
    )
    return active.filter(last_activity__lt=abandoned_before()).count()


def listening_test_progress(test: ListeningTest) -> dict[str, Any]:
    """Valid votes per item × condition for the researcher's progress page, with the target and the listeners'
    states.

    A vote is an answer on a completed main trial of a listener not screened out: a half-rated trial is not
    one (the analysis reads the same rows, ``analysis.frames``). Unfinished sessions with no answer for
    ``EVALSITE_ABANDONED_AFTER_MIN`` are listed apart as abandoned (``participant_abandoned``).
    """
    conditions = list(
        Condition.objects.filter(test=test).exclude(role__in=QUALITY_CONTROL_ROLES).order_by("role", "label")
    )
    # A CMOS/AB answer is stored on one of the trial's two sounds but is a vote for both.
    votes = "trial__assignments__ratings" if test.kind in COMPARISON_KINDS else "ratings"
    valid = (
        Q(**{f"{votes}__is_training": False})
        & Q(**{f"{votes}__assignment__completed_at__isnull": False})
        & ~Q(**{f"{votes}__participant__status": Participant.Status.SCREENED_OUT})
    )
    counts = {}
    for row in (
        Stimulus.objects.filter(trial__test=test, trial__is_training=False, trial__control="")
        .annotate(votes=Count(votes, filter=valid))
        .values("trial__item__key", "condition_id", "votes")
    ):
        key = (row["trial__item__key"], row["condition_id"])
        counts[key] = counts.get(key, 0) + row["votes"]
    items = sorted({k for k, _ in counts})
    rows = [{"item": item, "cells": [counts.get((item, c.pk)) for c in conditions]} for item in items]
    participants = list(
        participants_with_activity(Participant.objects.filter(test=test))
        .annotate(
            done=Count("assignments", filter=Q(assignments__completed_at__isnull=False)),
            total=Count("assignments"),
        )
        .order_by("-created_at")
    )
    since = abandoned_before()
    for p in participants:
        p.abandoned = participant_abandoned(p, since)
    abandoned = [p for p in participants if p.abandoned]
    cell_votes = [v for v in counts.values()]
    return {
        "conditions": conditions,
        "rows": rows,
        "target": test.votes_target,
        "cells_at_target": sum(1 for v in cell_votes if v >= test.votes_target),
        "cells": len(cell_votes),
        "participants": [p for p in participants if not p.abandoned],
        "abandoned": abandoned,
        "abandoned_after_min": settings.EVALSITE_ABANDONED_AFTER_MIN,
        "trials": Trial.objects.filter(test=test, control="").count(),
        # Every trial built, by what it is for: the page says all three so its count matches the list's.
        "trial_counts": _trial_counts(test),
    }


def _trial_counts(test: ListeningTest) -> dict[str, int]:
    rows = Trial.objects.filter(test=test).values_list("is_training", "control")
    counts = {"main": 0, "training": 0, "control": 0}
    for is_training, control in rows:
        counts["control" if control else "training" if is_training else "main"] += 1
    counts["total"] = sum(counts.values())
    return counts


def control_value(
    expected: dict[str, Any], stimulus_id: int, score_of: dict[int, float], order: tuple[int, int] | None
) -> float | None:
    """The answer a control sound's ``expected`` range is about, or None when it was not given.

    ``score_of`` maps the participant's rated stimuli to their stored scores; ``order`` is the
    (A, B) stimulus ids of a CMOS/AB trial as this participant heard it (their answer is stored
    on B as B relative to A).
    """
    of = expected.get("of", Stimulus.Expected.SCORE)
    if of == Stimulus.Expected.SCORE:
        return score_of.get(stimulus_id)
    if order is None:
        return None
    raw = score_of.get(order[1])
    if raw is None or of == Stimulus.Expected.ANSWER:
        return raw
    return raw if stimulus_id == order[1] else (-raw or 0.0)


def quality_control_results(test: ListeningTest) -> dict[int, dict[str, dict[str, int]]]:
    """Per participant (by id): how many gold and trapping trials they were given and passed.

    A control trial is passed when every sound with an expected range (``Stimulus.expected``) got
    an answer in it (``control_value``); an unanswered one is not passed. Every test kind:
    ``{participant_id: {"gold": {"passed": n, "total": n}, "trapping": {...}}}``; participants
    given no control trial are left out.
    """
    controls = [Trial.Control.GOLD, Trial.Control.TRAPPING]
    expected: dict[int, list[tuple[int, dict]]] = {}
    for stimulus_id, trial_id, exp in Stimulus.objects.filter(
        trial__test=test, trial__control__in=controls, expected__isnull=False
    ).values_list("id", "trial_id", "expected"):
        expected.setdefault(trial_id, []).append((stimulus_id, exp))
    scores: dict[int, dict[int, float]] = {}
    for participant_id, stimulus_id, score in Rating.objects.filter(
        participant__test=test, assignment__trial__control__in=controls
    ).values_list("participant_id", "stimulus_id", "score"):
        scores.setdefault(participant_id, {})[stimulus_id] = score
    orders: dict[int, dict[int, int]] = {}
    if test.kind in COMPARISON_KINDS:
        for assignment_id, stimulus_id, position in StimulusHandle.objects.filter(
            assignment__participant__test=test, assignment__trial__control__in=controls
        ).values_list("assignment_id", "stimulus_id", "position"):
            orders.setdefault(assignment_id, {})[position] = stimulus_id
    results: dict[int, dict[str, dict[str, int]]] = {}
    for assignment_id, participant_id, trial_id, control in Assignment.objects.filter(
        participant__test=test, trial__control__in=controls
    ).values_list("id", "participant_id", "trial_id", "trial__control"):
        mine = results.setdefault(participant_id, {str(c): {"passed": 0, "total": 0} for c in controls})
        mine[control]["total"] += 1
        order = orders.get(assignment_id)
        order = (order[0], order[1]) if order and 0 in order and 1 in order else None
        values = [
            (control_value(exp, sid, scores.get(participant_id, {}), order), exp)
            for sid, exp in expected.get(trial_id, [])
        ]
        if values and all(v is not None and exp["min"] <= v <= exp["max"] for v, exp in values):
            mine[control]["passed"] += 1
    return results


def questionnaire_summary(test: ListeningTest, *, with_text: bool = False) -> list[dict[str, Any]]:
    """Per stage and question of the test's questionnaire: how many listeners submitted the page and, for a
    choice, how many picked each option (every option listed, zeros too). Free-text answers are only counted,
    unless ``with_text`` (the researcher asked to read them): listeners write names and addresses in boxes.
    """
    questionnaire = Questionnaire.from_stored(test.questionnaire)
    pages = {stage: [] for stage in STAGES}
    for answers in (
        Participant.objects.filter(test=test).order_by("pk").values_list("questionnaire", flat=True)
    ):
        for stage in STAGES:
            if stage in (answers or {}):
                pages[stage].append(answers[stage].get("answers", {}))
    summary = []
    for stage in STAGES:
        submitted = pages[stage]
        questions = []
        for q in questionnaire.stage(stage):
            given = [a[q.id] for a in submitted if a.get(q.id)]
            entry: dict[str, Any] = {"id": q.id, "label": q.label, "type": q.type, "answered": len(given)}
            entry["skipped"] = len(submitted) - len(given)
            if q.type == TEXT:
                entry["texts"] = given if with_text else None
            else:
                entry["options"] = [
                    {"value": value, "label": label, "count": given.count(value)}
                    for value, label in q.options
                ]
            questions.append(entry)
        if questions:
            summary.append(
                {
                    "stage": stage,
                    "title": STAGE_NAMES[stage],
                    "submitted": len(submitted),
                    "questions": questions,
                }
            )
    return summary
