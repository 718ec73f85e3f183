"""The job lifecycle: create and dispatch, claim, heartbeat, finish or fail, and the sweep.

Job status moves only through the ``job_*`` functions, under ``select_for_update``:
queued → running → done | failed, and running → running again only when the heartbeat of the
previous attempt is stale (its worker died). Anything else is refused.

Which task and queue carry a kind of job, and who hears that a job started or ended, is the
registry's (``evalsite.jobs.registry``), filled by the apps above at ready time.
"""

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Model
from django.utils import timezone
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as BrokerError

from evalsite.celery import app
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs import registry
from evalsite.jobs.models import Job

logger = logging.getLogger(__name__)

JOB_ILLEGAL_TRANSITION = "Job {job_id} is {status}; it cannot move to {target}."
JOB_NOT_FOUND = "Job {job_id} does not exist."
JOB_TIME_LIMIT = "stopped at its time limit ({limit}); raise {setting} for longer jobs of this kind."

ProgressFn = Callable[[int, int, str], None]


class JobBusy(Exception):
    """Another live worker holds this job; the caller should try again later."""


def _job_dispatch(job: Job) -> bool:
    """Send the job's message; False when the broker cannot be reached.

    The row is already committed and stays queued: ``job_redispatch_lost`` (beat) sends it again,
    so the caller (a checkpoint registration, an upload) succeeds while the broker is down.
    """
    kind = registry.job_kind_get(job.kind)
    try:
        kind.task.apply_async(args=[job.pk], queue=kind.queue)
    except BrokerError as exc:
        logger.warning(
            "job %s stays queued without a message (broker unreachable: %s); the sweep sends it later",
            job.pk,
            exc,
        )
        return False
    return True


def job_create(
    *,
    kind: str,
    params: dict[str, Any] | None = None,
    run: Model | None = None,
    checkpoint: Model | None = None,
    eval_set: Model | None = None,
    enqueue: bool = True,
) -> Job:
    """Create a queued job and, once the transaction commits, send it to its worker queue.

    ``run``, ``checkpoint`` and ``eval_set`` are rows of runs (typed loosely: jobs sits below runs).
    """
    job = Job(kind=kind, params=params or {}, run=run, checkpoint=checkpoint, eval_set=eval_set)
    job.full_clean()
    job.save()
    if enqueue:
        transaction.on_commit(lambda: _job_dispatch(job))
    return job


def _locked(job_id: int) -> Job:
    try:
        return Job.objects.select_for_update().get(pk=job_id)
    except Job.DoesNotExist:
        raise ApplicationError(JOB_NOT_FOUND.format(job_id=job_id)) from None


def _refuse(job: Job, target: str) -> None:
    raise ApplicationError(
        JOB_ILLEGAL_TRANSITION.format(job_id=job.pk, status=job.status, target=target),
        extra={"job_id": job.pk, "status": job.status, "target": target},
    )


# A running job's ``result`` holds where its current attempt started and how many attempts in a row
# died without moving the job forward (the work's own result replaces it when the job ends).
_RESUME = "resume"


