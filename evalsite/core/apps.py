import os

from django.apps import AppConfig
from django.conf import settings


class CoreConfig(AppConfig):
    name = "evalsite.core"
    label = "core"

    def ready(self) -> None:
        # Hubs offline and their caches in the model store, in every process, before any model library
        # loads (settings only describe it: a settings module that writes os.environ acts on import).
        for name, value in settings.EVALSITE_HUB_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        # Makes evalsite's Celery app the current one, so @shared_task binds to it in web processes.
        import evalsite.celery  # noqa: F401
