"""Reads for runs, eval sets and jobs."""

from collections import defaultdict
from typing import Any

from django.db.models import Count, QuerySet

from evalsite.jobs.models import Job
from evalsite.runs.access import jobs_visible, runs_visible
from evalsite.runs.models import Checkpoint, EvalSet, Generation, Run


def evalset_list() -> QuerySet[EvalSet]:
    return EvalSet.objects.annotate(item_count=Count("items")).order_by("name")


def run_list(*, user) -> QuerySet[Run]:
    return (
        runs_visible(user)
        .select_related("eval_set")
        .annotate(checkpoint_count=Count("checkpoints"))
        .order_by("name")
    )


def job_list_recent(*, user, limit: int = 50) -> QuerySet[Job]:
    """The newest jobs the user may see, with the run, checkpoint and eval set each belongs to."""
    return jobs_visible(user).select_related("run", "checkpoint", "eval_set").order_by("-created_at")[:limit]


def run_checkpoint_table(*, run: Run) -> list[dict]:
    """Each checkpoint of the run with where it is in the pipeline, for the run page.

    Four queries whatever the number of checkpoints (jobs, generation counts and alert counts are
    read for the whole run and grouped here).
    """
    jobs: dict[int, list[Job]] = defaultdict(list)
    for job in Job.objects.filter(checkpoint__run=run).only(
        "id", "checkpoint_id", "kind", "status", "progress", "error", "created_at"
    ):
        jobs[job.checkpoint_id].append(job)
    generations: dict[int, dict[str, int]] = defaultdict(lambda: {s: 0 for s in Generation.Status.values})
    for checkpoint_id, status, n in (
        Generation.objects.filter(checkpoint__run=run)
        .order_by()
        .values_list("checkpoint_id", "status")
        .annotate(n=Count("id"))
    ):
        generations[checkpoint_id][status] += n
    # Counted through the reverse relation: runs sits below alerts and does not import its models.
    alerts = dict(
        Checkpoint.objects.filter(run=run)
        .order_by()
        .annotate(n=Count("alerts"))
        .filter(n__gt=0)
        .values_list("pk", "n")
    )
    rows = []
    for checkpoint in Checkpoint.objects.filter(run=run).order_by("step"):
        rows.append(
            {
                "checkpoint": checkpoint,
                "pipeline": checkpoint_pipeline(checkpoint, jobs[checkpoint.pk]),
                "generations": dict(generations[checkpoint.pk]),
                "alerts": alerts.get(checkpoint.pk, 0),
            }
        )
    return rows


def run_alerts(*, run: Run, limit: int = 50):
    """The run's newest alerts, for the run page."""
    return run.alerts.select_related("checkpoint").order_by("-cursor")[:limit]


def run_generation_grid(*, run: Run, last: int | None = None) -> tuple[list[Checkpoint], list[dict]]:
    """Items × checkpoints: the generation (or None) in each cell, for listening side by side.

    ``last`` keeps only the latest ``last`` checkpoints by step (the run page shows a few; None: all).
    """
    checkpoints = list(Checkpoint.objects.filter(run=run).order_by("step"))
    if last is not None:
        checkpoints = checkpoints[-last:] if last > 0 else []
    if run.eval_set_id is None:
        return checkpoints, []
    generations = Generation.objects.filter(checkpoint__run=run)
    if last is not None:
        generations = generations.filter(checkpoint_id__in=[c.pk for c in checkpoints])
    cells = {
        (g.item_id, g.checkpoint_id): g for g in generations.select_related("asset").order_by("created_at")
    }
    rows = []
    for item in run.eval_set.items.select_related("reference").order_by("key"):
        rows.append({"item": item, "cells": [cells.get((item.pk, c.pk)) for c in checkpoints]})
    return checkpoints, rows


def checkpoint_pipeline(checkpoint: Checkpoint, jobs: list[Job]) -> dict[str, Any]:
    """Stage, per-stage job state and the failure reason of one checkpoint, for the run page and API."""
    by_kind: dict[str, Job] = {}
    for job in sorted(jobs, key=lambda j: j.created_at):
        by_kind[job.kind] = job  # the latest job of each kind
    stages = []
    for kind in (Job.Kind.GENERATION, Job.Kind.METRICS, Job.Kind.DETECTION):
        job = by_kind.get(kind)
        stages.append(
            {
                "kind": kind,
                "status": job.status if job else None,
                "progress": job.progress if job else 0.0,
                "error": job.error if job else "",
            }
        )
    error = next((s["error"] for s in stages if s["status"] == Job.Status.FAILED), "")
    return {"status": checkpoint.status, "stages": stages, "error": error}
