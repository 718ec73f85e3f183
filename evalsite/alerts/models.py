"""Alerts that training jobs poll or receive: what the rules found about a checkpoint.

``Alert.cursor`` increases by one per run in the order alerts become visible: it is assigned
under a lock on the run row and committed with the alert, so a poller that has seen cursor n
never later finds an alert with a smaller one.
"""

from django.db import models
from django.db.models import Q

from evalsite.core.models import BaseModel


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertRule(BaseModel):
    class Kind(models.TextChoices):
        METRIC_REGRESSION = "metric_regression", "metric worse than the best or previous checkpoint"
        DETECTOR_RATE = "detector_rate", "artifact-detector event rate up by a factor"
        DETECTOR_ANY = "detector_any", "any event of the named detectors (e.g. NaN / silence)"
        LISTENER_FLAGS = "listener_flags", "listener flags above the false-flag rate"
        SCORE_DROP = "score_drop", "MOS / SMOS drop with non-overlapping confidence intervals"

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="alert_rules")
    kind = models.CharField(max_length=30, choices=Kind.choices)
    params = models.JSONField(default=dict, blank=True)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["run", "pk"]

    def __str__(self) -> str:
        return f"{self.run}:{self.kind}"


class Alert(BaseModel):
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="alerts")
    checkpoint = models.ForeignKey(
        "runs.Checkpoint", on_delete=models.CASCADE, null=True, blank=True, related_name="alerts"
    )
    rule = models.ForeignKey(
        AlertRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    kind = models.CharField(max_length=30, choices=AlertRule.Kind.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    title = models.CharField(max_length=500)
    evidence = models.JSONField(default=dict, blank=True)
    links = models.JSONField(default=list, blank=True)
    dedupe_key = models.CharField(
        max_length=300, help_text="what the alert is about; the same evidence twice makes one alert"
    )
    cursor = models.PositiveBigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "dedupe_key"], name="alert_unique_evidence"),
            models.UniqueConstraint(fields=["run", "cursor"], name="alert_unique_cursor"),
        ]
        ordering = ["run", "cursor"]

    def __str__(self) -> str:
        return f"{self.run}#{self.cursor} {self.severity}: {self.title}"


class WebhookDelivery(BaseModel):
    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    url = models.URLField(max_length=500)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["alert", "url"], name="webhookdelivery_unique_target"),
            models.CheckConstraint(
                condition=~Q(status="delivered") | Q(delivered_at__isnull=False),
                name="webhookdelivery_delivered_has_time",
            ),
        ]
