"""Writes for runs, eval sets and jobs.

Job status moves only through the ``job_*`` functions, under ``select_for_update``:
queued → running → done | failed, and running → running again only when the heartbeat of the
previous attempt is stale (its worker died). Anything else is refused.
"""

import csv
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from evalsite.audio.decoding import AudioValidationError
from evalsite.audio.models import AudioAsset
from evalsite.audio.services import audio_asset_ingest
from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.runs.checkpoint_files import (
    CHECKPOINT_SHA256_MISMATCH,
    CheckpointPathRefused,
    OpenedCheckpoint,
    checkpoint_file_open,
)
from evalsite.runs.models import EvalItem, EvalSet, Job, Run

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")

JOB_ILLEGAL_TRANSITION = "Job {job_id} is {status}; it cannot move to {target}."
JOB_NOT_FOUND = "Job {job_id} does not exist."
JOB_TIME_LIMIT = "stopped at its time limit ({limit}); raise {setting} for longer jobs of this kind."
IMPORT_SOURCE_MISSING = "{source}: no such file or directory."
IMPORT_SOURCE_KIND = "{source}: expected a directory of audio files or a .csv/.jsonl manifest."
MANIFEST_NO_PATH_COLUMN = "{source}: the manifest has no 'path' column (columns: {columns})."
ITEM_KEY_CONFLICT = "key {key!r} already exists in eval set {eval_set!r} with different audio; not replaced."

ProgressFn = Callable[[int, int, str], None]


class JobBusy(Exception):
    """Another live worker holds this job; the caller should try again later."""


# ---------------------------------------------------------------------------------------------
# Runs


def run_token_issue(*, run: Run) -> str:
    """Issue a new API token for ``run`` (replacing any old one) and return it; only its hash is kept."""
    token = f"evr_{secrets.token_urlsafe(32)}"
    run.api_token_hash = hashlib.sha256(token.encode()).hexdigest()
    run.api_token_prefix = token[:12]
    run.save(update_fields=["api_token_hash", "api_token_prefix", "updated_at"])
    return token


@transaction.atomic
def run_create(
    *,
    name: str,
    kind: str,
    model_family: str,
    eval_set: EvalSet | None = None,
    config: dict[str, Any] | None = None,
    checkpoint_dir: str = "",
    checkpoint_pattern: str = "",
    owner=None,
) -> tuple[Run, str]:
    """Create a run and return it with its API token (shown once)."""
    run = Run(
        name=name,
        kind=kind,
        model_family=model_family,
        eval_set=eval_set,
        config=config or {},
        checkpoint_dir=checkpoint_dir,
        checkpoint_pattern=checkpoint_pattern,
        owner=owner,
    )
    run.full_clean()
    run.save()
    return run, run_token_issue(run=run)


# ---------------------------------------------------------------------------------------------
# Jobs


def _job_dispatch(job: Job) -> bool:
    """Send the job's message; False when the broker cannot be reached.

    The row is already committed and stays queued: ``job_redispatch_lost`` (beat) sends it again,
    so the caller (a checkpoint registration, an upload) succeeds while the broker is down.
    """
    from kombu.exceptions import OperationalError as BrokerError

    from evalsite.runs.tasks import JOB_TASKS

    task, queue = JOB_TASKS[job.kind]
    try:
        task.apply_async(args=[job.pk], queue=queue)
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
    run: Run | None = None,
    checkpoint=None,
    eval_set: EvalSet | None = None,
    enqueue: bool = True,
) -> Job:
    """Create a queued job and, once the transaction commits, send it to its worker queue."""
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
    from kombu.exceptions import ChannelError

    from evalsite.celery import app

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
    from evalsite.runs.tasks import JOB_TASKS

    limit = older_than_s if older_than_s is not None else settings.EVALSITE_JOB_REDISPATCH_AFTER_S
    cutoff = timezone.now() - timedelta(seconds=limit)
    queues: dict[str, list[str]] = {}
    for kind, (_, queue) in JOB_TASKS.items():
        queues.setdefault(queue, []).append(kind)
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
    from evalsite.celery import app
    from evalsite.runs.tasks import JOB_TASKS

    names = {task.name for task, _ in JOB_TASKS.values()}
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


