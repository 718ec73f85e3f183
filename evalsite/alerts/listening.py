"""Alert rules fed by listening tests: listener flags above the false-flag rate, score drops.

Both rules read the test's analysis results (:func:`evalsite.analysis.snapshots.listening_test_results`), the
same dict the test's results page shows: the same listener screening, bootstrap intervals and flag tests, so an
alert never states a number the page disagrees with. Evaluated by the beat task
``alerts_evaluate_listening_task`` over open tests (and tests closed in the last day) whose answers changed
since the last evaluation. Each alert is keyed by test and checkpoint, so re-evaluating the same answers
creates nothing new.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Max, Q
from django.urls import reverse
from django.utils import timezone

from evalsite.alerts.models import Alert, AlertRule
from evalsite.alerts.services import alert_create, alert_rules_ensure_defaults
from evalsite.analysis.snapshots import listening_test_results
from evalsite.listening.models import Condition, ListeningTest
from evalsite.runs.models import Checkpoint, Run

logger = logging.getLogger(__name__)

MAX_REGIONS = 5
"""Flagged regions quoted in a listener-flag alert (the page's strongest first)."""
SCORE_INTERVAL = "95 % bootstrap over listeners and items, after listener screening"

RuleFn = Callable[[AlertRule, ListeningTest, dict[str, Any], dict[str, Checkpoint]], list[dict[str, Any]]]


def _test_links(test: ListeningTest) -> list[dict[str, str]]:
    return [
        {"label": f"listening test {test.name}", "url": reverse("listening-admin:detail", args=[test.pk])}
    ]


def listener_flag_alerts(
    rule: AlertRule, test: ListeningTest, results: dict[str, Any], checkpoints: dict[str, Checkpoint]
) -> list[dict[str, Any]]:
    """A checkpoint whose outputs listeners flagged significantly more often than the false-flag rate: its row of
    the results' per-system flag table (one-sided exact binomial test of its flagged presentations)."""
    flags = results["flags"]
    if not flags["systems"] or flags["baseline"] is None:
        return []
    rows = {r["system"]: r for r in flags["systems"] if r["role"] == Condition.Role.SYSTEM}
    baseline, source = flags["baseline"]["rate"], flags["baseline"]["source"]
    alpha = rule.params.get("alpha", 0.05)
    specs = []
    for label, checkpoint in checkpoints.items():
        row = rows.get(label)
        if checkpoint.run_id != rule.run_id or row is None or not row["presentations"]:
            continue
        if row["flagging_listeners"] < rule.params.get("min_listeners", 3):
            continue
        k, n, p = row["flagged_presentations"], row["presentations"], row["p"]
        if p is None or p >= alpha:
            continue
        # The results list regions strongest first (peak share, then listeners).
        regions = [r for r in flags["regions"] if r["system"] == label][:MAX_REGIONS]
        specs.append(
            {
                "checkpoint": checkpoint,
                "dedupe_key": f"listener_flags:{rule.pk}:{test.pk}:{checkpoint.pk}",
                "title": (
                    f"listeners flagged step {checkpoint.step} in {k} of {n} presentations ({row['share']:.0%}) "
                    f"in {test.name}, against a false-flag rate of {baseline:.0%} (p = {p:.2g})"
                ),
                "evidence": {
                    "test": test.name,
                    "flagged_presentations": k,
                    "presentations": n,
                    "flagging_listeners": row["flagging_listeners"],
                    "share": row["share"],
                    "false_flag_rate": baseline,
                    "false_flag_source": source,
                    "p": p,
                    "alpha": alpha,
                    "regions": [
                        {
                            "item": r["item"],
                            "start_s": round(r["start_s"], 3),
                            "end_s": round(r["end_s"], 3),
                            "share": round(r["peak_share"], 3),
                        }
                        for r in regions
                    ],
                },
                "links": _test_links(test),
            }
        )
    return specs


def score_drop_alerts(
    rule: AlertRule, test: ListeningTest, results: dict[str, Any], checkpoints: dict[str, Checkpoint]
) -> list[dict[str, Any]]:
    """A checkpoint rated lower than the best (or previous) earlier checkpoint of its run in the same test,
    with non-overlapping bootstrap confidence intervals (the results' scores of the kept listeners)."""
    if test.kind not in rule.params.get("kinds", ["mos", "smos"]) or not results["scores"]:
        return []
    mine = {label: c for label, c in checkpoints.items() if c.run_id == rule.run_id}
    by_label = {
        row["system"]: row
        for row in results["scores"]["kept"]
        if row["system"] in mine and row["boot_low"] is not None and row["boot_high"] is not None
    }
    if len(mine) < 2:
        return []
    specs = []
    for label, checkpoint in sorted(mine.items(), key=lambda kv: kv[1].step):
        earlier = [(lab, c) for lab, c in mine.items() if c.step < checkpoint.step and lab in by_label]
        if label not in by_label or not earlier:
            continue
        if rule.params.get("against", "best") == "previous":
            base_label, base = max(earlier, key=lambda lc: lc[1].step)
        else:
            base_label, base = max(earlier, key=lambda lc: by_label[lc[0]]["mean"])
        now, then = by_label[label], by_label[base_label]
        if not now["boot_high"] < then["boot_low"]:
            continue
        specs.append(
            {
                "checkpoint": checkpoint,
                "dedupe_key": f"score_drop:{rule.pk}:{test.pk}:{checkpoint.pk}:{base.pk}",
                "title": (
                    f"{test.kind.upper()} of step {checkpoint.step} is {now['mean']:.2f} "
                    f"[{now['boot_low']:.2f}, {now['boot_high']:.2f}], below step {base.step}'s {then['mean']:.2f} "
                    f"[{then['boot_low']:.2f}, {then['boot_high']:.2f}] in {test.name}"
                ),
                "evidence": {
                    "test": test.name,
                    "kind": test.kind,
                    "step": checkpoint.step,
                    "baseline_step": base.step,
                    "mean": now["mean"],
                    "ci": [now["boot_low"], now["boot_high"]],
                    "n": now["n"],
                    "baseline_mean": then["mean"],
                    "baseline_ci": [then["boot_low"], then["boot_high"]],
                    "baseline_n": then["n"],
                    "interval": SCORE_INTERVAL,
                    "screening": results.get("screening_statement", ""),
                },
                "links": _test_links(test),
            }
        )
    return specs


RULES: dict[str, RuleFn] = {
    AlertRule.Kind.LISTENER_FLAGS: listener_flag_alerts,
    AlertRule.Kind.SCORE_DROP: score_drop_alerts,
}


def _system_checkpoints(test: ListeningTest) -> dict[str, Checkpoint]:
    """Condition label → checkpoint of the test's rated systems (what the results call ``system``)."""
    conditions = Condition.objects.filter(test=test, role=Condition.Role.SYSTEM).select_related("checkpoint")
    return {c.label: c.checkpoint for c in conditions if c.checkpoint is not None}


def alerts_evaluate_test(*, test: ListeningTest) -> list[Alert]:
    """Apply the listening rules of every run rated in ``test``; returns the alerts created now."""
    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        return []
    runs = Run.objects.filter(
        pk__in=Checkpoint.objects.filter(
            pk__in=Condition.objects.filter(test=test).values("checkpoint")
        ).values("run")
    )
    results = checkpoints = None
    created = []
    for run in runs:
        for rule in alert_rules_ensure_defaults(run=run):
            if not rule.enabled or rule.kind not in RULES:
                continue
            if results is None:
                results, checkpoints = listening_test_results(test), _system_checkpoints(test)
            for spec in RULES[rule.kind](rule, test, results, checkpoints):
                alert, new = alert_create(run=run, rule=rule, kind=rule.kind, severity=rule.severity, **spec)
                if new:
                    created.append(alert)
    return created


def _fingerprint(test: ListeningTest) -> str:
    stats = ListeningTest.objects.filter(pk=test.pk).aggregate(
        ratings=Count("participants__ratings", distinct=True),
        flags=Count("participants__flags", distinct=True),
        last=Max("participants__ratings__updated_at"),
        # Finishing a trial writes no rating but turns its ratings into votes: it must re-evaluate the rules.
        completed=Count(
            "participants__ratings",
            filter=Q(participants__ratings__assignment__completed_at__isnull=False),
            distinct=True,
        ),
        screened=Count("participants", filter=Q(participants__status="screened_out"), distinct=True),
    )
    return hashlib.sha256(repr(sorted(stats.items())).encode()).hexdigest()


def alerts_evaluate_listening_all() -> list[int]:
    """One pass over tests whose answers changed since the last pass; returns the new alerts' ids."""
    recent = timezone.now() - timedelta(days=1)
    tests = ListeningTest.objects.filter(
        Q(status=ListeningTest.Status.PUBLISHED)
        | Q(status=ListeningTest.Status.CLOSED, closed_at__gte=recent)
    )
    created: list[int] = []
    for test in tests.exclude(kind__in=[ListeningTest.Kind.CMOS, ListeningTest.Kind.AB]):
        key = f"alerts:listening:{test.pk}"
        fingerprint = _fingerprint(test)
        if cache.get(key) == fingerprint:
            continue
        try:
            created += [a.pk for a in alerts_evaluate_test(test=test)]
        except ValueError as exc:  # too little data for a statistic: try again when more answers arrive
            logger.info("listening alerts for test %s skipped: %s", test.name, exc)
        cache.set(key, fingerprint, timeout=None)
    return created
