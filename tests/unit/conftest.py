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
