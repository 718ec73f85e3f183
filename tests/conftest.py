"""Shared pytest set-up.

Two sessions make up the suite (see the Makefile): unit tests on SQLite with
``evalsite.settings.test`` and integration tests on PostgreSQL + Redis with
``evalsite.settings.integration``. The unit session does not collect ``tests/integration``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INTEGRATION_SETTINGS = "evalsite.settings.integration"


def _settings_module(config) -> str:
    return config.getoption("ds", default=None) or os.environ.get("DJANGO_SETTINGS_MODULE") or config.getini("DJANGO_SETTINGS_MODULE")


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "integration" and collection_path.is_dir():
        return _settings_module(config) != INTEGRATION_SETTINGS
    return None
