"""Looking up a run for an API caller (the visibility rules, shared with the researcher pages and the
media files, live in ``evalsite.runs.access``).

Everything else is "not found" (404), never "forbidden": a caller learns nothing about runs that
are not theirs.
"""

from __future__ import annotations

from rest_framework import exceptions

from evalsite.core.exceptions import NotFoundError
from evalsite.runs.access import RunPrincipal, runs_visible
from evalsite.runs.models import Run

RUN_NOT_FOUND = "Run {run_id} does not exist or is not yours."
RUN_TOKEN_CANNOT = "A run token can only act on its own run; {what} needs a researcher token."


def run_for(user, run_id: int) -> Run:
    if isinstance(user, RunPrincipal):
        if user.run.pk == run_id:
            return user.run
        raise NotFoundError(RUN_NOT_FOUND.format(run_id=run_id))
    run = runs_visible(user).filter(pk=run_id).select_related("eval_set").first()
    if run is None:
        raise NotFoundError(RUN_NOT_FOUND.format(run_id=run_id))
    return run


def require_researcher(user, what: str) -> None:
    if isinstance(user, RunPrincipal):
        raise exceptions.PermissionDenied(RUN_TOKEN_CANNOT.format(what=what))
