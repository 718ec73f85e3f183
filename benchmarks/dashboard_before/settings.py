"""evalsite.settings.base less WhiteNoise and the hashed storage; templates here first (the old analysis base)."""

from pathlib import Path

from evalsite.settings.base import *  # noqa: F401,F403
from evalsite.settings.base import INSTALLED_APPS, MIDDLEWARE, STORAGES, TEMPLATES

INSTALLED_APPS = [app for app in INSTALLED_APPS if not app.startswith("whitenoise")]
MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("whitenoise")]
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
TEMPLATES = [{**TEMPLATES[0], "DIRS": [Path(__file__).resolve().parent / "templates"]}]
ROOT_URLCONF = "dashboard_before.urls"
