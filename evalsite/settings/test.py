"""Unit tests: SQLite in memory unless DATABASE_URL says otherwise; integration tests set it."""

import os

os.environ.setdefault("DATABASE_URL", "sqlite://:memory:")

from evalsite.settings.base import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Unit tests do not wait out every sound: only the byte rule of "heard" holds here by default; the
# tests of the wall-time rule (tests/listening/test_heard.py) set the fraction they test.
EVALSITE_LISTENING_MIN_PLAY_FRACTION = 0.0

# Unit tests render pages without running collectstatic: plain names, no manifest to look them up in.
# The hashed, compressed storage is tested on its own (tests/core/test_staticfiles.py) and in a browser
# (tests/integration/test_static_files_browser.py).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# WhiteNoise finds the files in the source folders at each request (no STATIC_ROOT to scan, nor warn about).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
