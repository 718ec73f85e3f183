"""Shared pytest set-up.

Two sessions make up the suite (see the Makefile): unit tests on SQLite with
``evalsite.settings.test`` and integration tests on PostgreSQL + Redis with
``evalsite.settings.integration``. The unit session does not collect ``tests/integration``.

Tests live by area: ``tests/<app>/`` for each Django app, ``tests/metrics`` and ``tests/models`` for the
pure libraries, ``tests/site`` for walks over the whole site, ``tests/security`` for the trust boundary and
``tests/integration`` for the real services. Shared factories are in ``tests/factories.py``.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INTEGRATION_SETTINGS = "evalsite.settings.integration"


def _settings_module(config) -> str:
    return (
        config.getoption("ds", default=None)
        or os.environ.get("DJANGO_SETTINGS_MODULE")
        or config.getini("DJANGO_SETTINGS_MODULE")
    )


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "integration" and collection_path.is_dir():
        return _settings_module(config) != INTEGRATION_SETTINGS
    return None


@pytest.fixture(autouse=True)
def checkpoint_roots(settings, tmp_path_factory):
    """Tests write checkpoints under pytest's temporary folders: those are a checkpoint root, as an
    operator's checkpoint store would be (EVALSITE_CHECKPOINT_ROOTS; worker_env passes it to workers).
    So are /ckpt and /c, the made-up folders of tests that register paths no one opens."""
    settings.EVALSITE_CHECKPOINT_ROOTS = (
        *settings.EVALSITE_CHECKPOINT_ROOTS,
        str(tmp_path_factory.getbasetemp()),
        "/ckpt",
        "/c",
    )
    return settings.EVALSITE_CHECKPOINT_ROOTS


def _unit_session(request) -> bool:
    return _settings_module(request.config) != INTEGRATION_SETTINGS


@pytest.fixture(autouse=True)
def media(request, settings, tmp_path):
    """Every unit test stores audio in its own folder, never in var/media. (Integration tests share
    MEDIA_ROOT with their worker processes, so theirs stays as the integration settings say.)"""
    if _unit_session(request):
        settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def empty_cache(request):
    """Rate-limit counters live in the cache: no unit test inherits another's requests."""
    from django.core.cache import cache

    if not _unit_session(request):
        yield
        return
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def eager(settings):
    """Celery tasks run in-process (when their job's transaction commits), so a job sent (again) visibly runs."""
    from evalsite.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False
