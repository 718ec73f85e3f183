"""Reads for runs, eval sets and jobs."""

from django.db.models import Count, QuerySet

from evalsite.runs.models import EvalSet, Job, Run


def evalset_list() -> QuerySet[EvalSet]:
    return EvalSet.objects.annotate(item_count=Count("items")).order_by("name")


def run_list() -> QuerySet[Run]:
    return Run.objects.select_related("eval_set").annotate(checkpoint_count=Count("checkpoints")).order_by("name")


def job_list_recent(*, limit: int = 50) -> QuerySet[Job]:
    return Job.objects.select_related("run", "eval_set").order_by("-created_at")[:limit]
