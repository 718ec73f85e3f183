"""Writes for runs and checkpoints, and the one guarded move of a checkpoint's status.

A checkpoint's status moves only through ``checkpoint_transition``, under ``select_for_update``,
along ``CHECKPOINT_MOVES``. Which stage comes next is decided by ``evalsite.pipeline.stages``;
eval-set import and generation have their own modules (``evalset_services``, ``generation_services``).
"""

import hashlib
import secrets
from typing import Any

from django.db import IntegrityError, transaction

from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_create
from evalsite.runs.checkpoint_files import CHECKPOINT_SHA256_MISMATCH, checkpoint_file_open
from evalsite.runs.models import Checkpoint, EvalSet, Run
from evalsite.runs.params import generation_params

# ---------------------------------------------------------------------------------------------
# Runs


def run_token_issue(*, run: Run) -> str:
    """Issue a new API token for ``run`` (replacing any old one) and return it; only its hash is kept."""
    token = f"evr_{secrets.token_urlsafe(32)}"
    run.api_token_hash = hashlib.sha256(token.encode()).hexdigest()
    run.api_token_prefix = token[:12]
    run.save(update_fields=["api_token_hash", "api_token_prefix", "updated_at"])
    return token


@transaction.atomic
def run_create(
    *,
    name: str,
    kind: str,
    model_family: str,
    eval_set: EvalSet | None = None,
    config: dict[str, Any] | None = None,
    checkpoint_dir: str = "",
    checkpoint_pattern: str = "",
    owner=None,
) -> tuple[Run, str]:
    """Create a run and return it with its API token (shown once)."""
    run = Run(
        name=name,
        kind=kind,
        model_family=model_family,
        eval_set=eval_set,
        config=config or {},
        checkpoint_dir=checkpoint_dir,
        checkpoint_pattern=checkpoint_pattern,
        owner=owner,
    )
    run.full_clean()
    run.save()
    return run, run_token_issue(run=run)


RUN_HAS_NO_EVAL_SET = "run {run!r} has no eval set; attach one before evaluating checkpoints."

CHECKPOINT_STEP_TAKEN = (
    "step {step} of run {run!r} is already registered as {existing}; not replaced with {uri}. "
    "Register the new file under another step, or delete the old checkpoint first."
)
CHECKPOINT_SHA256_INVALID = "sha256 must be 64 hexadecimal characters; got {value!r}."


def _checkpoint_file_check(*, run: Run, uri: str, sha256: str) -> int | None:
    """Refuse a path outside the checkpoint roots or not a regular file, and a sha256 the file does not have.

    Returns the file's size, or None when this host does not see the file (the web server need not
    share the workers' filesystem): the worker checks again before it opens it.
    """
    try:
        with checkpoint_file_open(uri=uri, owner=run.owner) as opened:
            if sha256 and opened.sha256() != sha256:
                raise ApplicationError(
                    CHECKPOINT_SHA256_MISMATCH, extra={"fields": {"sha256": [CHECKPOINT_SHA256_MISMATCH]}}
                )
            return opened.stat.st_size
    except FileNotFoundError:
        return None