# ---------------------------------------------------------------------------------------------
# Eval sets


@dataclass
class ImportEntry:
    path: Path
    key: str
    text: str = ""
    speaker: str = ""
    class_label: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # manifest line, for messages


@dataclass
class ImportError_:
    where: str
    reason: str
    message: str


@dataclass
class ImportReport:
    eval_set_id: int
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[ImportError_] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "eval_set_id": self.eval_set_id,
            "total": self.total,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "errors": [e.__dict__ for e in self.errors],
        }


_KNOWN_COLUMNS = {"path", "key", "id", "text", "caption", "prompt", "speaker", "class_label", "label"}


def _entry_from_row(row: dict[str, Any], base: Path, where: str) -> ImportEntry:
    rel = str(row.get("path") or "").strip()
    path = (base / rel) if not Path(rel).is_absolute() else Path(rel)
    key = str(row.get("key") or row.get("id") or "").strip() or str(Path(rel).with_suffix("")).replace(
        "\\", "/"
    )
    metadata = {k: v for k, v in row.items() if k not in _KNOWN_COLUMNS and v not in (None, "")}
    return ImportEntry(
        path=path,
        key=key,
        text=str(row.get("text") or row.get("caption") or row.get("prompt") or ""),
        speaker=str(row.get("speaker") or ""),
        class_label=str(row.get("class_label") or row.get("label") or ""),
        metadata=metadata,
        where=where,
    )


def evalset_read_source(source: str | Path) -> tuple[list[ImportEntry], list[ImportError_]]:
    """List what a directory or manifest asks to import; malformed manifest lines become errors."""
    src = Path(source)
    if not src.exists():
        raise ApplicationError(IMPORT_SOURCE_MISSING.format(source=src))
    entries: list[ImportEntry] = []
    errors: list[ImportError_] = []
    if src.is_dir():
        for path in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
            rel = path.relative_to(src)
            entries.append(
                ImportEntry(path=path, key=str(rel.with_suffix("")).replace("\\", "/"), where=str(path))
            )
        return entries, errors
    suffix = src.suffix.lower()
    if suffix == ".csv":
        with src.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ApplicationError(
                    MANIFEST_NO_PATH_COLUMN.format(
                        source=src, columns=", ".join(reader.fieldnames or []) or "none"
                    )
                )
            for lineno, row in enumerate(reader, start=2):
                where = f"{src}:{lineno}"
                if not (row.get("path") or "").strip():
                    errors.append(ImportError_(where, "manifest_row", f"{where}: empty 'path'"))
                    continue
                entries.append(_entry_from_row(row, src.parent, where))
    elif suffix == ".jsonl":
        with src.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{src}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    errors.append(ImportError_(where, "manifest_row", f"{where}: not valid JSON ({exc.msg})"))
                    continue
                if not isinstance(row, dict) or not str(row.get("path") or "").strip():
                    errors.append(
                        ImportError_(where, "manifest_row", f"{where}: expected an object with a 'path'")
                    )
                    continue
                entries.append(_entry_from_row(row, src.parent, where))
    else:
        raise ApplicationError(IMPORT_SOURCE_KIND.format(source=src))
    return entries, errors


