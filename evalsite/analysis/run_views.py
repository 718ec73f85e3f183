"""Researcher pages: a run's page (served as runs:run-detail), its charts (metrics and detector rates over step, detector-listener agreement)
and the checkpoint comparison page."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from evalsite.analysis.figures_runs import direction_arrow, run_figures
from evalsite.analysis.run_selectors import (
    checkpoint_choices,
    checkpoint_comparison,
    run_detector_agreement,
    run_detector_rates,
    run_failed_jobs,
    run_human_scores,
    run_metric_grid,
    run_metric_series,
)
from evalsite.runs.access import runs_visible
from evalsite.runs.selectors import run_alerts, run_checkpoint_table, run_generation_grid

MAX_COMPARED = 50
BAD_CHECKPOINT_ID = "Ignored {values}: a checkpoint id is a whole number."
UNKNOWN_CHECKPOINTS = "No checkpoint has id {ids}."
TOO_MANY = "Only the first {n} checkpoints are compared."


def _is_id(value: str) -> bool:
    value = value.strip()
    return value.isascii() and value.isdigit() and len(value) < 19


@login_required
@require_GET
def run_analysis(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(runs_visible(request.user).select_related("eval_set"), pk=pk)
    metrics = run_metric_series(run=run)
    rates = run_detector_rates(run=run)
    for metric in metrics:
        metric["arrow"] = direction_arrow(metric["higher_is_better"])
    return render(
        request,
        "analysis/run_analysis.html",
        {
            "run": run,
            "metrics": metrics,
            "rates": rates,
            "figures": run_figures(metrics, rates),
            "agreement": run_detector_agreement(run=run),
        },
    )


@login_required
@require_GET
def checkpoint_compare(request: HttpRequest) -> HttpResponse:
    raw = request.GET.getlist("c")
    ids = [int(v) for v in raw if _is_id(v)]
    messages = []
    if bad := [v for v in raw if not _is_id(v)]:
        messages.append(BAD_CHECKPOINT_ID.format(values=", ".join(repr(v) for v in bad)))
    if len(set(ids)) > MAX_COMPARED:
        ids = list(dict.fromkeys(ids))[:MAX_COMPARED]
        messages.append(TOO_MANY.format(n=MAX_COMPARED))
    comparison = checkpoint_comparison(checkpoint_ids=ids, user=request.user) if ids else None
    if comparison and comparison["missing"]:
        messages.append(UNKNOWN_CHECKPOINTS.format(ids=", ".join(map(str, comparison["missing"]))))
    for column in comparison["columns"] if comparison else []:
        column["arrow"] = direction_arrow(column["higher_is_better"])
    return render(
        request,
        "analysis/run_compare.html",
        {
            "choices": checkpoint_choices(user=request.user),
            "selected": set(ids),
            "comparison": comparison,
            "messages": messages,
        },
    )


LISTEN_GRID_CHECKPOINTS = 8
"""The run page's listen grid shows the latest few checkpoints (``?listen=all``: every one), so a run
with hundreds of checkpoints does not render hundreds of audio players per item."""


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(runs_visible(request.user).select_related("eval_set"), pk=pk)
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
            "human": run_human_scores(run=run, user=request.user),
        },
    )
