"""A checkpoint's whole path through evaluation, decided here and nowhere else.

    registered → generating → scoring → detecting → done → alert rules → automatic listening test
    (a stage whose job fails: → failed)

- A checkpoint enters at ``runs.services.checkpoint_evaluate`` (registration through the API, the
  client, the directory watcher or a command; the API's "evaluate again"), which queues its
  generation job.
- When a stage's job starts (each attempt), the checkpoint moves to that stage.
- Generation done → scoring, and a metrics job on the params just generated. A run whose config
  turns metrics off (``"metrics": []``) is done there: with nothing measured, no rule applies.
- Metrics done → detecting, and a detection job. A run whose config turns the detectors off
  (``"detectors": []``) is done there and finishes.
- Detection done → done, and finishes.
- Finishing: the run's alert rules on the checkpoint, then the automatic listening test if the run
  asks for one (``evalsite.pipeline.auto_test``).
- A stage's job that fails moves the checkpoint to failed, if it is still in that stage (a job
  re-run on a checkpoint that moved on since changes nothing).

The stages' jobs know nothing of this module: it hears them through the jobs registry
(``PipelineConfig.ready`` subscribes ``CHECKPOINT_PIPELINE``). What it returns for a successful job
(the next job's id, the alerts, the listening test) is recorded in that job's result.
"""

from typing import Any

from django.db import transaction

from evalsite.alerts.services import alerts_evaluate_checkpoint
from evalsite.jobs.models import Job
from evalsite.jobs.registry import JobListener
from evalsite.jobs.services import job_create
from evalsite.pipeline.auto_test import auto_listening_test_maybe
from evalsite.runs.models import Checkpoint
from evalsite.runs.services import checkpoint_transition

STAGE_OF_JOB: dict[str, str] = {
    Job.Kind.GENERATION: Checkpoint.Status.GENERATING,
    Job.Kind.METRICS: Checkpoint.Status.SCORING,
    Job.Kind.DETECTION: Checkpoint.Status.DETECTING,
}


def stage_started(job: Job) -> None:
    stage = STAGE_OF_JOB.get(job.kind)
    if stage is not None and job.checkpoint_id is not None:
        checkpoint_transition(checkpoint_id=job.checkpoint_id, to=stage)


def stage_succeeded(job: Job, result: dict[str, Any]) -> dict[str, Any]:
    """Move the checkpoint on after its stage's job did its work; returns what to add to the job's result."""
    if job.kind not in STAGE_OF_JOB or job.checkpoint_id is None:
        return {}
    checkpoint = Checkpoint.objects.select_related("run").get(pk=job.checkpoint_id)
    if job.kind == Job.Kind.GENERATION:
        return _after_generation(checkpoint, job=job, params_hash=result["params_hash"])
    if job.kind == Job.Kind.METRICS:
        return _after_metrics(checkpoint, params_hash=result["params_hash"])
    return _after_detection(checkpoint)


def stage_failed(job: Job) -> None:
    stage = STAGE_OF_JOB.get(job.kind)
    if stage is None or job.checkpoint_id is None:
        return
    with transaction.atomic():
        status = (
            Checkpoint.objects.select_for_update()
            .filter(pk=job.checkpoint_id)
            .values_list("status", flat=True)
            .first()
        )
        if status == stage:
            checkpoint_transition(checkpoint_id=job.checkpoint_id, to=Checkpoint.Status.FAILED)


def _after_generation(checkpoint: Checkpoint, *, job: Job, params_hash: str) -> dict[str, Any]:
    if checkpoint.run.config.get("metrics") == []:
        checkpoint_transition(checkpoint_id=checkpoint.pk, to=Checkpoint.Status.DONE)
        return {}
    checkpoint_transition(checkpoint_id=checkpoint.pk, to=Checkpoint.Status.SCORING)
    params = {"params_hash": params_hash}
    if job.params.get("device") not in (None, "", "auto"):
        params["device"] = job.params["device"]
    metrics_job = job_create(kind=Job.Kind.METRICS, run=checkpoint.run, checkpoint=checkpoint, params=params)
    return {"metrics_job_id": metrics_job.pk}


def _after_metrics(checkpoint: Checkpoint, *, params_hash: str) -> dict[str, Any]:
    if checkpoint.run.config.get("detectors") == []:
        return _finish(checkpoint)
    checkpoint_transition(checkpoint_id=checkpoint.pk, to=Checkpoint.Status.DETECTING)
    detection_job = job_create(
        kind=Job.Kind.DETECTION,
        run=checkpoint.run,
        checkpoint=checkpoint,
        params={"params_hash": params_hash},
    )
    return {"detection_job_id": detection_job.pk}


def _after_detection(checkpoint: Checkpoint) -> dict[str, Any]:
    return _finish(checkpoint)


def _finish(checkpoint: Checkpoint) -> dict[str, Any]:
    # Done and its alerts commit together: a training job that sees "done" finds the alerts too.
    with transaction.atomic():
        checkpoint_transition(checkpoint_id=checkpoint.pk, to=Checkpoint.Status.DONE)
        alerts = alerts_evaluate_checkpoint(checkpoint=checkpoint)
    out: dict[str, Any] = {"alerts": [a.cursor for a in alerts]}
    test = auto_listening_test_maybe(checkpoint=checkpoint)
    if test is not None:
        out["listening_test"] = test.pk
    return out


CHECKPOINT_PIPELINE = JobListener(started=stage_started, succeeded=stage_succeeded, failed=stage_failed)
