"""Alert rules and alert creation.

Rules per run (``AlertRule``; a new run gets ``DEFAULT_RULES``, which the researcher or the
training job may replace):

- ``metric_regression``: a metric of the new checkpoint is worse than the best (or previous)
  earlier checkpoint's by more than ``relative`` (fraction of the baseline) and ``absolute``.
  Only values computed the same way (same ``spec_key``) are compared.
- ``detector_rate``: a detector's events per minute of audio went up by ``factor`` over the
  previous checkpoint's and is at least ``min_per_minute``.
- ``detector_any``: any event of the named detectors (NaN / silence output by default).
- ``listener_flags`` and ``score_drop``: from listening tests (``alerts.listening``).

An alert is keyed by what it is about (``dedupe_key``): evaluating the same evidence twice — a
redelivered job, a re-run — finds the existing alert and creates nothing.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Sum
from django.urls import reverse
from django.utils import timezone

from evalsite.alerts.models import Alert, AlertRule, Severity, WebhookDelivery
from evalsite.alerts.tasks import webhook_deliver_task
from evalsite.alerts.webhooks import webhook_post
from evalsite.core.exceptions import ApplicationError
from evalsite.runs.models import Checkpoint, Run
from evalsite.scoring.models import DetectorEvent, DetectorPass, MetricResult

logger = logging.getLogger(__name__)

DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {
        "kind": AlertRule.Kind.METRIC_REGRESSION,
        "severity": Severity.WARNING,
        "params": {"metrics": "*", "against": "best", "relative": 0.1, "absolute": 0.0},
    },
    {
        "kind": AlertRule.Kind.DETECTOR_RATE,
        "severity": Severity.WARNING,
        "params": {"detectors": "*", "factor": 2.0, "min_per_minute": 2.0},
    },
    {
        "kind": AlertRule.Kind.DETECTOR_ANY,
        "severity": Severity.CRITICAL,
        "params": {"detectors": ["nan_or_silence"]},
    },
    {
        "kind": AlertRule.Kind.LISTENER_FLAGS,
        "severity": Severity.WARNING,
        "params": {"alpha": 0.05, "min_listeners": 3},
    },
    {
        "kind": AlertRule.Kind.SCORE_DROP,
        "severity": Severity.CRITICAL,
        "params": {"kinds": ["mos", "smos"], "against": "best"},
    },
)

# Per kind: parameter → (type, check, why). Unknown parameters are refused, so a typo is not silently ignored.
RULE_PARAMS: dict[str, dict[str, tuple[type | tuple[type, ...], Any, str]]] = {
    AlertRule.Kind.METRIC_REGRESSION: {
        "metrics": (
            (str, list),
            lambda v: v == "*" or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
            'either "*" or a list of metric names',
        ),
        "against": (str, lambda v: v in ("best", "previous"), 'either "best" or "previous"'),
        "relative": ((int, float), lambda v: v >= 0, "a fraction of the baseline, ≥ 0"),
        "absolute": ((int, float), lambda v: v >= 0, "≥ 0, in the metric's unit"),
    },
    AlertRule.Kind.DETECTOR_RATE: {
        "detectors": (
            (str, list),
            lambda v: v == "*" or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
            'either "*" or a list of detector names',
        ),
        "factor": ((int, float), lambda v: v > 1, "> 1"),
        "min_per_minute": ((int, float), lambda v: v >= 0, "≥ 0 events per minute of audio"),
    },
    AlertRule.Kind.DETECTOR_ANY: {
        "detectors": (
            list,
            lambda v: bool(v) and all(isinstance(x, str) for x in v),
            "a non-empty list of detector names",
        ),
    },
    AlertRule.Kind.LISTENER_FLAGS: {
        "alpha": ((int, float), lambda v: 0 < v < 1, "a significance level between 0 and 1"),
        "min_listeners": (int, lambda v: v >= 1, "an integer ≥ 1"),
    },
    AlertRule.Kind.SCORE_DROP: {
        "kinds": (
            list,
            lambda v: bool(v) and set(v) <= {"mos", "smos", "mushra"},
            'a list of "mos", "smos", "mushra"',
        ),
        "against": (str, lambda v: v in ("best", "previous"), 'either "best" or "previous"'),
    },
}


def rule_params_validate(kind: str, params: Any) -> dict[str, Any]:
    """Defaults filled in; a wrong parameter is an ApplicationError naming it and saying why."""
    if kind not in RULE_PARAMS:
        raise ApplicationError(
            f"unknown rule kind {kind!r}; known: {sorted(RULE_PARAMS)}",
            extra={"fields": {"kind": [f"one of {sorted(RULE_PARAMS)}"]}},
        )
    if not isinstance(params, dict):
        raise ApplicationError(
            "params must be an object", extra={"fields": {"params": ["must be an object"]}}
        )
    spec = RULE_PARAMS[kind]
    errors: dict[str, list[str]] = {}
    for name, value in params.items():
        if name not in spec:
            errors[f"params.{name}"] = [f"unknown parameter for {kind}; known: {sorted(spec)}"]
            continue
        types, check, why = spec[name]
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            errors[f"params.{name}"] = [f"must be {why}; got {value!r}"]
    if errors:
        raise ApplicationError(f"invalid parameters for a {kind} rule", extra={"fields": errors})
    defaults = next((r["params"] for r in DEFAULT_RULES if r["kind"] == kind), {})
    return {**defaults, **params}


@transaction.atomic
def alert_rules_set(*, run: Run, rules: list[dict[str, Any]]) -> list[AlertRule]:
    """Replace the run's rules with ``rules`` (each: kind, params, severity, enabled)."""
    built = []
    for index, rule in enumerate(rules):
        try:
            kind = rule.get("kind")
            params = rule_params_validate(kind, rule.get("params", {}))
        except ApplicationError as exc:
            fields = {f"rules[{index}].{k}": v for k, v in exc.extra.get("fields", {}).items()}
            raise ApplicationError(f"rule {index}: {exc.message}", extra={"fields": fields}) from None
        severity = rule.get("severity", Severity.WARNING)
        if severity not in Severity.values:
            raise ApplicationError(
                f"rule {index}: unknown severity {severity!r}",
                extra={"fields": {f"rules[{index}].severity": [f"one of {Severity.values}"]}},
            )
        built.append(
            AlertRule(
                run=run, kind=kind, params=params, severity=severity, enabled=bool(rule.get("enabled", True))
            )
        )
    AlertRule.objects.filter(run=run).delete()
    return AlertRule.objects.bulk_create(built)


