from django.conf import settings
from django.db import models

from evalsite.core.models import BaseModel


class ResearcherToken(BaseModel):
    """A researcher's API token: acts as that user on the runs the user may see. Only a hash is kept."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user}:{self.prefix}…"
