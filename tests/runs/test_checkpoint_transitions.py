"""A checkpoint's status moves only through checkpoint_transition, along CHECKPOINT_MOVES."""

import itertools

import pytest

from evalsite.core.exceptions import ApplicationError
from evalsite.runs.models import Checkpoint
from evalsite.runs.services import CHECKPOINT_ILLEGAL_TRANSITION, CHECKPOINT_MOVES, checkpoint_transition
from tests.factories import CheckpointFactory

pytestmark = pytest.mark.django_db

STATUSES = list(Checkpoint.Status)
LEGAL = [(start, to) for start in STATUSES for to in CHECKPOINT_MOVES[start]]
ILLEGAL = [
    (start, to) for start, to in itertools.product(STATUSES, STATUSES) if to not in CHECKPOINT_MOVES[start]
]


def test_every_status_has_its_moves_listed():
    assert set(CHECKPOINT_MOVES) == set(STATUSES)


@pytest.mark.parametrize(("start", "to"), LEGAL)
def test_every_legal_move_is_made(start, to):
    checkpoint = CheckpointFactory(status=start)
    moved = checkpoint_transition(checkpoint_id=checkpoint.pk, to=to)
    assert moved.status == to
    assert Checkpoint.objects.get(pk=checkpoint.pk).status == to


@pytest.mark.parametrize(("start", "to"), ILLEGAL)
def test_an_illegal_move_is_refused_naming_both_statuses_and_changes_nothing(start, to):
    checkpoint = CheckpointFactory(status=start)
    before = Checkpoint.objects.get(pk=checkpoint.pk).updated_at
    with pytest.raises(ApplicationError) as refused:
        checkpoint_transition(checkpoint_id=checkpoint.pk, to=to)
    assert refused.value.message == CHECKPOINT_ILLEGAL_TRANSITION.format(
        checkpoint=checkpoint, status=start, target=to
    )
    after = Checkpoint.objects.get(pk=checkpoint.pk)
    assert (after.status, after.updated_at) == (start, before)


def test_no_stage_is_skipped_on_the_way_forward():
    registered, generating = Checkpoint.Status.REGISTERED, Checkpoint.Status.GENERATING
    assert CHECKPOINT_MOVES[registered] == {registered, generating}
    assert Checkpoint.Status.DETECTING not in CHECKPOINT_MOVES[generating]
    for ended in (Checkpoint.Status.DONE, Checkpoint.Status.FAILED):
        assert ended not in CHECKPOINT_MOVES[registered]
        assert {Checkpoint.Status.DONE, Checkpoint.Status.FAILED}.isdisjoint(CHECKPOINT_MOVES[ended])


def test_a_checkpoint_that_does_not_exist_is_an_error_naming_its_id():
    with pytest.raises(ApplicationError, match="Checkpoint 987654 does not exist"):
        checkpoint_transition(checkpoint_id=987654, to=Checkpoint.Status.GENERATING)