@transaction.atomic
def job_claim(*, job_id: int, worker: str) -> Job | None:
    """Mark the job running for ``worker``.

    Returns ``None`` when there is nothing to do (the job already ended: a duplicate delivery).
    Raises ``JobBusy`` while another worker's attempt is alive. An attempt whose worker died is taken
    over, and the work resumes where it stopped, so a worker killed from outside (a deploy, a
    preempted machine) costs only the item in flight however often it happens. Only
    ``EVALSITE_JOB_MAX_ATTEMPTS`` attempts in a row that died without progress (a job that kills its
    worker at the same place every time) fail the job, with where it stopped.
    """
    job = _locked(job_id)
    now = timezone.now()
    if job.status in (Job.Status.DONE, Job.Status.FAILED):
        return None
    stalled = 0
    if job.status == Job.Status.RUNNING:
        stale_after = timedelta(seconds=settings.EVALSITE_JOB_STALE_AFTER_S)
        if job.heartbeat_at and now - job.heartbeat_at < stale_after and job.worker != worker:
            raise JobBusy(f"job {job_id} is running on {job.worker}")
        resume = job.result.get(_RESUME, {}) if isinstance(job.result, dict) else {}
        moved = job.progress > resume.get("progress_at_claim", -1.0)
        stalled = 0 if moved else resume.get("stalled_attempts", 0) + 1
        if stalled >= settings.EVALSITE_JOB_MAX_ATTEMPTS:
            where = f"{job.progress:.0%}" + (f", at {job.progress_message}" if job.progress_message else "")
            job.status = Job.Status.FAILED
            job.error = (
                f"gave up after {stalled} attempts in a row whose worker died without progress (each stopped "
                f"at {where}; last worker: {job.worker or 'unknown'})"
            )
            job.finished_at = now
            job.save()
            return None
    job.status = Job.Status.RUNNING
    job.attempts += 1
    job.worker = worker
    job.started_at = job.started_at or now
    job.heartbeat_at = now
    job.error = ""
    job.result = {_RESUME: {"progress_at_claim": job.progress, "stalled_attempts": stalled}}
    job.save()
    return job


def job_heartbeat(
    *, job_id: int, progress: float | None = None, message: str | None = None, attempt: int | None = None
) -> None:
    """Record liveness (and progress in [0, 1]) of a running job; only for ``attempt`` when given, so an
    attempt that was taken over (its worker only looked dead) cannot pass for the one now running."""
    fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if progress is not None:
        fields["progress"] = min(max(float(progress), 0.0), 1.0)
    if message is not None:
        fields["progress_message"] = message[:500]
    Job.objects.filter(
        pk=job_id, status=Job.Status.RUNNING, **({"attempts": attempt} if attempt is not None else {})
    ).update(**fields)


def _superseded(job: Job, attempt: int | None) -> bool:
    """``attempt`` was taken over by a later one: that one records the outcome, this one records nothing."""
    if attempt is None or job.attempts == attempt:
        return False
    logger.warning(
        "job %s: attempt %s ended after attempt %s took it over; its outcome is not recorded",
        job.pk,
        attempt,
        job.attempts,
    )
    return True


@transaction.atomic
def job_finish(*, job_id: int, result: dict[str, Any] | None = None, attempt: int | None = None) -> Job:
    job = _locked(job_id)
    if _superseded(job, attempt):
        return job
    if job.status != Job.Status.RUNNING:
        _refuse(job, Job.Status.DONE)
    job.status = Job.Status.DONE
    job.progress = 1.0
    job.result = result or {}
    job.finished_at = timezone.now()
    job.heartbeat_at = job.finished_at
    job.save()
    return job


@transaction.atomic
def job_fail(
    *, job_id: int, error: str, result: dict[str, Any] | None = None, attempt: int | None = None
) -> Job:
    job = _locked(job_id)
    if _superseded(job, attempt):
        return job
    if job.status in (Job.Status.DONE, Job.Status.FAILED):
        _refuse(job, Job.Status.FAILED)
    job.status = Job.Status.FAILED
    job.error = error
    if result is not None:
        job.result = result
    elif isinstance(job.result, dict):
        job.result.pop(_RESUME, None)  # bookkeeping of a running job, meaningless once it ended
    job.finished_at = timezone.now()
    job.save()
    return job


def job_fail_stale(*, stale_after_s: float | None = None) -> list[int]:
    """Fail running jobs whose heartbeat stopped (health check); returns their ids."""
    limit = stale_after_s if stale_after_s is not None else settings.EVALSITE_JOB_STALE_AFTER_S
    cutoff = timezone.now() - timedelta(seconds=limit)
    failed = []
    for job_id in Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            job = _locked(job_id)
            if job.status == Job.Status.RUNNING and job.heartbeat_at and job.heartbeat_at < cutoff:
                job.status = Job.Status.FAILED
                job.error = (
                    f"no heartbeat from {job.worker or 'its worker'} for over {limit:.0f} s; marked failed"
                )
                job.finished_at = timezone.now()
                job.save()
                failed.append(job_id)
    return failed