def _import_one(eval_set: EvalSet, entry: ImportEntry) -> str:
    """Import one file atomically; returns 'created' | 'updated' | 'unchanged'."""
    asset_created = False
    asset = None
    try:
        with transaction.atomic():
            asset, asset_created = audio_asset_ingest(source=entry.path, name=str(entry.path))
            fields = {
                "text": entry.text,
                "speaker": entry.speaker,
                "class_label": entry.class_label,
                "metadata": entry.metadata,
            }
            item = EvalItem.objects.select_for_update().filter(eval_set=eval_set, key=entry.key).first()
            if item is None:
                item = EvalItem(eval_set=eval_set, key=entry.key, reference=asset, **fields)
                item.full_clean(validate_unique=False)
                item.save()
                return "created"
            if item.reference_id != asset.pk:
                raise ApplicationError(ITEM_KEY_CONFLICT.format(key=entry.key, eval_set=eval_set.name))
            changed = [name for name, value in fields.items() if getattr(item, name) != value]
            if not changed:
                return "unchanged"
            for name in changed:
                setattr(item, name, fields[name])
            item.full_clean(validate_unique=False)
            item.save(update_fields=[*changed, "updated_at"])
            return "updated"
    except Exception:
        # The row went with the rollback; remove its file too so nothing is half-stored.
        if asset_created and asset is not None and not AudioAsset.objects.filter(pk=asset.pk).exists():
            default_storage.delete(asset.file.name)
        raise


def evalset_import(
    *,
    name: str,
    source: str | Path,
    description: str = "",
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Import a directory or manifest into the eval set ``name`` (created if needed).

    Each file is imported in its own transaction: a bad file is reported with its path and the
    reason and the good files next to it are imported. Re-importing the same audio creates nothing.
    """
    entries, errors = evalset_read_source(source)
    eval_set, _ = EvalSet.objects.get_or_create(name=name, defaults={"description": description})
    report = ImportReport(eval_set_id=eval_set.pk, total=len(entries) + len(errors), errors=list(errors))
    seen_keys: dict[str, str] = {}
    for index, entry in enumerate(entries, start=1):
        if entry.key in seen_keys:
            report.errors.append(
                ImportError_(
                    entry.where,
                    "duplicate_key",
                    f"{entry.where}: key {entry.key!r} also used by {seen_keys[entry.key]}",
                )
            )
        else:
            seen_keys[entry.key] = entry.where
            try:
                outcome = _import_one(eval_set, entry)
                setattr(report, outcome, getattr(report, outcome) + 1)
            except AudioValidationError as exc:
                report.errors.append(ImportError_(entry.where, exc.reason, str(exc)))
            except FileNotFoundError:
                report.errors.append(ImportError_(entry.where, "missing_file", f"{entry.path}: no such file"))
            except ApplicationError as exc:
                report.errors.append(ImportError_(entry.where, "conflict", f"{entry.where}: {exc.message}"))
            except ValidationError as exc:
                report.errors.append(
                    ImportError_(entry.where, "invalid", f"{entry.where}: {'; '.join(exc.messages)}")
                )
            except (OperationalError, InterfaceError):
                raise  # the database is gone, not the file: the task retries the whole import
            except Exception as exc:  # noqa: BLE001 - one file that breaks a library must not lose the others
                logger.exception("importing %s failed", entry.where)
                report.errors.append(
                    ImportError_(
                        entry.where, "error", f"{entry.where}: import failed ({type(exc).__name__}: {exc})"
                    )
                )
        if progress is not None:
            progress(index, len(entries), entry.key)
    return report


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
    """
    from celery.exceptions import SoftTimeLimitExceeded
    from django.db import InterfaceError, OperationalError

    job = job_claim(job_id=job_id, worker=worker)
    if job is None:
        return None
    last_beat = [0.0]

    def progress(done: int, total: int, message: str) -> None:
        now = timezone.now().timestamp()
        if now - last_beat[0] >= heartbeat_every_s or done >= total:
            last_beat[0] = now
            job_heartbeat(
                job_id=job_id, progress=done / total if total else 1.0, message=message, attempt=attempt
            )

    attempt = job.attempts
    try:
        result = work(job, progress)
    except SoftTimeLimitExceeded:
        limit = f"{time_limit_s:.0f} s" if time_limit_s else "its time limit"
        error = JOB_TIME_LIMIT.format(limit=limit, setting=time_limit_setting or "EVALSITE_TASK_TIME_LIMITS")
        return job_fail(job_id=job_id, error=error, attempt=attempt)
    except ApplicationError as exc:
        return job_fail(job_id=job_id, error=exc.message, result=exc.extra or None, attempt=attempt)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:  # noqa: BLE001 - the job must end with the reason, and the worker go on
        logger.exception("job %s failed", job_id)
        return job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}", attempt=attempt)
    return job_finish(job_id=job_id, result=result, attempt=attempt)


