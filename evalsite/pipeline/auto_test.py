"""The automatic listening test: every few finished checkpoints of a run, one against the best earlier one.

Asked for in the run's ``config["auto_listening_test"]``; built (and published) as the last step of a
checkpoint's path, by ``evalsite.pipeline.stages``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from evalsite.core.exceptions import ApplicationError
from evalsite.listening.models import ListeningTest
from evalsite.listening.services import TestDesign, listening_test_build, listening_test_publish
from evalsite.runs.models import Checkpoint, EvalItem, Run
from evalsite.scoring.models import MetricResult

logger = logging.getLogger(__name__)

AUTO_TEST_KINDS = ("smos", "mos", "mushra", "ab", "cmos")


def auto_test_config(run: Run) -> dict[str, Any] | None:
    """``config["auto_listening_test"]``: {"every": N, "kind": "smos", "metric": name, "votes_target": n,
    "items": n, "publish": true}; None when the run has none."""
    config = run.config.get("auto_listening_test")
    if not config:
        return None
    every = config.get("every")
    if not isinstance(every, int) or every < 1:
        raise ApplicationError(
            f"run {run.name!r}: auto_listening_test.every must be an integer ≥ 1; got {every!r}"
        )
    if config.get("kind", "smos") not in AUTO_TEST_KINDS:
        raise ApplicationError(f"run {run.name!r}: auto_listening_test.kind must be one of {AUTO_TEST_KINDS}")
    return config


def best_checkpoint(*, run: Run, before_step: int, metric: str | None = None) -> Checkpoint | None:
    """The best earlier finished checkpoint by ``metric`` (default: the first metric with a direction)."""
    results = MetricResult.objects.filter(
        checkpoint__run=run,
        checkpoint__step__lt=before_step,
        status=MetricResult.Status.DONE,
        higher_is_better__isnull=False,
    )
    if metric:
        results = results.filter(name=metric)
    results = list(results.select_related("checkpoint").order_by("name", "checkpoint__step"))
    if not results:
        return None
    name = metric or results[0].name
    candidates = [r for r in results if r.name == name]
    pick = max if candidates[0].higher_is_better else min
    return pick(candidates, key=lambda r: r.value).checkpoint


def auto_listening_test_maybe(*, checkpoint: Checkpoint) -> ListeningTest | None:
    """Every ``every``-th finished checkpoint of a run, build (and publish) a test of it against the
    best earlier one. Idempotent: the test's name is derived from the two steps."""
    run = checkpoint.run
    config = auto_test_config(run)
    if config is None:
        return None
    finished = Checkpoint.objects.filter(
        run=run, status=Checkpoint.Status.DONE, step__lte=checkpoint.step
    ).count()
    if finished % config["every"]:
        return None
    best = best_checkpoint(run=run, before_step=checkpoint.step, metric=config.get("metric"))
    if best is None:
        return None
    name = f"{run.name}: step {checkpoint.step} vs best step {best.step} ({config.get('kind', 'smos')})"
    existing = ListeningTest.objects.filter(name=name).first()
    if existing is not None:
        return existing
    items = None
    if config.get("items"):
        items = list(
            EvalItem.objects.filter(eval_set=run.eval_set).order_by("key")[: int(config["items"]) + 1]
        )
    try:
        with transaction.atomic():
            design = TestDesign(
                name=name,
                kind=config.get("kind", "smos"),
                checkpoints=[best, checkpoint],
                items=items,
                votes_target=int(config.get("votes_target", 8)),
                title="Listening test",
            )
            test = listening_test_build(design=design, owner=run.owner)
            if config.get("publish", True) and test.design_warnings:
                # Nobody is there to confirm: the test waits as a draft for a researcher to read them.
                logger.warning(
                    "run %s: automatic listening test %r left as a draft: %s",
                    run.name,
                    name,
                    "; ".join(w["message"] for w in test.design_warnings),
                )
            elif config.get("publish", True):
                test = listening_test_publish(test=test)
    except ApplicationError as exc:
        logger.warning(
            "run %s: automatic listening test for step %d not built: %s",
            run.name,
            checkpoint.step,
            exc.message,
        )
        return None
    return test
