"""The runs app's pages: the overview and an eval set. A run's own page reads analysis (its metric
grid and failed jobs), so it lives in evalsite.analysis.run_views under the same URL and name."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from evalsite.runs.models import EvalSet
from evalsite.runs.selectors import (
    evalset_list,
    job_list_recent,
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
