from django.conf import settings
from django.db import models
from django.db.models import Q

from evalsite.core.models import BaseModel
from evalsite.jobs.models import Job
from evalsite.runs.checkpoint_files import checkpoint_dir_validate
from evalsite.runs.families import model_family_validate


class EvalSet(BaseModel):
    """The fixed material every checkpoint of a run is evaluated on."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.name


class EvalItem(BaseModel):
    eval_set = models.ForeignKey(EvalSet, on_delete=models.CASCADE, related_name="items")
    key = models.CharField(max_length=300, help_text="stable id within the set (file stem or manifest id)")
    reference = models.ForeignKey(
        "audio.AudioAsset", on_delete=models.PROTECT, null=True, blank=True, related_name="eval_items"
    )
    text = models.TextField(blank=True, help_text="transcript or caption / prompt")
    speaker = models.CharField(max_length=200, blank=True)
    class_label = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["eval_set", "key"], name="evalitem_unique_key_per_set")
        ]
        ordering = ["eval_set", "key"]

    def __str__(self) -> str:
        return f"{self.eval_set}:{self.key}"


class Run(BaseModel):
    class Kind(models.TextChoices):
        VOCODER = "vocoder"
        TOKENIZER = "tokenizer"
        GENERATOR = "generator"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    model_family = models.CharField(
        max_length=200, help_text="e.g. hifigan, evagan, sat, aar, or pkg.mod:factory"
    )
    config = models.JSONField(default=dict, blank=True)
    eval_set = models.ForeignKey(
        EvalSet, on_delete=models.PROTECT, null=True, blank=True, related_name="runs"
    )
    checkpoint_dir = models.CharField(max_length=1024, blank=True)
    checkpoint_pattern = models.CharField(
        max_length=300,
        blank=True,
        help_text="empty: the built-in names (HiFi-GAN g_00012000, Lightning step=12000.ckpt, "
        "checkpoint_step_12000.pth); or a regex with a (?P<step>...) group, matched against file names",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    collaborators = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="shared_runs",
        help_text="researchers who may see and change this run besides its owner",
    )
    webhook_url = models.URLField(max_length=500, blank=True, help_text="alerts are POSTed here, signed")
    webhook_secret = models.CharField(max_length=100, blank=True, help_text="HMAC-SHA256 key of the webhook")
    # The cursor of the newest alert, bumped in the transaction that creates it: pollers get their
    # ETag from the run row the token lookup already loaded.
    alert_cursor = models.PositiveBigIntegerField(default=0)
    # Only a hash is stored; the token itself is shown once when it is issued.
    api_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    api_token_prefix = models.CharField(max_length=12, blank=True)

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # alert_cursor only moves forward, under a lock, in alerts.services.alert_create; a save
        # from a copy loaded earlier must not move it back.
        if self.pk is not None and not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                f.name for f in self._meta.concrete_fields if not f.primary_key and f.name != "alert_cursor"
            ]
        super().save(*args, **kwargs)

    def clean(self) -> None:
        # The watcher reads these models, so it is imported here rather than at the top.
        from evalsite.runs.watcher import compile_pattern

        compile_pattern(self.checkpoint_pattern)
        if self.checkpoint_dir:  # a run token may set it: the watcher would read whatever it names
            checkpoint_dir_validate(path=self.checkpoint_dir, owner=self.owner)
        if self.model_family:  # blank is reported by the field itself
            model_family_validate(self.model_family)


class Checkpoint(BaseModel):
    class Status(models.TextChoices):
        REGISTERED = "registered"
        GENERATING = "generating"
        SCORING = "scoring"
        DETECTING = "detecting"
        DONE = "done"
        FAILED = "failed"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveBigIntegerField()
    uri = models.CharField(max_length=2048, help_text="local path or URI of the weights")
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.REGISTERED)
    registered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_unique_step_per_run")]
        ordering = ["run", "step"]

    def __str__(self) -> str:
        return f"{self.run.name}@{self.step}"


class Generation(BaseModel):
    """One output of a checkpoint for one eval item under given parameters and seed."""

    class Status(models.TextChoices):
        DONE = "done"
        FAILED = "failed"

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="generations")
    item = models.ForeignKey(EvalItem, on_delete=models.CASCADE, related_name="generations")
    params = models.JSONField(default=dict, blank=True)
    params_hash = models.CharField(max_length=64, help_text="sha256 of the canonical params JSON")
    seed = models.BigIntegerField(default=0)
    asset = models.ForeignKey(
        "audio.AudioAsset", on_delete=models.PROTECT, null=True, blank=True, related_name="generations"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DONE)
    error = models.TextField(blank=True)
    wall_time_s = models.FloatField(null=True, blank=True)
    device = models.CharField(max_length=50, blank=True)
    info = models.JSONField(
        default=dict, blank=True, help_text="what the model reported, e.g. tokens/s and bitrate"
    )
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="generations")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["checkpoint", "item", "params_hash", "seed"], name="generation_unique_per_params_seed"
            ),
            models.CheckConstraint(
                condition=Q(status="failed") | Q(asset__isnull=False), name="generation_done_has_asset"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.checkpoint}:{self.item.key}"


class WatchedFile(BaseModel):
    """A file seen in a run's checkpoint directory; registered once its size has stopped changing."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="watched_files")
    path = models.CharField(max_length=2048)
    step = models.PositiveBigIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    mtime_ns = models.BigIntegerField()
    stable_scans = models.PositiveIntegerField(
        default=0, help_text="scans in a row that saw the same size and mtime"
    )
    checkpoint = models.ForeignKey(
        Checkpoint, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True, help_text="why it was not registered, if it was not")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "path"], name="watchedfile_unique_path")]
