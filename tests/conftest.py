"""Shared pytest set-up.

Two sessions make up the suite (see the Makefile): unit tests on SQLite with
``evalsite.settings.test`` and integration tests on PostgreSQL + Redis with
``evalsite.settings.integration``. The unit session does not collect ``tests/integration``.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INTEGRATION_SETTINGS = "evalsite.settings.integration"


def _settings_module(config) -> str:
    return config.getoption("ds", default=None) or os.environ.get("DJANGO_SETTINGS_MODULE") or config.getini("DJANGO_SETTINGS_MODULE")


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "integration" and collection_path.is_dir():
        return _settings_module(config) != INTEGRATION_SETTINGS
    return None


@pytest.fixture(autouse=True)
def checkpoint_roots(settings, tmp_path_factory):
    """Tests write checkpoints under pytest's temporary folders: those are a checkpoint root, as an
    operator's checkpoint store would be (EVALSITE_CHECKPOINT_ROOTS; worker_env passes it to workers).
    So are /ckpt and /c, the made-up folders of tests that register paths no one opens."""
    settings.EVALSITE_CHECKPOINT_ROOTS = (*settings.EVALSITE_CHECKPOINT_ROOTS, str(tmp_path_factory.getbasetemp()),
                                          "/ckpt", "/c")
    return settings.EVALSITE_CHECKPOINT_ROOTS