def checkpoint_register(
    *,
    run: Run,
    step: int,
    uri: str,
    sha256: str = "",
    evaluate: bool = True,
    params: dict[str, Any] | None = None,
) -> tuple[Checkpoint, bool]:
    """Register a checkpoint once per (run, step) and queue its generation job.

    Returns ``(checkpoint, created)``. Registering the same step again with the same file (and the
    same sha256, when both give one) returns the existing row and queues nothing, so a client may
    retry freely; the same step with another file is a ``ConflictError``. Safe against concurrent
    registrations of one step (the unique constraint decides; the loser gets the winner's row).
    The file must be a regular file under the checkpoint roots (``CheckpointPathRefused``) and have
    the sha256 given, if one is given.
    """
    sha256 = (sha256 or "").lower()
    if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        raise ApplicationError(
            CHECKPOINT_SHA256_INVALID.format(value=sha256),
            extra={"fields": {"sha256": [CHECKPOINT_SHA256_INVALID.format(value=sha256)]}},
        )

    def same_or_conflict(existing: Checkpoint):
        if existing.uri != uri or (sha256 and existing.sha256 and existing.sha256 != sha256):
            label = existing.uri + (f" (sha256 {existing.sha256[:12]}…)" if existing.sha256 else "")
            raise ConflictError(
                CHECKPOINT_STEP_TAKEN.format(step=step, run=run.name, existing=label, uri=uri)
            )
        return existing, False

    if params:
        generation_params(params)  # refused here, not later by the worker
    size = _checkpoint_file_check(run=run, uri=uri, sha256=sha256)
    existing = Checkpoint.objects.filter(run=run, step=step).first()
    if existing is not None:
        return same_or_conflict(existing)
    checkpoint = Checkpoint(run=run, step=step, uri=uri, sha256=sha256, size_bytes=size)
    checkpoint.full_clean(validate_unique=False)
    try:
        with transaction.atomic():
            checkpoint.save()
            if evaluate and run.eval_set_id is not None:
                checkpoint_evaluate(checkpoint=checkpoint, params=params)
    except IntegrityError:
        existing = Checkpoint.objects.filter(run=run, step=step).first()
        if existing is None:
            raise
        return same_or_conflict(existing)
    return checkpoint, True


# ---------------------------------------------------------------------------------------------
# Checkpoint status

_S = Checkpoint.Status
# A stage starts only once the checkpoint has been through the stages before it (a stage's job may run
# again, e.g. resumed or repeated, so a stage may also start from a later one); done and failed are
# reached only from a stage (never by skipping one); evaluating again starts over from registered.
CHECKPOINT_MOVES: dict[str, frozenset[str]] = {
    _S.REGISTERED: frozenset({_S.REGISTERED, _S.GENERATING}),
    _S.GENERATING: frozenset({_S.REGISTERED, _S.GENERATING, _S.SCORING, _S.DONE, _S.FAILED}),
    _S.SCORING: frozenset({_S.REGISTERED, _S.GENERATING, _S.SCORING, _S.DETECTING, _S.DONE, _S.FAILED}),
    _S.DETECTING: frozenset({_S.REGISTERED, _S.GENERATING, _S.SCORING, _S.DETECTING, _S.DONE, _S.FAILED}),
    _S.DONE: frozenset({_S.REGISTERED, _S.GENERATING, _S.SCORING, _S.DETECTING}),
    _S.FAILED: frozenset({_S.REGISTERED, _S.GENERATING, _S.SCORING, _S.DETECTING}),
}
CHECKPOINT_ILLEGAL_TRANSITION = "Checkpoint {checkpoint} is {status}; it cannot move to {target}."
CHECKPOINT_NOT_FOUND = "Checkpoint {checkpoint_id} does not exist."


@transaction.atomic
def checkpoint_transition(*, checkpoint_id: int, to: str) -> Checkpoint:
    """Move the checkpoint to ``to`` if ``CHECKPOINT_MOVES`` allows it from where it is; else refuse."""
    try:
        checkpoint = Checkpoint.objects.select_for_update().select_related("run").get(pk=checkpoint_id)
    except Checkpoint.DoesNotExist:
        raise ApplicationError(CHECKPOINT_NOT_FOUND.format(checkpoint_id=checkpoint_id)) from None
    if to not in CHECKPOINT_MOVES[checkpoint.status]:
        raise ApplicationError(
            CHECKPOINT_ILLEGAL_TRANSITION.format(checkpoint=checkpoint, status=checkpoint.status, target=to),
            extra={"checkpoint_id": checkpoint.pk, "status": checkpoint.status, "target": to},
        )
    if checkpoint.status != to:
        checkpoint.status = to
        checkpoint.save(update_fields=["status", "updated_at"])
    return checkpoint


@transaction.atomic
def checkpoint_evaluate(*, checkpoint: Checkpoint, params: dict[str, Any] | None = None) -> Job:
    """Start the checkpoint's evaluation over: back to registered, and its generation job queued."""
    checkpoint_transition(checkpoint_id=checkpoint.pk, to=Checkpoint.Status.REGISTERED)
    return job_create(
        kind=Job.Kind.GENERATION, run=checkpoint.run, checkpoint=checkpoint, params=params or {}
    )
