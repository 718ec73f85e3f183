from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from evalsite.runs.models import EvalSet, Run
from evalsite.runs.selectors import (evalset_list, job_list_recent, run_alerts, run_checkpoint_table,
                                     run_generation_grid, run_list)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "runs/overview.html",
        {"eval_sets": evalset_list(), "runs": run_list(), "jobs": job_list_recent()},
    )


@login_required
def evalset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    eval_set = get_object_or_404(EvalSet, pk=pk)
    items = eval_set.items.select_related("reference").order_by("key")
    return render(request, "runs/evalset_detail.html", {"eval_set": eval_set, "items": items})



@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("eval_set"), pk=pk)
    from evalsite.scoring.selectors import run_metric_table

    checkpoints, grid = run_generation_grid(run=run)
    metrics = run_metric_table(run=run)
    metric_rows = [
        {"checkpoint": row["checkpoint"],
         "cells": [(cell, metrics["best"].get(i) == row["checkpoint"].pk) for i, cell in enumerate(row["cells"])]}
        for row in metrics["rows"]
    ]
    return render(
        request,
        "runs/run_detail.html",
        {"run": run, "table": run_checkpoint_table(run=run), "checkpoints": checkpoints, "grid": grid,
         "metric_columns": metrics["columns"], "metric_rows": metric_rows, "alerts": run_alerts(run=run)},
    )
