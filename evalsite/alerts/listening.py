"""Alert rules fed by listening tests: listener flags above the false-flag rate, score drops.

Evaluated by the beat task ``alerts_evaluate_listening_task`` over open tests (and tests closed in
the last day) whose answers changed since the last evaluation. Each alert is keyed by test and
checkpoint, so re-evaluating the same answers creates nothing new.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Max, Q
from django.urls import reverse
from django.utils import timezone

from evalsite.alerts.models import Alert, AlertRule
from evalsite.alerts.services import alert_create, alert_rules_ensure_defaults
from evalsite.listening.models import Condition, ListeningTest
from evalsite.runs.models import Checkpoint, Run

logger = logging.getLogger(__name__)

DEFAULT_BASELINE_RATE = 0.05  # false-flag rate assumed when a test has no hidden reference to measure it on


def _test_links(test: ListeningTest) -> list[dict[str, str]]:
    return [
        {"label": f"listening test {test.name}", "url": reverse("listening-admin:detail", args=[test.pk])}
    ]


def listener_flag_alerts(
    rule: AlertRule, test: ListeningTest, frames: dict[str, Any]
) -> list[dict[str, Any]]:
    """A checkpoint whose outputs listeners flagged significantly more often than hidden references."""
    from scipy.stats import binomtest

    from evalsite.analysis.flags import flag_regions, presentation_flags

    flags, presented = frames["flags"], frames["presented"]
    if flags.empty or presented.empty:
        return []
    pres = presentation_flags(flags, presented)
    refs = pres[pres["role"] == Condition.Role.HIDDEN_REFERENCE]
    baseline = max(float(refs["flagged"].mean()), 0.01) if len(refs) else DEFAULT_BASELINE_RATE
    source = (
        f"hidden references: {int(refs['flagged'].sum())} of {len(refs)} presentations flagged"
        if len(refs)
        else f"assumed {DEFAULT_BASELINE_RATE:.0%} (the test has no hidden reference)"
    )
    alpha = rule.params.get("alpha", 0.05)
    specs = []
    for label, checkpoint in frames["checkpoints"].items():
        if checkpoint.run_id != rule.run_id:
            continue
        mine = pres[pres["system"] == label]
        flagged_listeners = mine.loc[mine["flagged"].astype(bool), "listener"].nunique()
        if mine.empty or flagged_listeners < rule.params.get("min_listeners", 3):
            continue
        k, n = int(mine["flagged"].sum()), len(mine)
        p = float(binomtest(k, n, baseline, alternative="greater").pvalue)
        if p >= alpha:
            continue
        regions = flag_regions(flags[flags["system"] == label], presented[presented["system"] == label])
        top = regions.sort_values("peak_share", ascending=False).head(5) if len(regions) else regions
        specs.append(
            {
                "checkpoint": checkpoint,
                "dedupe_key": f"listener_flags:{rule.pk}:{test.pk}:{checkpoint.pk}",
                "title": (
                    f"listeners flagged step {checkpoint.step} in {k} of {n} presentations ({k / n:.0%}) in "
                    f"{test.name}, against a false-flag rate of {baseline:.0%} (p = {p:.2g})"
                ),
                "evidence": {
                    "test": test.name,
                    "flagged_presentations": k,
                    "presentations": n,
                    "flagging_listeners": int(flagged_listeners),
                    "share": k / n,
                    "false_flag_rate": baseline,
                    "false_flag_source": source,
                    "p": p,
                    "alpha": alpha,
                    "regions": [
                        {
                            "item": r["item"],
                            "start_s": round(float(r["start_s"]), 3),
                            "end_s": round(float(r["end_s"]), 3),
                            "share": round(float(r["peak_share"]), 3),
                        }
                        for _, r in top.iterrows()
                    ],
                },
                "links": _test_links(test),
            }
        )
    return specs


def score_drop_alerts(rule: AlertRule, test: ListeningTest, frames: dict[str, Any]) -> list[dict[str, Any]]:
    """A checkpoint rated lower than the best (or previous) earlier checkpoint of its run in the same test,
    with non-overlapping bootstrap confidence intervals."""
    from evalsite.analysis.screening import apply_screening, screen_listeners
    from evalsite.analysis.stats import system_scores

    if test.kind not in rule.params.get("kinds", ["mos", "smos"]):
        return []
    ratings = frames["ratings"]
    mine = {label: c for label, c in frames["checkpoints"].items() if c.run_id == rule.run_id}
    if ratings.empty or len(mine) < 2:
        return []
    kept = apply_screening(ratings, screen_listeners(ratings, kind=test.kind, qc=frames["qc"]))
    scores = system_scores(kept[kept["system"].isin(list(mine))], kind=test.kind, n_boot=1000)
    by_label = {row["system"]: row for _, row in scores.iterrows()}
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
                    "mean": float(now["mean"]),
                    "ci": [float(now["boot_low"]), float(now["boot_high"])],
                    "n": int(now["n"]),
                    "baseline_mean": float(then["mean"]),
                    "baseline_ci": [float(then["boot_low"]), float(then["boot_high"])],
                    "baseline_n": int(then["n"]),
                    "interval": "95 % bootstrap over listeners and items, after listener screening",
                },
                "links": _test_links(test),
            }
        )
    return specs


RULES = {AlertRule.Kind.LISTENER_FLAGS: listener_flag_alerts, AlertRule.Kind.SCORE_DROP: score_drop_alerts}


def _frames(test: ListeningTest) -> dict[str, Any]:
    from evalsite.analysis import selectors

    conditions = Condition.objects.filter(test=test, role=Condition.Role.SYSTEM).select_related("checkpoint")
    return {
        "ratings": selectors.ratings_frame(test),
        "presented": selectors.presented_frame(test),
        "flags": selectors.flags_frame(test),
        "qc": selectors.quality_control(test),
        "checkpoints": {c.label: c.checkpoint for c in conditions},
    }


def alerts_evaluate_test(*, test: ListeningTest) -> list[Alert]:
    """Apply the listening rules of every run rated in ``test``; returns the alerts created now."""
    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        return []
    runs = Run.objects.filter(
        pk__in=Checkpoint.objects.filter(
            pk__in=Condition.objects.filter(test=test).values("checkpoint")
        ).values("run")
    )
    frames = None
    created = []
    for run in runs:
        for rule in alert_rules_ensure_defaults(run=run):
            if not rule.enabled or rule.kind not in RULES:
                continue
            frames = frames or _frames(test)
            for spec in RULES[rule.kind](rule, test, frames):
                alert, new = alert_create(run=run, rule=rule, kind=rule.kind, severity=rule.severity, **spec)
                if new:
                    created.append(alert)
    return created


def _fingerprint(test: ListeningTest) -> str:
    stats = ListeningTest.objects.filter(pk=test.pk).aggregate(
        ratings=Count("participants__ratings", distinct=True),
        flags=Count("participants__flags", distinct=True),
        last=Max("participants__ratings__updated_at"),
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
