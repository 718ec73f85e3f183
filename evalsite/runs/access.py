"""Who may see which run, on the researcher pages and through the API.

A run is visible to its owner, its collaborators and superusers; nothing else, and nobody anonymous.
A run token's caller (``RunPrincipal``) sees its own run and nothing else.
Pages and endpoints answer "not found" (404) for a run that is not visible, never "forbidden": a
researcher learns nothing about runs that are not theirs. Eval sets are shared by all researchers.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, Run


@dataclass(eq=False)
class RunPrincipal:
    """The caller behind a run's API token (evalsite.api.authentication): it acts on its own run only."""

    run: Run
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_staff: bool = False
    is_superuser: bool = False

    @property
    def pk(self) -> str:  # throttles key on it
        return f"run:{self.run.pk}"

    @property
    def username(self) -> str:
        return f"run {self.run.name}"

    def __str__(self) -> str:
        return self.username


def runs_visible(user) -> QuerySet[Run]:
    if isinstance(user, RunPrincipal):
        return Run.objects.filter(pk=user.run.pk)
    if not getattr(user, "is_authenticated", False):
        return Run.objects.none()
    if user.is_superuser:
        return Run.objects.all()
    # A subquery, not a join on collaborators: the result stays one row per run, so callers can annotate
    # counts on it without them being multiplied.
    shared = Run.collaborators.through.objects.filter(user=user).values("run_id")
    return Run.objects.filter(Q(owner=user) | Q(pk__in=shared))


def checkpoints_visible(user) -> QuerySet[Checkpoint]:
    if getattr(user, "is_superuser", False):
        return Checkpoint.objects.all()
    return Checkpoint.objects.filter(run__in=runs_visible(user).values("pk"))


def jobs_visible(user) -> QuerySet[Job]:
    """Jobs of visible runs, plus the run-less ones (eval set imports), which every researcher may see."""
    if getattr(user, "is_superuser", False):
        return Job.objects.all()
    return Job.objects.filter(
        Q(run__isnull=True, checkpoint__isnull=True) | Q(run__in=runs_visible(user).values("pk"))
    )
