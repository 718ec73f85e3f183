"""Celery tasks: thin wrappers that take a job id and hand the job's work to ``job_execute``."""

import os
import socket

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

JOB_TASK_OPTIONS = {
    "bind": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "max_retries": settings.EVALSITE_TASK_MAX_RETRIES,
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _execute(task, job_id: int, work_name: str, module: str = "evalsite.runs.services") -> None:
    import importlib

    from evalsite.runs import services

    work = getattr(importlib.import_module(module), work_name)
    kind = settings.EVALSITE_TASK_LIMIT_KINDS.get(task.name, "periodic")
    try:
        services.job_execute(
            job_id=job_id,
            worker=worker_name(),
            work=work,
            time_limit_s=task.soft_time_limit,
            time_limit_setting=f"EVALSITE_TASK_TIME_LIMIT_{kind.upper()}_S",
        )
    except services.JobBusy as exc:
        raise task.retry(exc=exc, countdown=settings.EVALSITE_JOB_STALE_AFTER_S) from None


@shared_task(**JOB_TASK_OPTIONS)
def evalset_import_task(self, job_id: int) -> None:
    _execute(self, job_id, "evalset_import_job_work")


@shared_task(**JOB_TASK_OPTIONS)
def generation_run_task(self, job_id: int) -> None:
    _execute(self, job_id, "generation_job_work")


@shared_task
def jobs_sweep_task() -> dict[str, list[int]]:
    """Beat's health check: queued jobs whose message was lost and running jobs whose worker died are sent again."""
    from evalsite.runs.services import job_redispatch_lost, job_redispatch_stale

    return {"lost": job_redispatch_lost(), "stale": job_redispatch_stale()}


@shared_task
def checkpoints_watch_task() -> dict[str, list[int]]:
    from evalsite.runs.watcher import checkpoints_watch_all

    return checkpoints_watch_all()


@shared_task(**JOB_TASK_OPTIONS)
def detection_run_task(self, job_id: int) -> None:
    _execute(self, job_id, "detection_job_work", module="evalsite.scoring.detection")


@shared_task(**JOB_TASK_OPTIONS)
def metrics_run_task(self, job_id: int) -> None:
    _execute(self, job_id, "metrics_job_work", module="evalsite.scoring.services")


# kind → (task, queue): where ``job_create`` sends each kind of job.
JOB_TASKS = {
    "import_evalset": (evalset_import_task, "cpu"),
    "generation": (generation_run_task, "gpu"),
    "metrics": (metrics_run_task, "cpu"),
    "detection": (detection_run_task, "cpu"),
}