def alert_rules_ensure_defaults(*, run: Run) -> list[AlertRule]:
    """The run's rules; a run that never had any gets the defaults."""
    rules = list(AlertRule.objects.filter(run=run))
    if rules:
        return rules
    return alert_rules_set(run=run, rules=[dict(r) for r in DEFAULT_RULES])


def webhook_secret_new() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def alert_create(
    *,
    run: Run,
    dedupe_key: str,
    kind: str,
    severity: str,
    title: str,
    checkpoint: Checkpoint | None = None,
    rule: AlertRule | None = None,
    evidence: dict[str, Any] | None = None,
    links: list[dict[str, str]] | None = None,
) -> tuple[Alert, bool]:
    """Create the alert once per (run, dedupe_key), with the run's next cursor; queue its webhook."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().only("pk", "alert_cursor", "webhook_url").get(pk=run.pk)
        existing = Alert.objects.filter(run_id=run.pk, dedupe_key=dedupe_key).first()
        if existing is not None:
            return existing, False
        # The run row may have been saved from a stale copy; the alerts themselves are the truth.
        newest = Alert.objects.filter(run_id=run.pk).aggregate(m=Max("cursor"))["m"] or 0
        cursor = max(locked.alert_cursor, newest) + 1
        alert = Alert.objects.create(
            run_id=run.pk,
            checkpoint=checkpoint,
            rule=rule,
            kind=kind,
            severity=severity,
            title=title[:500],
            evidence=evidence or {},
            links=links or [],
            dedupe_key=dedupe_key[:300],
            cursor=cursor,
        )
        Run.objects.filter(pk=run.pk).update(alert_cursor=cursor)
        if locked.webhook_url:
            delivery = WebhookDelivery.objects.create(alert=alert, url=locked.webhook_url)
            transaction.on_commit(lambda: _webhook_enqueue(delivery.pk))
    logger.info("alert %s#%d (%s): %s", run.name, cursor, severity, title)
    return alert, True


def _webhook_enqueue(delivery_id: int) -> None:
    webhook_deliver_task.apply_async(args=[delivery_id], queue="cpu")


# ---------------------------------------------------------------------------------------------
# Rules over a checkpoint's metrics and detector events


def _run_link(run: Run, step: int | None = None) -> dict[str, str]:
    url = reverse("runs:run-detail", args=[run.pk])
    return {
        "label": f"run {run.name}" + (f", step {step}" if step is not None else ""),
        "url": url + (f"#step-{step}" if step is not None else ""),
    }


def _worse(value: float, baseline: float, higher_is_better: bool) -> float:
    """How much worse ``value`` is than ``baseline`` in the metric's own unit (positive = worse)."""
    return baseline - value if higher_is_better else value - baseline


