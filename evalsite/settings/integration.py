"""Integration tests: the real PostgreSQL and Redis on this machine (override with the env vars)."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")

from evalsite.settings.base import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# live_server answers each request on a new thread; a persistent connection per thread would
# outlive the thread and keep the test database busy when pytest-django drops it.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405

# Servers started by the tests (live_server, gunicorn) run without collectstatic: plain names, and
# WhiteNoise finds the files in the source folders. tests/integration/test_static_files_browser.py runs
# the real thing: collectstatic, hashed names, compressed copies.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
