"""A listener's questionnaire pages: the pre-test page (after consent, before calibration and the trials) and
the post-test page (after the last trial, before the completion code)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from evalsite.core.exceptions import ConflictError, NotFoundError
from evalsite.listening.models import ListeningTest, Participant
from evalsite.listening.questionnaire import STAGES, Questionnaire, answers_clean
from evalsite.listening.services.session import PARTICIPANT_DONE, SCREENED_OUT, TEST_NOT_OPEN

NO_SUCH_PAGE = "This test has no {stage} questionnaire."
FINISH_TRIALS_FIRST = "Please finish the listening trials first."
PRE_QUESTIONNAIRE_FIRST = "Please answer the questions before the test first."


@transaction.atomic
def questionnaire_submit(*, participant: Participant, stage: str, answers: Any) -> Participant:
    """Store the answers of one questionnaire page once they meet its questions (``answers_clean``).

    Submitted once: a page already submitted (a retried request, a second tab) returns the participant
    unchanged, so reopening the invite link never asks it again nor overwrites what was given.
    """
    participant = Participant.objects.select_for_update().select_related("test").get(pk=participant.pk)
    test = participant.test
    if stage not in STAGES or not test.questionnaire.get(stage):
        raise NotFoundError(NO_SUCH_PAGE.format(stage=str(stage)[:20]), fields=("stage",))
    if stage in participant.questionnaire:
        return participant
    if participant.status == Participant.Status.SCREENED_OUT:
        raise ConflictError(SCREENED_OUT)
    if stage == "pre":
        if test.status != ListeningTest.Status.PUBLISHED:
            raise ConflictError(TEST_NOT_OPEN)
        if participant.status == Participant.Status.COMPLETED:
            raise ConflictError(PARTICIPANT_DONE)
    elif participant.status != Participant.Status.COMPLETED:
        # A test closed after the listener's last trial still takes their comments: they earned the code.
        raise ConflictError(FINISH_TRIALS_FIRST)
    clean = answers_clean(Questionnaire.from_stored(test.questionnaire).stage(stage), answers)
    participant.questionnaire = {
        **participant.questionnaire,
        stage: {"answers": clean, "submitted_at": timezone.now().isoformat()},
    }
    participant.save(update_fields=["questionnaire", "updated_at"])
    return participant
