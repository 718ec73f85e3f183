from datetime import timedelta

import pytest
from django.utils import timezone

from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import (
    JOB_ILLEGAL_TRANSITION,
    JobBusy,
    job_claim,
    job_create,
    job_execute,
    job_fail,
    job_fail_stale,
    job_finish,
    job_heartbeat,
    job_redispatch_lost,
    job_redispatch_stale,
)
from tests.factories import JobFactory, write_tone

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


def test_attempts_that_each_moved_the_job_forward_never_fail_it_however_many_there_are(settings):
    # A worker killed from outside (a deploy, a preempted machine) costs only the item in flight.
    settings.EVALSITE_JOB_MAX_ATTEMPTS = 2
    settings.EVALSITE_JOB_STALE_AFTER_S = 0
    job = JobFactory()
    for attempt in range(1, 6):
        claimed = job_claim(job_id=job.pk, worker=f"w{attempt}:{attempt}")
        assert (claimed.status, claimed.attempts, claimed.error) == (Job.Status.RUNNING, attempt, "")
        job_heartbeat(job_id=job.pk, progress=0.15 * attempt, message=f"utt{attempt}")


def test_attempts_that_die_without_progress_fail_the_job_with_where_it_stopped(settings):
    settings.EVALSITE_JOB_MAX_ATTEMPTS = 2
    settings.EVALSITE_JOB_STALE_AFTER_S = 0
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w1:1")
    job_heartbeat(job_id=job.pk, progress=0.5, message="utt07")
    assert job_claim(job_id=job.pk, worker="w2:2").attempts == 2  # w1 got it to 50 %
    assert job_claim(job_id=job.pk, worker="w3:3").attempts == 3  # w2 died at 50 %: once
    assert job_claim(job_id=job.pk, worker="w4:4") is None  # w3 died at 50 % too: twice in a row
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.attempts == 3
    assert "gave up after 2 attempts" in job.error and "50%, at utt07" in job.error and "w3:3" in job.error


def test_an_attempt_that_was_taken_over_records_neither_heartbeat_nor_outcome(settings):
    """A worker that only looked dead (a long pause) and was taken over must not end the job for the
    attempt now running, nor make it look alive."""
    settings.EVALSITE_JOB_STALE_AFTER_S = 0
    job = JobFactory()
    slow = job_claim(job_id=job.pk, worker="w1:1")
    job_claim(job_id=job.pk, worker="w2:2")  # the sweep judged w1 dead; w2 took over (attempt 2)
    job_heartbeat(job_id=job.pk, progress=0.9, message="late", attempt=slow.attempts)
    job.refresh_from_db()
    assert (job.progress, job.worker) == (0.0, "w2:2")
    job_finish(job_id=job.pk, result={"from": "w1"}, attempt=slow.attempts)
    job_fail(job_id=job.pk, error="w1 broke", attempt=slow.attempts)
    job.refresh_from_db()
    assert (job.status, job.error, job.attempts) == (Job.Status.RUNNING, "", 2)
    job_finish(job_id=job.pk, result={"from": "w2"}, attempt=2)
    job.refresh_from_db()
    assert (job.status, job.result) == (Job.Status.DONE, {"from": "w2"})
    # And once it ended, the stale attempt's late failure changes nothing either.
    assert job_fail(job_id=job.pk, error="w1 again", attempt=1).status == Job.Status.DONE


def test_a_job_failed_without_a_result_keeps_no_resume_bookkeeping():
    job = JobFactory()
    job_claim(job_id=job.pk, worker="w1:1")
    job_fail(job_id=job.pk, error="boom")
    job.refresh_from_db()
    assert job.result == {}


def import_job(folder, name: str) -> Job:
    folder.mkdir()
    write_tone(folder / "a.wav", seed=len(name))
    return JobFactory(params={"name": name, "source": str(folder)})


def backdate(job: Job, seconds: float, *fields: str) -> None:
    """Move ``updated_at`` (when the job was last sent) and ``fields`` into the past; update() skips auto_now."""
    past = timezone.now() - timedelta(seconds=seconds)
    Job.objects.filter(pk=job.pk).update(updated_at=past, **{name: past for name in fields})


def test_a_queued_job_whose_message_was_lost_is_sent_again_once_overdue_and_runs_once(eager, tmp_path):
    lost, recent = import_job(tmp_path / "a", "lost"), import_job(tmp_path / "b", "recent")
    backdate(lost, 3600)
    asked = []
    sent = job_redispatch_lost(older_than_s=600, queue_depth=lambda queue: asked.append(queue) or 0)
    assert sent == [lost.pk] and asked == ["cpu"]
    lost.refresh_from_db()
    assert (lost.status, lost.attempts, lost.result["created"]) == (Job.Status.DONE, 1, 1)
    assert Job.objects.get(pk=recent.pk).status == Job.Status.QUEUED
    assert job_redispatch_lost(older_than_s=600, queue_depth=lambda queue: 0) == []


def test_queued_jobs_are_not_sent_again_while_the_broker_holds_a_message_for_each(eager, tmp_path):
    first, second = import_job(tmp_path / "a", "first"), import_job(tmp_path / "b", "second")
    backdate(first, 3600)
    backdate(second, 3600)
    assert job_redispatch_lost(older_than_s=600, queue_depth=lambda queue: 2) == []
    assert set(Job.objects.values_list("status", flat=True)) == {Job.Status.QUEUED}
    # One message for two queued jobs: at least one was lost, and both are sent (a duplicate is harmless).
    assert job_redispatch_lost(older_than_s=600, queue_depth=lambda queue: 1) == [first.pk, second.pk]
    assert set(Job.objects.values_list("status", flat=True)) == {Job.Status.DONE}


def test_a_running_job_whose_worker_died_is_sent_again_and_resumed_by_another_worker(eager, tmp_path):
    dead, alive = import_job(tmp_path / "a", "dead"), import_job(tmp_path / "b", "alive")
    for job in (dead, alive):
        job_claim(job_id=job.pk, worker="gone:1")
    backdate(dead, 3600, "heartbeat_at")
    assert job_redispatch_stale(stale_after_s=600, running_on_live_workers=lambda: None) == [dead.pk]
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (Job.Status.DONE, 2) and dead.worker != "gone:1"
    assert Job.objects.get(pk=alive.pk).status == Job.Status.RUNNING


def test_a_job_created_while_the_broker_is_down_stays_queued_and_its_caller_goes_on(
    django_capture_on_commit_callbacks, caplog
):
    import socket

    from evalsite.celery import app

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        down = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    original = app.conf.broker_write_url
    app.conf.broker_write_url, app._pool, app.amqp._producer_pool = down, None, None
    try:
        with django_capture_on_commit_callbacks(execute=True):
            job = job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": "x", "source": "/nowhere"})
    finally:
        app.conf.broker_write_url, app._pool, app.amqp._producer_pool = original, None, None
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    assert f"job {job.pk} stays queued without a message" in caplog.text


def test_a_silent_job_that_a_live_worker_reports_running_is_left_to_it(eager, tmp_path):
    # One long step (a metric over a big eval set) heartbeats only when it ends.
    busy = import_job(tmp_path / "a", "busy")
    job_claim(job_id=busy.pk, worker="alive:1")
    backdate(busy, 3600, "heartbeat_at")
    assert job_redispatch_stale(stale_after_s=600, running_on_live_workers=lambda: {busy.pk}) == []
    busy.refresh_from_db()
    assert (busy.status, busy.attempts, busy.worker) == (Job.Status.RUNNING, 1, "alive:1")
