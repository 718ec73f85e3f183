from django.db import models

from evalsite.core.models import BaseModel


def audio_upload_path(instance: "AudioAsset", filename: str) -> str:
    # Named by content so the same audio always lands on the same path and no name leaks meaning.
    h = instance.content_hash
    return f"audio/{h[:2]}/{h[2:4]}/{h}.wav"


class AudioAsset(BaseModel):
    """One distinct piece of audio, identified by the hash of its decoded PCM and sample rate.

    Importing the same audio twice (even from a different container format) finds this row again.
    """

    content_hash = models.CharField(max_length=64, unique=True)
    sample_rate = models.PositiveIntegerField()
    channels = models.PositiveSmallIntegerField()
    frames = models.PositiveBigIntegerField()
    duration_s = models.FloatField()
    peak = models.FloatField(help_text="max |sample|, linear full scale")
    peak_dbfs = models.FloatField(null=True, blank=True)
    loudness_lufs = models.FloatField(
        null=True, blank=True, help_text="BS.1770 integrated; empty below 400 ms"
    )
    file = models.FileField(upload_to=audio_upload_path, max_length=255)
    original_name = models.CharField(max_length=512, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(frames__gt=0), name="audioasset_frames_positive"),
            models.CheckConstraint(condition=models.Q(channels__gt=0), name="audioasset_channels_positive"),
            models.CheckConstraint(condition=models.Q(sample_rate__gt=0), name="audioasset_rate_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.content_hash[:12]} {self.duration_s:.2f}s@{self.sample_rate}"
