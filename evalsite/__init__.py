"""evalsite: listening tests and objective evaluation for neural audio models (Django + Celery)."""

from evalsite.celery import app as celery_app

__all__ = ["celery_app"]
