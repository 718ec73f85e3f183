from django.db import models
from django.db.models import Q

from evalsite.core.models import BaseModel


class CachedEmbedding(BaseModel):
    """Embeddings of one piece of audio, keyed by everything that changes them.

    Keyed by content (not file name), so they never go stale and a new checkpoint only embeds
    its own clips; the reference side is embedded once.
    """

    content_hash = models.CharField(max_length=64)
    embedder = models.CharField(max_length=100)
    weights_checksum = models.CharField(max_length=64)
    preprocess_key = models.CharField(max_length=64)
    frames = models.PositiveIntegerField()
    dim = models.PositiveIntegerField()
    data = models.BinaryField(help_text="float32 little-endian, shape (frames, dim)")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["content_hash", "embedder", "weights_checksum", "preprocess_key"],
                name="cachedembedding_unique_key",
            )
        ]


class ReferenceStatistics(BaseModel):
    """float64 sufficient statistics (n, Σx, Σxxᵀ) of a reference set's embeddings."""

    eval_set = models.ForeignKey(
        "runs.EvalSet", on_delete=models.CASCADE, related_name="reference_statistics"
    )
    embedder = models.CharField(max_length=100)
    weights_checksum = models.CharField(max_length=64)
    preprocess_key = models.CharField(max_length=64)
    fingerprint = models.CharField(
        max_length=64, help_text="sha256 of the sorted content hashes it was built from"
    )
    n = models.PositiveBigIntegerField()
    n_clips = models.PositiveIntegerField()
    dim = models.PositiveIntegerField()
    data = models.BinaryField(help_text="metrics.GaussianStatistics.to_bytes()")

    class Meta:
        verbose_name_plural = "reference statistics"
        constraints = [
            models.UniqueConstraint(
                fields=["eval_set", "embedder", "weights_checksum", "preprocess_key", "fingerprint"],
                name="referencestatistics_unique_key",
            )
        ]


class MetricResult(BaseModel):
    """One metric of one checkpoint's outputs, with everything needed to judge comparability."""

    class Status(models.TextChoices):
        DONE = "done"
        FAILED = "failed"

    checkpoint = models.ForeignKey("runs.Checkpoint", on_delete=models.CASCADE, related_name="metric_results")
    params_hash = models.CharField(max_length=64, help_text="the generation params the outputs came from")
    name = models.CharField(max_length=200, db_index=True)
    status = models.CharField(max_length=10, choices=Status.choices)
    error = models.TextField(blank=True)
    value = models.FloatField(null=True, blank=True)
    ci_low = models.FloatField(null=True, blank=True)
    ci_high = models.FloatField(null=True, blank=True)
    higher_is_better = models.BooleanField(null=True)
    n = models.PositiveIntegerField(
        default=0, help_text="items (paired) or clips (distribution) behind the value"
    )
    reference_set = models.ForeignKey("runs.EvalSet", on_delete=models.SET_NULL, null=True, blank=True)
    reference_fingerprint = models.CharField(max_length=64, blank=True)
    embedder = models.CharField(max_length=100, blank=True)
    weights_checksum = models.CharField(max_length=64, blank=True)
    preprocess = models.JSONField(default=dict, blank=True)
    metric_version = models.CharField(max_length=20, blank=True)
    spec_key = models.CharField(
        max_length=64, help_text="hash of everything that must match for two values to compare"
    )
    duration_s = models.FloatField(null=True, blank=True)
    per_item = models.JSONField(null=True, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["checkpoint", "params_hash", "name"], name="metricresult_unique_key"
            ),
            models.CheckConstraint(
                condition=Q(status="failed") | Q(value__isnull=False), name="metricresult_done_has_value"
            ),
        ]
        ordering = ["checkpoint", "name"]

    def __str__(self) -> str:
        return f"{self.checkpoint}:{self.name}={self.value}"


class DetectorEvent(BaseModel):
    """A time-localised artifact that an automated detector (``metrics.detectors``) found in one output.

    A detection pass over a generation replaces that generation's events, so a re-run never doubles
    them; a generation analysed with no events is recorded in ``DetectorPass``.
    """

    generation = models.ForeignKey(
        "runs.Generation", on_delete=models.CASCADE, related_name="detector_events"
    )
    checkpoint = models.ForeignKey(
        "runs.Checkpoint", on_delete=models.CASCADE, related_name="detector_events"
    )
    detector = models.CharField(max_length=50, db_index=True)
    start_s = models.FloatField()
    end_s = models.FloatField()
    strength = models.FloatField()
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(start_s__gte=0) & Q(end_s__gte=models.F("start_s")),
                name="detectorevent_region_ordered",
            ),
        ]
        ordering = ["checkpoint", "generation", "start_s"]


class DetectorPass(BaseModel):
    """That a generation went through the detectors, and how long its audio was (for event rates)."""

    generation = models.OneToOneField(
        "runs.Generation", on_delete=models.CASCADE, related_name="detector_pass"
    )
    checkpoint = models.ForeignKey(
        "runs.Checkpoint", on_delete=models.CASCADE, related_name="detector_passes"
    )
    duration_s = models.FloatField()
    events = models.PositiveIntegerField()
    version = models.CharField(max_length=20)

    class Meta:
        verbose_name_plural = "detector passes"
