"""evalsite: listening tests and objective evaluation for neural audio models (Django + Celery).

Nothing is imported here. The training jobs' client is its own distribution (``evalsite-client``,
``client/``), so a training environment keeps its own torch. The Celery app is loaded by ``evalsite.core.apps.CoreConfig.ready`` (Django
processes) and by ``celery -A evalsite`` (which finds ``evalsite.celery.app``).
"""
