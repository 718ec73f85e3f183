from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from evalsite.runs.access import runs_visible
from evalsite.runs.models import EvalSet
from evalsite.runs.selectors import (
    evalset_list,
    job_list_recent,
    run_alerts,
    run_checkpoint_table,
    run_generation_grid,
    run_list,
)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "runs/overview.html",
        {
            "eval_sets": evalset_list(),
            "runs": run_list(user=request.user),
            "jobs": job_list_recent(user=request.user),
        },
    )


@login_required
def evalset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    eval_set = get_object_or_404(EvalSet, pk=pk)
    items = eval_set.items.select_related("reference").order_by("key")
    return render(request, "runs/evalset_detail.html", {"eval_set": eval_set, "items": items})


LISTEN_GRID_CHECKPOINTS = 8
"""The run page's listen grid shows the latest few checkpoints (``?listen=all``: every one), so a run
with hundreds of checkpoints does not render hundreds of audio players per item."""


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(runs_visible(request.user).select_related("eval_set"), pk=pk)
    from evalsite.analysis.run_selectors import run_failed_jobs, run_metric_grid, run_metric_series

    listen_all = request.GET.get("listen") == "all"
    checkpoints, grid = run_generation_grid(run=run, last=None if listen_all else LISTEN_GRID_CHECKPOINTS)
    table = run_checkpoint_table(run=run)
    metrics = run_metric_grid(run_metric_series(run=run))
    return render(
        request,
        "runs/run_detail.html",
        {
            "run": run,
            "table": table,
            "checkpoints": checkpoints,
            "grid": grid,
            "listen_all": listen_all,
            "listen_latest": LISTEN_GRID_CHECKPOINTS,
            "checkpoint_count": len(table),
            "metric_columns": metrics["columns"],
            "metric_rows": metrics["rows"],
            "alerts": run_alerts(run=run),
            "failed_jobs": run_failed_jobs(run=run),
        },
    )
