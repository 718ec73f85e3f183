"""Stored analysis results, so that no web process computes a listening test's results twice.

One :class:`AnalysisSnapshot` row holds :func:`evalsite.analysis.snapshots.listening_test_results`'s dict for one
test, one input fingerprint and one bootstrap size. A new answer changes the fingerprint, so a snapshot is
never stale: it is either the one for the current inputs or not read at all. Older snapshots of a test are
deleted when a newer one is stored.
"""

from django.db import models

from evalsite.core.models import BaseModel


class AnalysisSnapshot(BaseModel):
    test = models.ForeignKey(
        "listening.ListeningTest", on_delete=models.CASCADE, related_name="analysis_snapshots"
    )
    fingerprint = models.CharField(max_length=64)
    n_boot = models.PositiveIntegerField()
    data = models.JSONField()
    computed_at = models.DateTimeField(help_text="when the inputs were read (before the computation)")
    duration_s = models.FloatField(help_text="wall seconds the computation took")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["test", "fingerprint", "n_boot"], name="analysis_snapshot_unique_inputs"
            ),
            models.CheckConstraint(
                condition=models.Q(duration_s__gte=0), name="analysis_snapshot_duration_nonnegative"
            ),
        ]
        ordering = ["test", "-computed_at"]

    def __str__(self) -> str:
        return f"{self.test_id}:{self.fingerprint}:{self.n_boot}"
