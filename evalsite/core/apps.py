from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "evalsite.core"
    label = "core"

    def ready(self) -> None:
        # Makes evalsite's Celery app the current one, so @shared_task binds to it in web processes.
        import evalsite.celery  # noqa: F401
