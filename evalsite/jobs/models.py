from django.db import models
from django.db.models import Q

from evalsite.core.models import BaseModel


class Job(BaseModel):
    """A unit of background work; its status moves only through ``jobs.services.job_*``.

    The references to runs' rows are string foreign keys: jobs sits below runs and never imports it.
    """

    class Kind(models.TextChoices):
        IMPORT_EVALSET = "import_evalset"
        GENERATION = "generation"
        METRICS = "metrics"
        DETECTION = "detection"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    kind = models.CharField(max_length=30, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    progress = models.FloatField(default=0.0)
    progress_message = models.CharField(max_length=500, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=300, blank=True)
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, null=True, blank=True, related_name="jobs")
    checkpoint = models.ForeignKey(
        "runs.Checkpoint", on_delete=models.CASCADE, null=True, blank=True, related_name="jobs"
    )
    eval_set = models.ForeignKey(
        "runs.EvalSet", on_delete=models.CASCADE, null=True, blank=True, related_name="jobs"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The table the model had when it lived in runs: moving the model kept every row where it was.
        db_table = "runs_job"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0.0) & Q(progress__lte=1.0), name="job_progress_in_unit_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind}#{self.pk} {self.status}"
