"""Which listening tests a researcher (or a run token) may see and act on.

A test rates checkpoints of one or more runs; it is visible when every one of those runs is visible
(``evalsite.runs.access``), so a test never shows a researcher the audio or scores of a run they
cannot open. A test rating no checkpoint at all is a superuser's. Invisible tests are "not found".
"""

from __future__ import annotations

from django.db.models import QuerySet

from evalsite.listening.models import ListeningTest
from evalsite.runs.access import runs_visible
from evalsite.runs.models import Run


def listening_tests_visible(user, *, runs: QuerySet[Run] | None = None) -> QuerySet[ListeningTest]:
    """``runs``: the runs the caller may see, when that is not ``runs_visible(user)`` (an API run token)."""
    if runs is None:
        if getattr(user, "is_superuser", False):
            return ListeningTest.objects.all()
        runs = runs_visible(user)
    hidden = Run.objects.exclude(pk__in=runs.values("pk"))
    return (
        ListeningTest.objects.filter(conditions__checkpoint__isnull=False)
        .exclude(conditions__checkpoint__run__in=hidden)
        .distinct()
    )
