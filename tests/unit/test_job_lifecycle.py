from datetime import timedelta

import pytest
from django.utils import timezone

from evalsite.core.exceptions import ApplicationError
from evalsite.runs.models import Job
from evalsite.runs.services import (
    JOB_ILLEGAL_TRANSITION,
    JobBusy,
    job_claim,
    job_execute,
    job_fail,
    job_fail_stale,
    job_finish,
    job_heartbeat,
)
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def test_a_claimed_job_is_running_with_one_attempt_and_its_worker_recorded():
    job = JobFactory()
    claimed = job_claim(job_id=job.pk, worker="w1:1")
    assert claimed.status == Job.Status.RUNNING
    assert claimed.attempts == 1
    assert claimed.worker == "w1:1"
    assert claimed.started_at is not None and claimed.heartbeat_at is not None


def test_a_duplicate_delivery_of_a_finished_job_does_nothing():
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w1:1")
    job_finish(job_id=job.pk, result={"n": 3})
    assert job_claim(job_id=job.pk, worker="w2:2") is None
    job.refresh_from_db()
    assert job.status == Job.Status.DONE and job.attempts == 1 and job.result == {"n": 3}


def test_a_job_running_on_a_live_worker_is_not_taken_over(settings):
    settings.EVALSITE_JOB_STALE_AFTER_S = 60
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w1:1")
    with pytest.raises(JobBusy):
        job_claim(job_id=job.pk, worker="w2:2")


def test_a_job_whose_worker_went_silent_is_taken_over_by_the_next_delivery(settings):
    settings.EVALSITE_JOB_STALE_AFTER_S = 60
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w1:1")
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=120))
    claimed = job_claim(job_id=job.pk, worker="w2:2")
    assert claimed.worker == "w2:2" and claimed.attempts == 2


def test_a_job_is_failed_with_a_reason_once_its_attempts_are_spent(settings):
    settings.EVALSITE_JOB_MAX_ATTEMPTS = 2
    settings.EVALSITE_JOB_STALE_AFTER_S = 0
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w1:1")
    job_claim(job_id=job.pk, worker="w2:2")
    assert job_claim(job_id=job.pk, worker="w3:3") is None
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "gave up after 2 attempts" in job.error and "w2:2" in job.error


def test_finishing_a_job_that_is_not_running_is_refused_with_the_transition_message():
    job = JobFactory()
    with pytest.raises(ApplicationError) as exc:
        job_finish(job_id=job.pk)
    assert exc.value.message == JOB_ILLEGAL_TRANSITION.format(job_id=job.pk, status="queued", target="done")


def test_a_failed_job_cannot_be_failed_again_or_finished():
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w")
    job_fail(job_id=job.pk, error="boom")
    with pytest.raises(ApplicationError):
        job_fail(job_id=job.pk, error="again")
    with pytest.raises(ApplicationError):
        job_finish(job_id=job.pk)
    job.refresh_from_db()
    assert job.error == "boom"


def test_heartbeat_records_progress_clamped_to_the_unit_range():
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w")
    job_heartbeat(job_id=job.pk, progress=1.7, message="x" * 900)
    job.refresh_from_db()
    assert job.progress == 1.0 and len(job.progress_message) == 500


def test_the_health_check_fails_running_jobs_without_a_recent_heartbeat():
    silent, alive = JobFactory(), JobFactory()
    for job in (silent, alive):
        job_claim(job_id=job.pk, worker="w9:9")
    Job.objects.filter(pk=silent.pk).update(heartbeat_at=timezone.now() - timedelta(hours=2))
    assert job_fail_stale(stale_after_s=600) == [silent.pk]
    silent.refresh_from_db()
    alive.refresh_from_db()
    assert silent.status == Job.Status.FAILED and "no heartbeat from w9:9" in silent.error
    assert alive.status == Job.Status.RUNNING


def test_execute_records_an_application_error_verbatim_and_other_errors_with_their_type():
    def bad_input(job, progress):
        raise ApplicationError("eval set 'x' has no items")

    def crash(job, progress):
        raise ZeroDivisionError("division by zero")

    a, b = JobFactory(), JobFactory()
    assert job_execute(job_id=a.pk, worker="w", work=bad_input).error == "eval set 'x' has no items"
    assert job_execute(job_id=b.pk, worker="w", work=crash).error == "ZeroDivisionError: division by zero"


def test_execute_stores_the_result_and_full_progress():
    def work(job, progress):
        for i in range(3):
            progress(i + 1, 3, f"item {i}")
        return {"items": 3}

    job = job_execute(job_id=JobFactory().pk, worker="w", work=work)
    assert job.status == Job.Status.DONE and job.result == {"items": 3} and job.progress == 1.0
