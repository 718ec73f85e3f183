"""Job kinds are registered by reference at app-ready time; listeners hear jobs start and end."""

import pytest
from django.conf import settings

from evalsite.core.exceptions import ApplicationError
from evalsite.jobs import registry
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_execute
from evalsite.runs.evalset_services import evalset_import_job_work
from evalsite.runs.generation_services import generation_job_work
from evalsite.scoring.detection import detection_job_work
from evalsite.scoring.services import metrics_job_work
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def test_every_kind_of_job_has_a_task_and_a_queue_and_its_time_limit_kind_in_the_settings():
    kinds = {k.kind: k for k in registry.job_kinds_all()}
    assert set(kinds) == set(Job.Kind.values)
    assert {kind: k.queue for kind, k in kinds.items()} == {
        "import_evalset": "cpu",
        "generation": "gpu",
        "metrics": "cpu",
        "detection": "cpu",
    }
    limit_kinds = {kind: settings.EVALSITE_TASK_LIMIT_KINDS.get(k.task.name) for kind, k in kinds.items()}
    assert limit_kinds == {
        "import_evalset": "import",
        "generation": "generation",
        "metrics": "metrics",
        "detection": "metrics",
    }


def test_each_task_runs_its_work_by_direct_reference():
    from evalsite.runs import tasks as runs_tasks
    from evalsite.scoring import tasks as scoring_tasks

    assert runs_tasks.evalset_import_job_work is evalset_import_job_work
    assert runs_tasks.generation_job_work is generation_job_work
    assert scoring_tasks.metrics_job_work is metrics_job_work
    assert scoring_tasks.detection_job_work is detection_job_work


def test_an_unregistered_kind_is_an_error_naming_the_registered_ones():
    with pytest.raises(
        ApplicationError, match="no task is registered for jobs of kind 'karaoke'; registered: "
    ):
        registry.job_kind_get("karaoke")


@pytest.fixture
def heard(monkeypatch):
    events: list[tuple[str, int]] = []
    listener = registry.JobListener(
        started=lambda job: events.append(("started", job.pk)),
        succeeded=lambda job, result: events.append(("succeeded", job.pk)) or {"next": "stage"},
        failed=lambda job: events.append(("failed", job.pk)),
    )
    monkeypatch.setattr(registry, "_listeners", [listener])
    return events


def test_listeners_hear_a_job_start_and_succeed_and_what_they_return_joins_its_result(heard):
    job = job_execute(job_id=JobFactory().pk, worker="w", work=lambda job, progress: {"n": 1})
    assert heard == [("started", job.pk), ("succeeded", job.pk)]
    assert job.status == Job.Status.DONE and job.result == {"n": 1, "next": "stage"}


def test_listeners_hear_a_job_fail(heard):
    def broken(job, progress):
        raise ApplicationError("no such file")

    job = job_execute(job_id=JobFactory().pk, worker="w", work=broken)
    assert heard == [("started", job.pk), ("failed", job.pk)]
    assert (job.status, job.error) == (Job.Status.FAILED, "no such file")


def test_an_error_of_a_listener_on_success_fails_the_job_with_the_reason(monkeypatch):
    def refuse(job, result):
        raise ApplicationError("Checkpoint x is done; it cannot move to detecting.")

    listener = registry.JobListener(started=lambda job: None, succeeded=refuse, failed=lambda job: None)
    monkeypatch.setattr(registry, "_listeners", [listener])
    job = job_execute(job_id=JobFactory().pk, worker="w", work=lambda job, progress: {})
    assert (job.status, job.error) == (
        Job.Status.FAILED,
        "Checkpoint x is done; it cannot move to detecting.",
    )