def _metric_regressions(rule: AlertRule, checkpoint: Checkpoint) -> list[dict[str, Any]]:
    wanted = rule.params.get("metrics", "*")
    mine = MetricResult.objects.filter(
        checkpoint=checkpoint, status=MetricResult.Status.DONE, higher_is_better__isnull=False
    )
    if wanted != "*":
        mine = mine.filter(name__in=wanted)
    found = []
    for result in mine:
        earlier = list(
            MetricResult.objects.filter(
                checkpoint__run_id=checkpoint.run_id,
                checkpoint__step__lt=checkpoint.step,
                name=result.name,
                spec_key=result.spec_key,
                status=MetricResult.Status.DONE,
            ).select_related("checkpoint")
        )
        if not earlier:
            continue
        if rule.params.get("against", "best") == "previous":
            baseline = max(earlier, key=lambda r: r.checkpoint.step)
        else:
            pick = max if result.higher_is_better else min
            baseline = pick(earlier, key=lambda r: r.value)
        worse = _worse(result.value, baseline.value, result.higher_is_better)
        relative = worse / abs(baseline.value) if baseline.value else math.inf if worse > 0 else 0.0
        if (
            worse > 0
            and relative > rule.params.get("relative", 0.1)
            and worse > rule.params.get("absolute", 0.0)
        ):
            found.append({"result": result, "baseline": baseline, "worse": worse, "relative": relative})
    return found


def _detector_rates(checkpoint_id: int) -> tuple[dict[str, float], float] | None:
    """Events per minute of audio per detector, and the minutes analysed; None if never analysed."""
    minutes = (
        DetectorPass.objects.filter(checkpoint_id=checkpoint_id).aggregate(s=Sum("duration_s"))["s"] or 0
    ) / 60
    if minutes <= 0:
        return None
    counts = dict(
        DetectorEvent.objects.filter(checkpoint_id=checkpoint_id)
        .values_list("detector")
        .annotate(n=Count("id"))
        .values_list("detector", "n")
    )
    return {name: n / minutes for name, n in counts.items()}, minutes


def _event_examples(checkpoint: Checkpoint, detector: str, limit: int = 5) -> list[dict[str, Any]]:
    return [
        {
            "item": e.generation.item.key,
            "start_s": round(e.start_s, 3),
            "end_s": round(e.end_s, 3),
            "strength": round(e.strength, 3),
            "audio": e.generation.asset.file.url if e.generation.asset_id else None,
        }
        for e in DetectorEvent.objects.filter(checkpoint=checkpoint, detector=detector)
        .select_related("generation__item", "generation__asset")
        .order_by("-strength")[:limit]
    ]


def alerts_evaluate_checkpoint(*, checkpoint: Checkpoint) -> list[Alert]:
    """Apply the run's metric and detector rules to a checkpoint that finished the pipeline.

    Returns the alerts created now (none when the same evidence was evaluated before).
    """
    run = checkpoint.run
    created: list[Alert] = []
    for rule in alert_rules_ensure_defaults(run=run):
        if not rule.enabled:
            continue
        for spec in _evaluate_rule(rule, checkpoint):
            alert, new = alert_create(
                run=run, checkpoint=checkpoint, rule=rule, kind=rule.kind, severity=rule.severity, **spec
            )
            if new:
                created.append(alert)
    return created


