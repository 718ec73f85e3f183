"""The Celery application. Workers: ``celery -A evalsite worker -Q gpu,cpu``."""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings.base")

# filesystem:// (the embedded default's broker) is kombu's transport with atomic message writes; any
# other URL keeps its own transport, including one set at run time.
TRANSPORT_ALIASES["filesystem"] = "evalsite.core.filesystem_queue:Transport"


class TaskTimeLimits:
    """Task annotation (``CELERY_TASK_ANNOTATIONS``): every task gets the soft and hard time limits of its
    kind (``EVALSITE_TASK_LIMIT_KINDS``), so no task, however it was declared, can run unbounded."""

    def annotate(self, task) -> dict[str, float]:
        from django.conf import settings

        soft = settings.EVALSITE_TASK_TIME_LIMITS[
            settings.EVALSITE_TASK_LIMIT_KINDS.get(task.name, "periodic")
        ]
        return {"soft_time_limit": soft, "time_limit": soft + settings.EVALSITE_TASK_HARD_LIMIT_GRACE_S}


app = Celery("evalsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
