"""Unit tests: SQLite in memory unless DATABASE_URL says otherwise; integration tests set it."""

import os

os.environ.setdefault("DATABASE_URL", "sqlite://:memory:")

from evalsite.settings.base import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
