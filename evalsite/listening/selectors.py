"""Reads for listeners: the state of one participant's session, with opaque ids only."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from evalsite.listening.models import ArtifactFlag, Assignment, ListeningTest, Participant, Rating, StimulusHandle

MUSHRA_SCALE = {
    "min": 0, "max": 100, "step": 1,
    "labels": [{"value": 90, "text": "Excellent"}, {"value": 70, "text": "Good"}, {"value": 50, "text": "Fair"},
               {"value": 30, "text": "Poor"}, {"value": 10, "text": "Bad"}],
}
ACR_SCALE = {
    "min": 1, "max": 5, "step": 1,
    "labels": [{"value": 5, "text": "Excellent"}, {"value": 4, "text": "Good"}, {"value": 3, "text": "Fair"},
               {"value": 2, "text": "Poor"}, {"value": 1, "text": "Bad"}],
}
SMOS_SCALE = {
    "min": 1, "max": 5, "step": 1,
    "labels": [{"value": 5, "text": "Definitely the same speaker"}, {"value": 4, "text": "Probably the same speaker"},
               {"value": 3, "text": "Not sure"}, {"value": 2, "text": "Probably a different speaker"},
               {"value": 1, "text": "Definitely a different speaker"}],
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
}
SCALES = {ListeningTest.Kind.MUSHRA: MUSHRA_SCALE, ListeningTest.Kind.SMOS: SMOS_SCALE, ListeningTest.Kind.MOS: ACR_SCALE}


def audio_url(participant: Participant, handle_token: str) -> str:
    return reverse("listening:audio", args=[participant.token, handle_token])


def reference_url(participant: Participant, assignment: Assignment) -> str:
    # The open reference is addressed through the assignment's own token, so it needs no extra row
    # and is as unguessable and per-participant as the stimuli.
    return reverse("listening:reference-audio", args=[participant.token, assignment.token])


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
    flags: dict[int, list[ArtifactFlag]] = {}
    for f in ArtifactFlag.objects.filter(participant=participant).order_by("created_at"):
        flags.setdefault(f.assignment_id, []).append(f)
    trials = []
    for a in assignments:
        own = handles.get(a.pk, [])
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        token_of = {h.stimulus_id: h.token for h in own}
        trials.append({
            "id": a.token,
            "training": a.trial.is_training,
            "done": a.completed_at is not None,
            "reference": {"url": reference_url(participant, a)} if a.trial.reference_id else None,
            "stimuli": [{"id": h.token, "url": audio_url(participant, h.token), "label": letters[i]}
                        for i, h in enumerate(own)],
            "ratings": {token_of[sid]: score for sid, score in ratings.items() if sid in token_of},
            "flags": [{"id": f.token, "stimulus": token_of.get(f.stimulus_id), "start": f.start_s, "end": f.end_s,
                       "category": f.category, "note": f.note} for f in flags.get(a.pk, [])],
        })
    position = next((i for i, t in enumerate(trials) if not t["done"]), len(trials))
    done = position >= len(trials) or participant.status == Participant.Status.COMPLETED
    phase = "done" if done else ("training" if trials[position]["training"] else "main")
    return {
        "test": {"kind": test.kind, "title": test.title,
                 "instructions": test.instructions or DEFAULT_INSTRUCTIONS[test.kind], "scale": SCALES[test.kind]},
        "phase": phase,
        "position": position,
        "trials": trials,
        "flag_categories": [{"value": v, "label": str(label)} for v, label in ArtifactFlag.Category.choices],
        "completion": ({"code": test.completion_code or None, "redirect": test.completion_redirect or None}
                       if done else None),
    }


def participant_stimulus_asset(participant: Participant, handle_token: str):
    """The audio behind one of this participant's stimulus tokens, or None."""
    handle = StimulusHandle.objects.select_related("stimulus__asset").filter(
        assignment__participant=participant, token=handle_token).first()
    return handle.stimulus.asset if handle else None


def participant_reference_asset(participant: Participant, assignment_token: str):
    """The open reference of one of this participant's trials, or None."""
    assignment = Assignment.objects.select_related("trial__reference").filter(
        participant=participant, token=assignment_token).first()
    return assignment.trial.reference if assignment and assignment.trial.reference_id else None


def listening_test_progress(test: ListeningTest) -> dict[str, Any]:
    """Valid votes per item × condition (training and screened-out listeners excluded) for the
    researcher's progress page, with the target and the listeners' states."""
    from django.db.models import Count, Q

    from evalsite.listening.models import Condition, Trial

    conditions = list(Condition.objects.filter(test=test).order_by("role", "label"))
    valid = Q(ratings__is_training=False) & ~Q(ratings__participant__status=Participant.Status.SCREENED_OUT)
    counts = {}
    from evalsite.listening.models import Stimulus

    for row in (Stimulus.objects.filter(trial__test=test, trial__is_training=False)
                .annotate(votes=Count("ratings", filter=valid))
                .values("trial__item__key", "condition_id", "votes")):
        key = (row["trial__item__key"], row["condition_id"])
        counts[key] = counts.get(key, 0) + row["votes"]
    items = sorted({k for k, _ in counts})
    rows = [{"item": item, "cells": [counts.get((item, c.pk)) for c in conditions]} for item in items]
    participants = Participant.objects.filter(test=test).annotate(
        done=Count("assignments", filter=Q(assignments__completed_at__isnull=False)), total=Count("assignments"))
    cell_votes = [v for v in counts.values()]
    return {
        "conditions": conditions,
        "rows": rows,
        "target": test.votes_target,
        "cells_at_target": sum(1 for v in cell_votes if v >= test.votes_target),
        "cells": len(cell_votes),
        "participants": list(participants.order_by("-created_at")),
        "trials": Trial.objects.filter(test=test).count(),
    }
