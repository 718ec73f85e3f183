"""Celery tasks of scoring: thin wrappers that hand a job's id and its work to ``job_task_execute``."""

from celery import shared_task

from evalsite.jobs.tasks import JOB_TASK_OPTIONS, job_task_execute
from evalsite.scoring.detection import detection_job_work
from evalsite.scoring.services import metrics_job_work


@shared_task(**JOB_TASK_OPTIONS)
def metrics_run_task(self, job_id: int) -> None:
    job_task_execute(self, job_id, work=metrics_job_work)


@shared_task(**JOB_TASK_OPTIONS)
def detection_run_task(self, job_id: int) -> None:
    job_task_execute(self, job_id, work=detection_job_work)
