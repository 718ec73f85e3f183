"""What the API's write endpoints do, as services: a run registered together with its alert rules and
webhook secret, a run's settings changed, a checkpoint sent for evaluation, a researcher token issued.

They sit in the API layer because they tie runs to alerts (a run is registered with its default rules),
and alerts sit above runs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from evalsite.alerts.services import alert_rules_ensure_defaults, webhook_secret_new
from evalsite.api.authentication import RESEARCHER_TOKEN_PREFIX, token_hash
from evalsite.api.models import ResearcherToken
from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, EvalSet, Run
from evalsite.runs.params import generation_params
from evalsite.runs.services import RUN_HAS_NO_EVAL_SET, checkpoint_evaluate, run_create

RUN_NAME_TAKEN = "a run named {name!r} already exists."
EVAL_SET_UNKNOWN = (
    "no eval set named {name!r}; import it first (manage.py import_evalset) or pick one of: {known}."
)
CHECKPOINT_NOT_FOUND = "run {run!r} has no checkpoint at step {step}."
EVALUATION_BUSY = (
    "step {step} of run {run!r} is being evaluated now (job {job_id} is {status}); try again when it ends."
)
RUN_SETTINGS = ("model_family", "config", "checkpoint_dir", "checkpoint_pattern")


def _field_error(
    field: str, message: str, error: type[ApplicationError] = ApplicationError
) -> ApplicationError:
    return error(message, extra={"fields": {field: [message]}})


@dataclass(frozen=True)
class RunRegistration:
    run: Run
    token: str
    webhook_secret: str | None  # shown once, only when a webhook was set


@transaction.atomic
def run_register(
    *,
    owner,
    name: str,
    kind: str,
    model_family: str,
    eval_set: str = "",
    config: dict[str, Any] | None = None,
    checkpoint_dir: str = "",
    checkpoint_pattern: str = "",
    webhook_url: str = "",
) -> RunRegistration:
    """A new run with its token, its default alert rules and (with a webhook) a fresh HMAC key."""
    found_eval_set = None
    if eval_set:
        found_eval_set = EvalSet.objects.filter(name=eval_set).first()
        if found_eval_set is None:
            known = (
                ", ".join(EvalSet.objects.order_by("name").values_list("name", flat=True)[:20]) or "none yet"
            )
            raise _field_error("eval_set", EVAL_SET_UNKNOWN.format(name=eval_set, known=known))
    if Run.objects.filter(name=name).exists():
        raise _field_error("name", RUN_NAME_TAKEN.format(name=name), ConflictError)
    run, token = run_create(
        name=name,
        kind=kind,
        model_family=model_family,
        eval_set=found_eval_set,
        config=config or {},
        checkpoint_dir=checkpoint_dir,
        checkpoint_pattern=checkpoint_pattern,
        owner=owner,
    )
    secret = None
    if webhook_url:
        secret = webhook_secret_new()
        run.webhook_url, run.webhook_secret = webhook_url, secret
        run.save(update_fields=["webhook_url", "webhook_secret", "updated_at"])
    alert_rules_ensure_defaults(run=run)
    return RunRegistration(run=run, token=token, webhook_secret=secret)


def run_update(*, run: Run, **changes: Any) -> str | None:
    """Change the run's settings given in ``changes``; the new webhook HMAC key when the URL changed."""
    for name in RUN_SETTINGS:
        if name in changes:
            setattr(run, name, changes[name])
    new_secret = None
    if "webhook_url" in changes and changes["webhook_url"] != run.webhook_url:
        run.webhook_url = changes["webhook_url"]
        run.webhook_secret = new_secret = webhook_secret_new() if run.webhook_url else ""
    run.full_clean()
    run.save(update_fields=[*RUN_SETTINGS, "webhook_url", "webhook_secret", "updated_at"])
    return new_secret


def checkpoint_evaluate_step(*, run: Run, step: int, params: dict[str, Any]) -> Job:
    """Send the checkpoint at ``step`` through the pipeline again, from generation, with ``params``."""
    generation_params(params)  # an ApplicationError naming params.<key>
    if run.eval_set_id is None:
        raise _field_error("run_id", RUN_HAS_NO_EVAL_SET.format(run=run.name))
    with transaction.atomic():
        checkpoint = Checkpoint.objects.select_for_update().filter(run=run, step=step).first()
        if checkpoint is None:
            raise NotFoundError(CHECKPOINT_NOT_FOUND.format(run=run.name, step=step))
        busy = checkpoint.jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).first()
        if busy is not None:
            raise ConflictError(
                EVALUATION_BUSY.format(step=step, run=run.name, job_id=busy.pk, status=busy.status)
            )
        return checkpoint_evaluate(checkpoint=checkpoint, params=params)


def researcher_token_issue(*, user, name: str = "") -> str:
    """A new API token acting as ``user``; returned once, only its hash is kept."""
    token = f"{RESEARCHER_TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    ResearcherToken.objects.create(user=user, name=name, token_hash=token_hash(token), prefix=token[:12])
    return token
