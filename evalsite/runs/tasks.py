"""Celery tasks: thin wrappers that take ids and call services."""

import os
import socket

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@shared_task(
    bind=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    max_retries=settings.EVALSITE_TASK_MAX_RETRIES,
)
def evalset_import_task(self, job_id: int) -> None:
    from evalsite.runs.services import JobBusy, evalset_import_job_work, job_execute

    try:
        job_execute(job_id=job_id, worker=worker_name(), work=evalset_import_job_work)
    except JobBusy as exc:
        raise self.retry(exc=exc, countdown=settings.EVALSITE_JOB_STALE_AFTER_S) from None


# kind → (task, queue): where ``job_create`` sends each kind of job.
JOB_TASKS = {
    "import_evalset": (evalset_import_task, "cpu"),
}
