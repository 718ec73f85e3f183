"""Celery tasks of runs: thin wrappers that hand a job's id and its work to ``job_task_execute``."""

from celery import shared_task

from evalsite.jobs.tasks import JOB_TASK_OPTIONS, job_task_execute
from evalsite.runs.evalset_services import evalset_import_job_work
from evalsite.runs.generation_services import generation_job_work
from evalsite.runs.watcher import checkpoints_watch_all


@shared_task(**JOB_TASK_OPTIONS)
def evalset_import_task(self, job_id: int) -> None:
    job_task_execute(self, job_id, work=evalset_import_job_work)


@shared_task(**JOB_TASK_OPTIONS)
def generation_run_task(self, job_id: int) -> None:
    job_task_execute(self, job_id, work=generation_job_work)


@shared_task
def checkpoints_watch_task() -> dict[str, list[int]]:
    return checkpoints_watch_all()
