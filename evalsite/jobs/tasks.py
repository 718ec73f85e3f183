"""The sweep task, and what every job-carrying task of the apps above shares: options and the body."""

import os
import socket
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from evalsite.jobs.models import Job
from evalsite.jobs.services import (
    JobBusy,
    ProgressFn,
    job_execute,
    job_redispatch_lost,
    job_redispatch_stale,
)

JOB_TASK_OPTIONS = {
    "bind": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "max_retries": settings.EVALSITE_TASK_MAX_RETRIES,
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_task_execute(task: Task, job_id: int, *, work: Callable[[Job, ProgressFn], dict[str, Any]]) -> None:
    """The body of a job task: run ``work`` under the job services, within the task's time limit."""
    kind = settings.EVALSITE_TASK_LIMIT_KINDS.get(task.name, "periodic")
    try:
        job_execute(
            job_id=job_id,
            worker=worker_name(),
            work=work,
            time_limit_s=task.soft_time_limit,
            time_limit_setting=f"EVALSITE_TASK_TIME_LIMIT_{kind.upper()}_S",
        )
    except JobBusy as exc:
        raise task.retry(exc=exc, countdown=settings.EVALSITE_JOB_STALE_AFTER_S) from None


@shared_task
def jobs_sweep_task() -> dict[str, list[int]]:
    """Beat's health check: queued jobs whose message was lost and running jobs whose worker died are sent again."""
    return {"lost": job_redispatch_lost(), "stale": job_redispatch_stale()}
