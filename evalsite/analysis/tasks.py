"""Celery tasks of the analysis app (thin: the service does the work)."""

from celery import shared_task

from evalsite.analysis.snapshots import analysis_snapshots_refresh


@shared_task
def analysis_refresh_task() -> list[int]:
    """Store the results of every published listening test whose answers changed since its last snapshot."""
    return analysis_snapshots_refresh()