def evalset_import_job_work(job: Job, progress: ProgressFn) -> dict[str, Any]:
    """Body of an import job: params ``name``, ``source``, ``description``."""
    report = evalset_import(
        name=job.params["name"],
        source=job.params["source"],
        description=job.params.get("description", ""),
        progress=progress,
    )
    Job.objects.filter(pk=job.pk).update(eval_set_id=report.eval_set_id)
    result = report.as_dict()
    if report.total and not (report.created + report.updated + report.unchanged):
        raise ApplicationError(
            f"none of the {report.total} files could be imported; first error: {report.errors[0].message}",
            extra=result,
        )
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoints and generation

RUN_HAS_NO_EVAL_SET = "run {run!r} has no eval set; attach one before evaluating checkpoints."
KIND_MISMATCH = "run {run!r} is a {run_kind} run but {uri} holds a {model_kind} (family {family})."
RATE_MISMATCH = (
    "eval set {eval_set!r} has reference audio at {rates} Hz but the model runs at {model_rate} Hz; "
    "use a matching eval set or evaluate with params resample=true."
)
NO_REFERENCE = "item {key!r} has no reference audio; a {kind} needs one."
BAD_REFERENCE = "item {key!r}: its reference audio {path} cannot be used: {problem}"
GENERATION_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "batch_size": None,  # None: 16 on GPU, 4 on CPU
    "dtype": "fp32",  # or "bf16"
    "tf32": False,
    "resample": False,
    "cfg_scale": 3.0,
    "top_k": None,
    "top_p": None,
    "temperature": 1.0,
    "duration_s": None,  # generator: None → the reference's duration, else 4 s
}


CHECKPOINT_STEP_TAKEN = (
    "step {step} of run {run!r} is already registered as {existing}; not replaced with {uri}. "
    "Register the new file under another step, or delete the old checkpoint first."
)
CHECKPOINT_SHA256_INVALID = "sha256 must be 64 hexadecimal characters; got {value!r}."
CHECKPOINT_MISSING = "cannot load checkpoint {uri}: checkpoint not found: {uri}"
CHECKPOINT_SHA256_CHANGED = (
    "the checkpoint file no longer has the sha256 it was registered with; it was not loaded."
)


def _checkpoint_file_check(*, run: Run, uri: str, sha256: str) -> int | None:
    """Refuse a path outside the checkpoint roots or not a regular file, and a sha256 the file does not have.

    Returns the file's size, or None when this host does not see the file (the web server need not
    share the workers' filesystem): the worker checks again before it opens it.
    """
    try:
        with checkpoint_file_open(uri=uri, owner=run.owner) as opened:
            if sha256 and opened.sha256() != sha256:
                raise ApplicationError(
                    CHECKPOINT_SHA256_MISMATCH, extra={"fields": {"sha256": [CHECKPOINT_SHA256_MISMATCH]}}
                )
            return opened.stat.st_size
    except FileNotFoundError:
        return None


def _checkpoint_file_verified(checkpoint) -> OpenedCheckpoint:
    """On the worker, right before loading: the checked, opened file, its sha256 recorded or verified.

    The path is checked against the roots again and opened without following symlinks, because the
    file may have been swapped since it was registered.
    """
    from evalsite.runs.models import Checkpoint

    try:
        with checkpoint_file_open(uri=checkpoint.uri, owner=checkpoint.run.owner) as opened:
            digest = opened.sha256()
    except FileNotFoundError:
        raise ApplicationError(CHECKPOINT_MISSING.format(uri=checkpoint.uri)) from None
    if checkpoint.sha256 and digest != checkpoint.sha256:
        raise ApplicationError(CHECKPOINT_SHA256_CHANGED)
    if not checkpoint.sha256:
        Checkpoint.objects.filter(pk=checkpoint.pk).update(sha256=digest, size_bytes=opened.stat.st_size)
    return opened


