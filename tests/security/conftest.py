"""Security regression tests run in the unit session (SQLite, eager Celery when asked) with the unit fixtures."""

from tests.unit.conftest import eager, empty_cache, media  # noqa: F401  (pytest finds fixtures by name here)
