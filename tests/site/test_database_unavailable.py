"""A request that lost its database connection is answered 503 with Retry-After where resending it
is safe (reads, and the listener's idempotent answers), so its client retries it."""

import types

import pytest
from django.db import InterfaceError, OperationalError
from django.test import Client
from django.urls import include, path

from evalsite.core.middleware import DATABASE_UNAVAILABLE


def dropped(request, **kwargs):
    raise OperationalError("terminating connection due to administrator command")


def closed(request, **kwargs):
    raise InterfaceError("connection already closed")


def bug(request):
    raise ZeroDivisionError("division by zero")


urls = types.ModuleType("database_unavailable_urls")
urls.urlpatterns = [
    path("dropped/", dropped),
    path("bug/", bug),
    # Shaped like the listener's participant endpoints (namespace "listening", a ptoken).
    path(
        "l/",
        include(([path("p/<str:ptoken>/rate", dropped), path("p/<str:ptoken>/flag", closed)], "listening")),
    ),
]


@pytest.fixture
def client(settings):
    settings.ROOT_URLCONF = urls
    return Client()


@pytest.mark.parametrize("url", ["/l/p/tok/rate", "/l/p/tok/flag"])
def test_a_listener_answer_that_lost_its_connection_is_answered_503_json_with_retry_after(client, url):
    response = client.post(url, "{}", content_type="application/json", HTTP_ACCEPT="application/json")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json() == {"message": DATABASE_UNAVAILABLE, "extra": {"retry_after_s": 1}}


def test_a_page_read_gets_the_503_as_text(client):
    response = client.get("/dropped/", HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert (
        response["Content-Type"].startswith("text/plain")
        and response.content.decode() == DATABASE_UNAVAILABLE
    )


def test_a_write_elsewhere_keeps_djangos_500_since_it_may_have_committed_before_the_drop(client):
    # evalsite_client repeats even non-idempotent calls (run_create) on a 503.
    with pytest.raises(OperationalError):
        client.post("/dropped/", "{}", content_type="application/json")


def test_other_errors_are_left_to_django(client):
    with pytest.raises(ZeroDivisionError):
        client.get("/bug/")