def _broker_queue_depth(queue: str) -> int | None:
    """Messages waiting in ``queue`` on the broker (not those a worker holds); None if it cannot say."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)  # never wait on a broker that is down
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError:
        return 0  # Redis drops an empty list: the queue "does not exist"
    except Exception as exc:  # noqa: BLE001 - only a hint: without it the jobs are sent again, which is safe
        logger.warning("cannot count the messages in queue %s: %s", queue, exc)
        return None


def _redispatch(job_id: int, kind: str, status: str) -> bool:
    """Send the job again and mark when (``updated_at``: no other write touches a queued or running row)."""
    if not _job_dispatch(Job(pk=job_id, kind=kind)):
        return False
    Job.objects.filter(pk=job_id, status=status).update(updated_at=timezone.now())
    return True


def job_redispatch_lost(
    *, older_than_s: float | None = None, queue_depth: Callable[[str], int | None] = _broker_queue_depth
) -> list[int]:
    """Send again queued jobs whose message the broker lost; returns their ids (beat runs this).

    The rows are the truth and the broker only carries them: a message is gone when Redis restarts
    without persistence, or was never sent when the broker was down at ``job_create``. A job still
    queued ``older_than_s`` (``EVALSITE_JOB_REDISPATCH_AFTER_S``) after its last dispatch is sent
    again, unless its broker queue holds at least as many messages as that queue has queued jobs:
    then it is only waiting its turn. A duplicate message is harmless (``job_claim`` of a job that
    ended does nothing), the check only keeps a long backlog from filling up with them.
    """
    limit = older_than_s if older_than_s is not None else settings.EVALSITE_JOB_REDISPATCH_AFTER_S
    cutoff = timezone.now() - timedelta(seconds=limit)
    queues: dict[str, list[str]] = {}
    for kind in registry.job_kinds_all():
        queues.setdefault(kind.queue, []).append(kind.kind)
    sent = []
    for queue, kinds in queues.items():
        waiting = Job.objects.filter(status=Job.Status.QUEUED, kind__in=kinds)
        overdue = list(waiting.filter(updated_at__lt=cutoff).order_by("created_at").values_list("pk", "kind"))
        if not overdue:
            continue
        depth = queue_depth(queue)
        if depth is not None and depth >= waiting.count():
            continue
        sent += [job_id for job_id, kind in overdue if _redispatch(job_id, kind, Job.Status.QUEUED)]
    if sent:
        logger.warning("sent again %d queued job(s) whose message was lost: %s", len(sent), sent)
    return sent


def _jobs_running_on_live_workers() -> set[int] | None:
    """Ids of the jobs that live workers report executing now; None when no worker answered."""
    names = {kind.task.name for kind in registry.job_kinds_all()}
    try:
        replies = app.control.inspect(timeout=1.0).active()
    except Exception as exc:  # noqa: BLE001 - without an answer every silent job counts as orphaned
        logger.warning("cannot ask the workers what they run: %s", exc)
        return None
    return {
        int(task["args"][0])
        for tasks in (replies or {}).values()
        for task in tasks
        if task.get("name") in names and task.get("args")
    }


def job_redispatch_stale(
    *,
    stale_after_s: float | None = None,
    running_on_live_workers: Callable[[], set[int] | None] = _jobs_running_on_live_workers,
) -> list[int]:
    """Send a new message for running jobs whose worker died; returns their ids (beat runs this).
    A worker killed with its machine leaves its message unacknowledged, and Redis gives it back only
    after the visibility timeout (an hour by default). A job without heartbeat for
    ``EVALSITE_JOB_STALE_AFTER_S`` that no live worker reports executing (one long step, e.g. a
    metric over a big eval set, heartbeats only when it ends) has lost its worker: the next free
    worker resumes it, and ``job_claim`` decides whether to take it over or give up. Sent at most
    once per that interval while nobody takes it.
    """
    limit = stale_after_s if stale_after_s is not None else settings.EVALSITE_JOB_STALE_AFTER_S
    cutoff = timezone.now() - timedelta(seconds=limit)
    stale = list(
        Job.objects.filter(
            status=Job.Status.RUNNING, heartbeat_at__lt=cutoff, updated_at__lt=cutoff
        ).values_list("pk", "kind")
    )
    if not stale:
        return []
    alive = running_on_live_workers() or set()
    sent = [
        job_id
        for job_id, kind in stale
        if job_id not in alive and _redispatch(job_id, kind, Job.Status.RUNNING)
    ]
    if sent:
        logger.warning("sent again %d running job(s) whose worker stopped answering: %s", len(sent), sent)
    return sent


def job_execute(
    *,
    job_id: int,
    worker: str,
    work: Callable[[Job, ProgressFn], dict[str, Any]],
    heartbeat_every_s: float = 1.0,
    time_limit_s: float | None = None,
    time_limit_setting: str = "",
) -> Job | None:
    """Claim the job, run ``work(job, progress)`` and record its outcome on the job.

    ``work`` raises ``ApplicationError`` for a failure a user must fix (message kept verbatim);
    any other exception is recorded with its type. Database connection errors propagate so the
    task can retry. Celery's soft time limit (``time_limit_s``, from ``time_limit_setting``) fails the
    job with JOB_TIME_LIMIT. Returns the ended job, or ``None`` for a duplicate delivery.

    The registry's listeners hear that the job started and how it ended; what they add to a
    successful job's result (e.g. the id of the next stage's job) is recorded with it, and an error
    they raise fails the job like one of the work's own.
    """
    job = job_claim(job_id=job_id, worker=worker)
    if job is None:
        return None
    attempt = job.attempts
    last_beat = [0.0]

    def progress(done: int, total: int, message: str) -> None:
        now = timezone.now().timestamp()
        if now - last_beat[0] >= heartbeat_every_s or done >= total:
            last_beat[0] = now
            job_heartbeat(
                job_id=job_id, progress=done / total if total else 1.0, message=message, attempt=attempt
            )

    try:
        for listener in registry.job_listeners():
            listener.started(job)
        result = work(job, progress)
        for listener in registry.job_listeners():
            result.update(listener.succeeded(job, result))
    except SoftTimeLimitExceeded:
        limit = f"{time_limit_s:.0f} s" if time_limit_s else "its time limit"
        error = JOB_TIME_LIMIT.format(limit=limit, setting=time_limit_setting or "EVALSITE_TASK_TIME_LIMITS")
        return _fail_and_tell(job_id=job_id, error=error, attempt=attempt)
    except ApplicationError as exc:
        return _fail_and_tell(job_id=job_id, error=exc.message, result=exc.extra or None, attempt=attempt)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:  # noqa: BLE001 - the job must end with the reason, and the worker go on
        logger.exception("job %s failed", job_id)
        return _fail_and_tell(job_id=job_id, error=f"{type(exc).__name__}: {exc}", attempt=attempt)
    return job_finish(job_id=job_id, result=result, attempt=attempt)


def _fail_and_tell(*, job_id: int, error: str, attempt: int, result: dict[str, Any] | None = None) -> Job:
    """Fail the job and tell the listeners in one transaction: whoever sees the failed job also sees
    what the listeners made of it (e.g. its checkpoint failed)."""
    with transaction.atomic():
        return _failed(job_fail(job_id=job_id, error=error, result=result, attempt=attempt), attempt)


def _failed(job: Job, attempt: int) -> Job:
    """Tell the listeners that this attempt failed the job (not when a later attempt had taken it over)."""
    if job.status == Job.Status.FAILED and job.attempts == attempt:
        for listener in registry.job_listeners():
            try:
                listener.failed(job)
            except (OperationalError, InterfaceError):
                raise
            except Exception:  # noqa: BLE001 - the job's failure is recorded; a listener's own error is logged
                logger.exception("job %s: a listener failed on its failure", job.pk)
    return job