def checkpoint_register(
    *,
    run: Run,
    step: int,
    uri: str,
    sha256: str = "",
    evaluate: bool = True,
    params: dict[str, Any] | None = None,
):
    """Register a checkpoint once per (run, step) and queue its generation job.

    Returns ``(checkpoint, created)``. Registering the same step again with the same file (and the
    same sha256, when both give one) returns the existing row and queues nothing, so a client may
    retry freely; the same step with another file is a ``ConflictError``. Safe against concurrent
    registrations of one step (the unique constraint decides; the loser gets the winner's row).
    The file must be a regular file under the checkpoint roots (``CheckpointPathRefused``) and have
    the sha256 given, if one is given.
    """
    from django.db import IntegrityError

    from evalsite.runs.models import Checkpoint

    sha256 = (sha256 or "").lower()
    if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        raise ApplicationError(
            CHECKPOINT_SHA256_INVALID.format(value=sha256),
            extra={"fields": {"sha256": [CHECKPOINT_SHA256_INVALID.format(value=sha256)]}},
        )

    def same_or_conflict(existing: Checkpoint):
        if existing.uri != uri or (sha256 and existing.sha256 and existing.sha256 != sha256):
            label = existing.uri + (f" (sha256 {existing.sha256[:12]}…)" if existing.sha256 else "")
            raise ConflictError(
                CHECKPOINT_STEP_TAKEN.format(step=step, run=run.name, existing=label, uri=uri)
            )
        return existing, False

    if params:
        generation_params(params)  # refused here, not later by the worker
    size = _checkpoint_file_check(run=run, uri=uri, sha256=sha256)
    existing = Checkpoint.objects.filter(run=run, step=step).first()
    if existing is not None:
        return same_or_conflict(existing)
    checkpoint = Checkpoint(run=run, step=step, uri=uri, sha256=sha256, size_bytes=size)
    checkpoint.full_clean(validate_unique=False)
    try:
        with transaction.atomic():
            checkpoint.save()
            if evaluate and run.eval_set_id is not None:
                job_create(kind=Job.Kind.GENERATION, run=run, checkpoint=checkpoint, params=params or {})
    except IntegrityError:
        existing = Checkpoint.objects.filter(run=run, step=step).first()
        if existing is None:
            raise
        return same_or_conflict(existing)
    return checkpoint, True


