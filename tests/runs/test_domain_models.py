import hashlib

import pytest
from django.db import IntegrityError, transaction

from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, Generation, Run
from evalsite.runs.services import run_create
from tests.factories import CheckpointFactory, EvalSetFactory, JobFactory

pytestmark = pytest.mark.django_db


def test_a_run_keeps_only_the_hash_of_its_api_token():
    run, token = run_create(name="hifigan-ljs", kind=Run.Kind.VOCODER, model_family="hifigan")
    run.refresh_from_db()
    assert token.startswith("evr_") and len(token) > 40
    assert run.api_token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(Run.objects.filter(pk=run.pk).values().get())


def test_a_run_kind_outside_the_choices_is_refused():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as exc:
        run_create(name="x", kind="diffusion", model_family="x")
    assert "kind" in exc.value.message_dict


def test_a_checkpoint_step_is_unique_within_its_run():
    ckpt = CheckpointFactory(step=5000)
    with pytest.raises(IntegrityError), transaction.atomic():
        Checkpoint.objects.create(run=ckpt.run, step=5000, uri="/other")
    Checkpoint.objects.create(
        run=Run.objects.create(name="other", kind="vocoder", model_family="hifigan"), step=5000, uri="/x"
    )


def test_a_done_generation_must_point_at_audio():
    ckpt = CheckpointFactory()
    item = EvalSetFactory().items.create(key="k")
    with pytest.raises(IntegrityError), transaction.atomic():
        Generation.objects.create(
            checkpoint=ckpt, item=item, params_hash="0" * 64, status=Generation.Status.DONE
        )
    Generation.objects.create(
        checkpoint=ckpt,
        item=item,
        params_hash="0" * 64,
        status=Generation.Status.FAILED,
        error="NaN in output",
    )


def test_job_progress_outside_zero_to_one_is_refused_by_the_database():
    job = JobFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=job.pk).update(progress=1.5)
