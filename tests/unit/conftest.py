import pytest


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    """Every unit test stores audio in its own folder, never in var/media."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def empty_cache():
    """Rate-limit counters live in the cache: no test inherits another's requests."""
    from django.core.cache import cache

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