def generation_params(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Check them (evalsite.runs.params: types, ranges, known keys), fill defaults and return the canonical
    params with their hash (the natural key of outputs)."""
    from evalsite.runs.params import generation_params_check

    generation_params_check(params)
    full = {**GENERATION_DEFAULTS, **{k: v for k, v in params.items() if k != "device"}}
    # Batch size, precision and device change speed, not which audio an item gets: not in the key.
    keyed = {k: v for k, v in full.items() if k not in ("batch_size", "tf32")}
    return full, hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def _store_generation(
    *, checkpoint, item, job, params, params_hash, seed, audio, sample_rate, seconds, device, info
):
    """Upsert one output by its natural key; NaN/Inf output becomes a failed row, not audio."""
    from evalsite.audio.decoding import AudioValidationError, decoded_from_array
    from evalsite.audio.services import audio_asset_store
    from evalsite.runs.models import Generation

    natural = {"checkpoint": checkpoint, "item": item, "params_hash": params_hash, "seed": seed}
    defaults: dict[str, Any] = {
        "params": params,
        "job": job,
        "wall_time_s": seconds,
        "device": device,
        "info": info,
    }
    try:
        decoded = decoded_from_array(audio, sample_rate, name=f"{checkpoint}:{item.key}")
    except AudioValidationError as exc:
        decoded = None
        defaults.update(
            status=Generation.Status.FAILED, error=f"model output rejected: {exc.detail}", asset=None
        )
    # The asset and the row naming it commit together: a worker killed between the two leaves no
    # asset that nothing uses, and the resumed job stores the item again.
    with transaction.atomic():
        if decoded is not None:
            asset, _ = audio_asset_store(decoded=decoded, original_name=f"{item.key}.wav")
            defaults.update(status=Generation.Status.DONE, error="", asset=asset)
        generation, _ = Generation.objects.update_or_create(**natural, defaults=defaults)
    return generation


def checkpoint_set_status(*, checkpoint, status: str) -> None:
    """Record where the checkpoint is in the pipeline (shown on the run page)."""
    type(checkpoint).objects.filter(pk=checkpoint.pk).update(status=status)


def generation_job_work(job: Job, progress: ProgressFn) -> dict[str, Any]:
    """Generate the run's eval set with the job's checkpoint; resumable (done items are skipped)."""
    from evalsite.runs.models import Checkpoint, Generation

    checkpoint = job.checkpoint
    try:
        result = _generate(job, checkpoint, progress)
    except Exception:
        checkpoint_set_status(checkpoint=checkpoint, status=Checkpoint.Status.FAILED)
        raise
    if result["failed"] and not result["done"]:
        checkpoint_set_status(checkpoint=checkpoint, status=Checkpoint.Status.FAILED)
        first = Generation.objects.filter(checkpoint=checkpoint, status="failed").first()
        raise ApplicationError(f"every item failed; first: {first.item.key}: {first.error}", extra=result)
    if checkpoint.run.config.get("metrics") == []:
        checkpoint_set_status(checkpoint=checkpoint, status=Checkpoint.Status.DONE)
    else:
        # Next stage of the pipeline; the metrics job moves the checkpoint to done.
        checkpoint_set_status(checkpoint=checkpoint, status=Checkpoint.Status.SCORING)
        params = {"params_hash": result["params_hash"]}
        if job.params.get("device") not in (None, "", "auto"):
            params["device"] = job.params["device"]
        result["metrics_job_id"] = job_create(
            kind=Job.Kind.METRICS, run=checkpoint.run, checkpoint=checkpoint, params=params
        ).pk
    return result


def _generate(job: Job, checkpoint, progress: ProgressFn) -> dict[str, Any]:
    import torch

    import models
    from evalsite.audio.selectors import AudioCache, audio_asset_problem
    from evalsite.runs import generation as gen
    from evalsite.runs.models import Checkpoint, Generation

    run = checkpoint.run
    if run.eval_set_id is None:
        raise ApplicationError(RUN_HAS_NO_EVAL_SET.format(run=run.name))
    params, params_hash = generation_params(job.params)
    device = gen.pick_device(job.params.get("device"))
    torch.backends.cuda.matmul.allow_tf32 = bool(params["tf32"])
    torch.backends.cudnn.allow_tf32 = bool(params["tf32"])
    checkpoint_set_status(checkpoint=checkpoint, status=Checkpoint.Status.GENERATING)

    checked = _checkpoint_file_verified(checkpoint)
    from evalsite.runs.families import MODEL_FAMILY_AUTO, model_plugins

    family = None if run.model_family in ("", MODEL_FAMILY_AUTO) else run.model_family
    try:
        model = gen.model_cache.get(checked.path, family=family, device=device, plugins=model_plugins())
    except (models.ModelLoadError, models.CheckpointNotFoundError) as exc:
        raise ApplicationError(f"cannot load checkpoint {checkpoint.uri}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a malformed file breaks in loading, the job names the file
        logger.exception("loading checkpoint %s failed unexpectedly", checkpoint.uri)
        raise ApplicationError(
            f"cannot load checkpoint {checkpoint.uri}: {type(exc).__name__}: {exc}"
        ) from None
    if not checked.still_at_path():  # swapped (for a symlink, another file) while it was loading
        raise CheckpointPathRefused()
    if model.kind != run.kind:
        raise ApplicationError(
            KIND_MISMATCH.format(
                run=run.name,
                run_kind=run.kind,
                uri=checkpoint.uri,
                model_kind=model.kind,
                family=model.family,
            )
        )

    items = list(run.eval_set.items.select_related("reference").order_by("key"))
    done_keys = set(
        Generation.objects.filter(checkpoint=checkpoint, params_hash=params_hash).values_list(
            "item_id", flat=True
        )
    )
    todo = [item for item in items if item.pk not in done_keys]
    batch_size = params["batch_size"] or (16 if device.startswith("cuda") else 4)
    info: dict[str, Any] = {"family": model.family, "sample_rate": model.sample_rate}
    counts = {"done": 0, "failed": 0}
    store = dict(checkpoint=checkpoint, job=job, params=params, params_hash=params_hash, device=device)

    def record(generation) -> None:
        counts[generation.status] += 1
        progress(len(done_keys) + counts["done"] + counts["failed"], len(items), generation.item.key)

    if model.kind in ("vocoder", "tokenizer"):
        if model.kind == "tokenizer":
            info.update(
                tokens_per_second=float(model.tokens_per_second), bits_per_second=float(model.bits_per_second)
            )
        missing = [item for item in todo if item.reference is None]
        for item in missing:
            record(
                Generation.objects.update_or_create(
                    checkpoint=checkpoint,
                    item=item,
                    params_hash=params_hash,
                    seed=params["seed"],
                    defaults={
                        "params": params,
                        "job": job,
                        "status": Generation.Status.FAILED,
                        "error": NO_REFERENCE.format(key=item.key, kind=model.kind),
                    },
                )[0]
            )
        todo = [item for item in todo if item.reference is not None]
        rates = sorted({item.reference.sample_rate for item in todo})
        if not params["resample"] and any(rate != model.sample_rate for rate in rates):
            raise ApplicationError(
                RATE_MISMATCH.format(
                    eval_set=run.eval_set.name, rates=", ".join(map(str, rates)), model_rate=model.sample_rate
                )
            )
        # Rates differ here only when resampling was asked for (checked above).
        audio = AudioCache()
        # A reference damaged on disk since its import fails its own item, not the whole job.
        usable = []
        for item in todo:
            problem = audio_asset_problem(audio, item.reference)
            if problem is None:
                usable.append(item)
                continue
            record(
                Generation.objects.update_or_create(
                    checkpoint=checkpoint,
                    item=item,
                    params_hash=params_hash,
                    seed=params["seed"],
                    defaults={
                        "params": params,
                        "job": job,
                        "status": Generation.Status.FAILED,
                        "error": BAD_REFERENCE.format(
                            key=item.key, path=item.reference.file.name, problem=problem
                        ),
                    },
                )[0]
            )
        todo = usable
        waves = [audio.mono(item.reference, model.sample_rate) for item in todo]
        fn = model.copy_synthesis if model.kind == "vocoder" else model.reconstruct
        for out in gen.run_waveform_batches(
            fn, waves, batch_size=batch_size, device=device, dtype=params["dtype"]
        ):
            item = todo[out.index]
            record(
                _store_generation(
                    item=item,
                    seed=params["seed"],
                    audio=out.audio,
                    sample_rate=model.sample_rate,
                    seconds=out.seconds,
                    info=info,
                    **store,
                )
            )
    else:
        text_embedders: dict = {}
        for item in todo:
            seed = gen.item_seed(params["seed"], item.key)
            try:
                cond = _generator_condition(model, run, item, text_embedders)
            except ApplicationError as exc:
                record(
                    Generation.objects.update_or_create(
                        checkpoint=checkpoint,
                        item=item,
                        params_hash=params_hash,
                        seed=seed,
                        defaults={
                            "params": params,
                            "job": job,
                            "status": Generation.Status.FAILED,
                            "error": exc.message,
                        },
                    )[0]
                )
                continue
            duration = params["duration_s"] or (item.reference.duration_s if item.reference else 4.0)
            started = time.perf_counter()
            with torch.inference_mode(), gen.autocast(device, params["dtype"]):
                audio = model.generate(
                    cond.to(device),
                    seed=seed,
                    cfg_scale=params["cfg_scale"],
                    top_k=params["top_k"],
                    top_p=params["top_p"],
                    temperature=params["temperature"],
                    duration_s=duration,
                )
            audio_np = audio.float().cpu().numpy()[0]
            record(
                _store_generation(
                    item=item,
                    seed=seed,
                    audio=audio_np,
                    sample_rate=model.sample_rate,
                    seconds=time.perf_counter() - started,
                    info=info,
                    **store,
                )
            )
    produced = Generation.objects.filter(checkpoint=checkpoint, params_hash=params_hash)
    seconds = sum(g.wall_time_s or 0.0 for g in produced.filter(status="done"))
    audio_s = sum(g.asset.duration_s for g in produced.filter(status="done").select_related("asset"))
    return {
        **info,
        "device": device,
        "params_hash": params_hash,
        "items": len(items),
        "skipped_already_done": len(done_keys),
        "done": produced.filter(status="done").count(),
        "failed": produced.filter(status="failed").count(),
        "realtime_factor": audio_s / seconds if seconds else None,
    }


CLASS_LABEL_UNKNOWN = "item {key!r}: class label {label!r} is not in the run's config class_names {names}."
NO_CONDITION = (
    "item {key!r}: a text-conditioned generator needs a {dim}-d condition vector; give the item a "
    "text (embedded with the run's condition_embedder, default {embedder}) or a metadata "
    "'condition' list of {dim} floats."
)
CONDITION_DIM_MISMATCH = (
    "item {key!r}: {embedder} gives {got}-d text embeddings but the generator expects {dim}-d."
)
DEFAULT_CONDITION_EMBEDDER = "clap-laion-630k-audioset-48k"


def _generator_condition(model, run: Run, item: EvalItem, text_embedders: dict | None = None):
    """The generator's input for one item: a class id, a stored condition vector, or the CLAP
    text embedding of the item's text (the embedder is loaded once per job via ``text_embedders``)."""
    import torch

    if getattr(model.config, "num_classes", 0) > 0:
        names = run.config.get("class_names")
        label = item.class_label
        if names:
            if label not in names:
                raise ApplicationError(CLASS_LABEL_UNKNOWN.format(key=item.key, label=label, names=names))
            class_id = names.index(label)
        elif label.isdigit() and int(label) < model.config.num_classes:
            class_id = int(label)
        else:
            raise ApplicationError(CLASS_LABEL_UNKNOWN.format(key=item.key, label=label, names=names or []))
        return torch.tensor([class_id], dtype=torch.long)
    dim = model.config.cond_dim
    vector = item.metadata.get("condition")
    if isinstance(vector, list) and len(vector) == dim:
        return torch.tensor([vector], dtype=torch.float32)
    embedder_name = run.config.get("condition_embedder", DEFAULT_CONDITION_EMBEDDER)
    if not item.text:
        raise ApplicationError(NO_CONDITION.format(key=item.key, dim=dim, embedder=embedder_name))
    from metrics.embedders import MissingWeightsError, WeightIntegrityError, get_embedder

    cache = text_embedders if text_embedders is not None else {}
    try:
        if embedder_name not in cache:
            cache[embedder_name] = get_embedder(embedder_name)
        embedding = cache[embedder_name].embed_text([item.text])[0]
    except (MissingWeightsError, WeightIntegrityError) as exc:
        raise ApplicationError(f"item {item.key!r}: cannot embed its text: {exc}") from None
    if embedding.shape[-1] != dim:
        raise ApplicationError(
            CONDITION_DIM_MISMATCH.format(
                key=item.key, embedder=embedder_name, got=embedding.shape[-1], dim=dim
            )
        )
    return torch.as_tensor(embedding, dtype=torch.float32).reshape(1, dim)
