"""evalsite: listening tests and objective evaluation for neural audio models (Django + Celery).

Nothing is imported here, so that ``evalsite.client`` works in a training job without Django or
Celery installed. The Celery app is loaded by ``evalsite.core.apps.CoreConfig.ready`` (Django
processes) and by ``celery -A evalsite`` (which finds ``evalsite.celery.app``).
"""
