"""The Celery application. Workers: ``celery -A evalsite worker -Q gpu,cpu``."""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings.base")

# filesystem:// (the embedded default's broker) is kombu's transport with atomic message writes; any
# other URL keeps its own transport, including one set at run time.
TRANSPORT_ALIASES["filesystem"] = "evalsite.core.filesystem_queue:Transport"

app = Celery("evalsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