def _evaluate_rule(rule: AlertRule, checkpoint: Checkpoint) -> list[dict[str, Any]]:
    run, step = checkpoint.run, checkpoint.step
    if rule.kind == AlertRule.Kind.METRIC_REGRESSION:
        specs = []
        for r in _metric_regressions(rule, checkpoint):
            result, baseline = r["result"], r["baseline"]
            direction = "higher" if result.higher_is_better else "lower"
            specs.append(
                {
                    "dedupe_key": f"metric_regression:{rule.pk}:{checkpoint.pk}:{result.name}",
                    "title": (
                        f"{result.name} at step {step} is {result.value:.4g}, worse than "
                        f"{rule.params.get('against', 'best')} step {baseline.checkpoint.step} "
                        f"({baseline.value:.4g}) by {r['relative']:.1%}"
                    ),
                    "evidence": {
                        "metric": result.name,
                        "value": result.value,
                        "n": result.n,
                        "baseline_step": baseline.checkpoint.step,
                        "baseline_value": baseline.value,
                        "relative_change": r["relative"],
                        "better": direction,
                        "threshold_relative": rule.params.get("relative"),
                    },
                    "links": [_run_link(run, step), _run_link(run, baseline.checkpoint.step)],
                }
            )
        return specs
    if rule.kind in (AlertRule.Kind.DETECTOR_RATE, AlertRule.Kind.DETECTOR_ANY):
        rates = _detector_rates(checkpoint.pk)
        if rates is None:
            return []
        mine, minutes = rates
        wanted = rule.params.get("detectors", "*")
        names = sorted(mine) if wanted == "*" else [n for n in wanted if n in mine]
        if rule.kind == AlertRule.Kind.DETECTOR_ANY:
            return [
                {
                    "dedupe_key": f"detector_any:{rule.pk}:{checkpoint.pk}:{name}",
                    "title": f"{name}: {round(mine[name] * minutes)} events in the outputs of step {step}",
                    "evidence": {
                        "detector": name,
                        "events": round(mine[name] * minutes),
                        "per_minute": mine[name],
                        "minutes": minutes,
                        "examples": _event_examples(checkpoint, name),
                    },
                    "links": [_run_link(run, step)],
                }
                for name in names
            ]
        # Detectors an "any event" rule already reports are not reported twice.
        covered = {
            n
            for r in AlertRule.objects.filter(run=run, kind=AlertRule.Kind.DETECTOR_ANY, enabled=True)
            for n in r.params.get("detectors", [])
        }
        names = [n for n in names if n not in covered]
        previous = (
            Checkpoint.objects.filter(run=run, step__lt=step, detector_passes__isnull=False)
            .order_by("-step")
            .distinct()
            .first()
        )
        if previous is None:
            return []
        before = (_detector_rates(previous.pk) or ({}, 0))[0]
        specs = []
        for name in names:
            rate, base = mine[name], before.get(name, 0.0)
            if (
                rate >= rule.params.get("min_per_minute", 2.0)
                and rate > rule.params.get("factor", 2.0) * base
            ):
                specs.append(
                    {
                        "dedupe_key": f"detector_rate:{rule.pk}:{checkpoint.pk}:{name}",
                        "title": (
                            f"{name}: {rate:.1f} events/min at step {step}, up from {base:.1f} "
                            f"at step {previous.step}"
                        ),
                        "evidence": {
                            "detector": name,
                            "per_minute": rate,
                            "previous_per_minute": base,
                            "previous_step": previous.step,
                            "minutes": minutes,
                            "factor": rule.params.get("factor"),
                            "examples": _event_examples(checkpoint, name),
                        },
                        "links": [_run_link(run, step), _run_link(run, previous.step)],
                    }
                )
        return specs
    return []  # listening rules run from alerts.listening when ratings arrive


# ---------------------------------------------------------------------------------------------
# Webhooks


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The JSON an alert is shown as, to pollers and webhooks alike."""
    return {
        "cursor": alert.cursor,
        "id": alert.pk,
        "rule": alert.kind,
        "severity": alert.severity,
        "run": alert.run_id,
        "checkpoint_step": alert.checkpoint.step if alert.checkpoint_id else None,
        "title": alert.title,
        "evidence": alert.evidence,
        "links": alert.links,
        "created_at": alert.created_at.isoformat(),
    }


def webhook_deliver(*, delivery_id: int) -> tuple[str, float | None]:
    """One attempt at a webhook delivery: (outcome, seconds until the next attempt or None).

    Backoff doubles from ``EVALSITE_WEBHOOK_BACKOFF_S`` up to an hour; after
    ``EVALSITE_WEBHOOK_MAX_ATTEMPTS`` attempts, or on an answer a retry cannot change (e.g. 404),
    the delivery is failed with the last error.
    """
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("alert__run", "alert__checkpoint")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
            return (delivery.status if delivery else "missing"), None
        delivery.attempts += 1
        delivery.save(update_fields=["attempts", "updated_at"])
    alert = delivery.alert
    result = webhook_post(
        delivery.url,
        {"type": "alert", "alert": alert_payload(alert)},
        secret=alert.run.webhook_secret,
        delivery_id=delivery.pk,
    )
    fields: dict[str, Any] = {"last_status_code": result.status_code, "last_error": result.error}
    retry_in = None
    if result.ok:
        fields.update(status=WebhookDelivery.Status.DELIVERED, delivered_at=timezone.now())
    elif result.retryable and delivery.attempts < settings.EVALSITE_WEBHOOK_MAX_ATTEMPTS:
        retry_in = min(3600.0, settings.EVALSITE_WEBHOOK_BACKOFF_S * 2 ** (delivery.attempts - 1))
    else:
        fields["status"] = WebhookDelivery.Status.FAILED
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
    return fields.get("status", "retrying"), retry_in
