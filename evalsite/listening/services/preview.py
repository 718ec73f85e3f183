"""A researcher's preview of a test through the real listener pages, with nothing of it kept.

Each request of a preview runs the very services a listener's request runs (so every answer is
validated, every control enforced, exactly as for a listener) inside a savepoint that is always rolled
back: the preview's participant, its trials in its order, its answers and what it was sent are restored
into that savepoint from a snapshot, the request is served, the new snapshot is read, and the savepoint
is undone. No Participant, Rating, ArtifactFlag, SoundFetch or telemetry row survives a request, and
other listeners never see the preview's (uncommitted) rows: it does not count towards coverage.

The snapshot (a JSON string) is kept by the caller, in the researcher's own session
(``listening.preview``); it holds no telemetry and no device details, only what the next request of the
walk needs. A draft or closed test is opened (and a full one given room) for a listener inside the
savepoint only.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction

from evalsite.core.exceptions import ConflictError
from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    ListeningTest,
    Participant,
    Rating,
    SoundFetch,
    StimulusHandle,
)
from evalsite.listening.services.session import participant_join

T = TypeVar("T")

# Participant tokens are ``secrets.token_urlsafe`` (letters, digits, "-" and "_"): a "." never occurs
# in one, so a preview's token can never name a listener's session, nor the other way round.
PREVIEW_TOKEN_PREFIX = "preview."
IMPORTED_NO_PREVIEW = (
    "{name} was imported from a test run elsewhere: it has no audio and no listener pages to preview."
)
# Room for every trial of a full test: the preview joins as a new listener would, whatever the votes.
_ANY_VOTES = 2**31 - 1


def is_preview_token(token: str) -> bool:
    return token.startswith(PREVIEW_TOKEN_PREFIX)


def _row(instance: models.Model, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        f.attname: f.value_from_object(instance)
        for f in instance._meta.concrete_fields
        if f.attname not in ("created_at", "updated_at", *drop)
    }


def _instance(model: type[models.Model], row: dict[str, Any], **overrides: Any) -> models.Model:
    values = {}
    for f in model._meta.concrete_fields:
        if f.attname in row and f.attname != "id":
            values[f.attname] = f.to_python(row[f.attname])
    values.update(overrides)
    return model(**values)


def _open_for_preview(test: ListeningTest, *, joining: bool) -> None:
    """Inside the savepoint only: the test as a listener finds a published one."""
    changes: dict[str, Any] = {}
    if test.status != ListeningTest.Status.PUBLISHED:
        changes["status"] = ListeningTest.Status.PUBLISHED
    if joining:
        changes["votes_target"] = _ANY_VOTES
    if changes:
        ListeningTest.objects.filter(pk=test.pk).update(**changes)


def _snapshot(participant_id: int) -> str:
    participant = Participant.objects.get(pk=participant_id)
    assignments = list(Assignment.objects.filter(participant_id=participant_id).order_by("position"))
    return json.dumps(
        {
            # Telemetry and device details are detail for screening real listeners: never kept.
            "participant": _row(participant, drop=("device",)),
            "assignments": [_row(a, drop=("telemetry",)) for a in assignments],
            "handles": [_row(h) for h in StimulusHandle.objects.filter(assignment__in=assignments)],
            "ratings": [_row(r) for r in Rating.objects.filter(participant_id=participant_id)],
            "flags": [_row(f) for f in ArtifactFlag.objects.filter(participant_id=participant_id)],
            "fetches": [_row(f) for f in SoundFetch.objects.filter(participant_id=participant_id)],
        },
        cls=DjangoJSONEncoder,
    )


def _restore(test: ListeningTest, snapshot: str) -> Participant:
    """The snapshot's rows, written afresh (new ids; tokens as they were, so the pages' URLs still hold)."""
    state = json.loads(snapshot)
    participant = _instance(Participant, state["participant"], test_id=test.pk)
    participant.save()
    assignments = {
        row["id"]: _instance(Assignment, row, participant_id=participant.pk) for row in state["assignments"]
    }
    Assignment.objects.bulk_create(assignments.values())
    by_old = {old: a.pk for old, a in assignments.items()}
    StimulusHandle.objects.bulk_create(
        _instance(StimulusHandle, row, assignment_id=by_old[row["assignment_id"]]) for row in state["handles"]
    )
    for model, key in ((Rating, "ratings"), (ArtifactFlag, "flags")):
        model.objects.bulk_create(
            _instance(model, row, participant_id=participant.pk, assignment_id=by_old[row["assignment_id"]])
            for row in state[key]
        )
    SoundFetch.objects.bulk_create(
        _instance(SoundFetch, row, participant_id=participant.pk) for row in state["fetches"]
    )
    return Participant.objects.select_related("test").get(pk=participant.pk)


def preview_begin(*, test: ListeningTest) -> tuple[str, str]:
    """Join ``test`` as a new listener would, without keeping anything: (preview token, snapshot).

    Raises what ``participant_join`` raises (e.g. a test with no main trial is "full").
    """
    if test.is_external:
        raise ConflictError(IMPORTED_NO_PREVIEW.format(name=test.name))
    token = PREVIEW_TOKEN_PREFIX + secrets.token_urlsafe(18)
    with transaction.atomic():
        try:
            _open_for_preview(test, joining=True)
            participant = participant_join(test=test)
            Participant.objects.filter(pk=participant.pk).update(token=token)
            snapshot = _snapshot(participant.pk)
        finally:
            transaction.set_rollback(True)
    return token, snapshot


def preview_run(*, test: ListeningTest, snapshot: str, action: Callable[[Participant], T]) -> tuple[T, str]:
    """``action(participant)`` on the preview's participant as the snapshot left it: its result and the
    snapshot after it. Everything it wrote is rolled back; an exception leaves the snapshot as it was."""
    with transaction.atomic():
        try:
            _open_for_preview(test, joining=False)
            participant = _restore(test, snapshot)
            result = action(participant)
            after = _snapshot(participant.pk)
        finally:
            transaction.set_rollback(True)
    return result, after
