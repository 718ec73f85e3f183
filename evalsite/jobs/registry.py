"""Kinds of job and who listens to them, filled by the apps above jobs at ready time.

Each app registers its kinds with the Celery task that carries them (a direct reference, never a
name looked up later), so ``job_create`` knows where to send a job without importing upward. The
same way, the pipeline subscribes to jobs starting and ending without jobs knowing it exists.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task

from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job

JOB_KIND_UNKNOWN = "no task is registered for jobs of kind {kind!r}; registered: {known}."


@dataclass(frozen=True)
class JobKind:
    kind: str
    task: Task
    queue: str


@dataclass(frozen=True)
class JobListener:
    """Hears a job start (each attempt), succeed (returns what to add to its result) or fail."""

    started: Callable[[Job], None]
    succeeded: Callable[[Job, dict[str, Any]], dict[str, Any]]
    failed: Callable[[Job], None]


_kinds: dict[str, JobKind] = {}
_listeners: list[JobListener] = []


def job_kind_register(*, kind: str, task: Task, queue: str) -> None:
    """Jobs of ``kind`` are carried by ``task`` on ``queue``; registering a kind again replaces it."""
    _kinds[kind] = JobKind(kind=kind, task=task, queue=queue)


def job_kind_get(kind: str) -> JobKind:
    try:
        return _kinds[kind]
    except KeyError:
        raise ApplicationError(JOB_KIND_UNKNOWN.format(kind=kind, known=", ".join(sorted(_kinds)))) from None


def job_kinds_all() -> list[JobKind]:
    return list(_kinds.values())


def job_listener_add(listener: JobListener) -> None:
    """Subscribe ``listener``; adding the same one again (a second ``ready()``) changes nothing."""
    if listener not in _listeners:
        _listeners.append(listener)


def job_listeners() -> list[JobListener]:
    return list(_listeners)
