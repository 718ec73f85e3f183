"""Reads for runs, eval sets and jobs."""

from django.db.models import Count, QuerySet

from evalsite.runs.models import Checkpoint, EvalSet, Generation, Job, Run


def evalset_list() -> QuerySet[EvalSet]:
    return EvalSet.objects.annotate(item_count=Count("items")).order_by("name")


def run_list() -> QuerySet[Run]:
    return Run.objects.select_related("eval_set").annotate(checkpoint_count=Count("checkpoints")).order_by("name")


def job_list_recent(*, limit: int = 50) -> QuerySet[Job]:
    return Job.objects.select_related("run", "eval_set").order_by("-created_at")[:limit]


def run_checkpoint_table(*, run: Run) -> list[dict]:
    """Each checkpoint of the run with where it is in the pipeline, for the run page."""
    from evalsite.runs.pipeline import checkpoint_pipeline

    rows = []
    for checkpoint in Checkpoint.objects.filter(run=run).order_by("step").prefetch_related("jobs"):
        counts = {s: 0 for s in Generation.Status.values}
        for status in checkpoint.generations.values_list("status", flat=True):
            counts[status] += 1
        rows.append({"checkpoint": checkpoint, "pipeline": checkpoint_pipeline(checkpoint, list(checkpoint.jobs.all())),
                     "generations": counts, "alerts": checkpoint.alerts.count()})
    return rows


def run_alerts(*, run: Run, limit: int = 50):
    """The run's newest alerts, for the run page."""
    return run.alerts.select_related("checkpoint").order_by("-cursor")[:limit]


def run_generation_grid(*, run: Run) -> tuple[list[Checkpoint], list[dict]]:
    """Items × checkpoints: the generation (or None) in each cell, for listening side by side."""
    checkpoints = list(Checkpoint.objects.filter(run=run).order_by("step"))
    if run.eval_set_id is None:
        return checkpoints, []
    cells = {
        (g.item_id, g.checkpoint_id): g
        for g in Generation.objects.filter(checkpoint__run=run).select_related("asset").order_by("created_at")
    }
    rows = []
    for item in run.eval_set.items.select_related("reference").order_by("key"):
        rows.append({"item": item, "cells": [cells.get((item.pk, c.pk)) for c in checkpoints]})
    return checkpoints, rows
