"""Rate limits of the browser pages: per participant on every listener endpoint, per client network on
joining a test and on signing in (SQLite, Django test client; small budgets, the clock stopped)."""

from __future__ import annotations

import json
import types
import uuid

import django_ratelimit.core
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from evalsite.core import ratelimit
from evalsite.core.rates import parse_rate
from evalsite.listening import services, views
from evalsite.listening.models import ArtifactFlag, Assignment, Participant, Rating
from evalsite.settings.env import env_rate
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch):
    """django-ratelimit's clock, stopped at a point of time the tests move on by hand."""
    now = [1_000_000_000.0]
    monkeypatch.setattr(django_ratelimit.core, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


@pytest.fixture
def mos():
    world = listening_world(n_items=2)
    test = make_listening_test(
        name="rl-mos",
        kind="mos",
        checkpoints=world["checkpoints"],
        seed=5,
        training_items=0,
        votes_target=1000,
    )
    return services.listening_test_publish(test=test)


def join(test, **extra) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True, **extra)
    client.get(f"/l/i/{test.invite_token}/")
    response = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    assert response.status_code == 302, response.content
    return client, response["Location"]


def post_json(client, url, body, **extra):
    return client.post(
        url,
        json.dumps(body),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
        HTTP_ACCEPT="application/json",
        **extra,
    )


def rating(client, url, trial, stimulus, score):
    return post_json(
        client,
        url + "rate",
        {"trial": trial["id"], "stimulus": stimulus["id"], "score": score, "request_id": uuid.uuid4().hex},
    )


def assert_limited(response, scope: str, message_start: str, period: int = 60) -> int:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["message"].startswith(message_start), body
    assert body["extra"]["limit"] == scope
    wait = int(response["Retry-After"])
    assert 1 <= wait <= period and body["extra"]["retry_after"] == wait
    assert response["Cache-Control"] == "private, no-store"
    return wait


# ---------------------------------------------------------------------------------------------
# Per participant


def test_a_participant_over_its_budget_gets_429_with_what_was_limited_and_nothing_is_stored(
    mos, settings, clock
):
    settings.EVALSITE_LISTENER_RATE = "4/min"
    client, url = join(mos)
    trial = client.get(url + "state").json()["trials"][0]  # 1
    stim = trial["stimuli"][0]
    assert rating(client, url, trial, stim, 2).json() == {"score": 2.0}  # 2
    assert rating(client, url, trial, stim, 3).json() == {"score": 3.0}  # 3
    assert client.get(stim["url"]).status_code == 200  # 4: sounds count too
    refused = rating(client, url, trial, stim, 5)
    wait = assert_limited(
        refused,
        "listener",
        "Too many requests from this listening session: at most 4 a minute. Try again in ",
    )
    assert refused.json()["message"].endswith(f"Try again in {wait} s.")
    stored = Rating.objects.get()
    assert stored.score == 3.0 and len(stored.history) == 2
    flagged = post_json(
        client,
        url + "flag",
        {
            "trial": trial["id"],
            "stimulus": stim["id"],
            "start": 0.1,
            "end": 0.2,
            "category": "click",
            "request_id": "f1",
        },
    )
    assert_limited(flagged, "listener", "Too many requests")
    assert_limited(
        post_json(
            client,
            url + "telemetry",
            {"trial": trial["id"], "events": [{"t": 1, "type": "play", "stimulus": stim["id"], "pos": 0}]},
        ),
        "listener",
        "Too many requests",
    )
    assert_limited(
        post_json(client, url + "complete", {"trial": trial["id"]}), "listener", "Too many requests"
    )
    assert_limited(client.get(url + "state", HTTP_ACCEPT="application/json"), "listener", "Too many requests")
    assert not ArtifactFlag.objects.exists() and Assignment.objects.get(token=trial["id"]).telemetry == []
    assert not Assignment.objects.filter(completed_at__isnull=False).exists()
    # The window ends where Retry-After said; then the same request goes through.
    clock[0] += wait
    assert rating(client, url, trial, stim, 5).json() == {"score": 5.0}


def test_one_participants_budget_does_not_touch_anothers_and_a_stranger_cannot_spend_it(mos, settings, clock):
    settings.EVALSITE_LISTENER_RATE = "2/min"
    first, first_url = join(mos)
    second, second_url = join(mos)
    for _ in range(2):
        assert first.get(first_url + "state").status_code == 200
    assert_limited(first.get(first_url + "state"), "listener", "Too many requests")
    trial = second.get(second_url + "state").json()["trials"][0]
    assert rating(second, second_url, trial, trial["stimuli"][0], 4).status_code == 200
    # Requests for the second participant's URLs from other browsers are 404 and not counted against it.
    for _ in range(5):
        assert first.get(second_url + "state").status_code == 404
        assert Client().get(second_url + "state").status_code == 404
    assert_limited(second.get(second_url + "state"), "listener", "Too many requests")  # its own third request
    assert Rating.objects.filter(participant__token=second_url.rstrip("/").rsplit("/", 1)[1]).count() == 1


def test_a_real_listeners_pace_stays_far_under_the_default_budget(mos, settings, clock):
    """Ten changes of every answer as fast as the test client sends them (like dragging a slider back
    and forth), with the page's other requests: the default budget (1200 a minute) never answers 429."""
    assert settings.EVALSITE_LISTENER_RATE == "1200/min"
    client, url = join(mos)
    state = client.get(url + "state").json()
    for trial in state["trials"]:
        for stim in trial["stimuli"]:
            assert client.get(stim["url"]).status_code == 200
            for score in (1, 2, 3, 4, 5, 4, 3, 2, 3, 4):
                assert rating(client, url, trial, stim, score).status_code == 200
        assert post_json(client, url + "complete", {"trial": trial["id"]}).status_code == 200
    assert Participant.objects.get(token=url.rstrip("/").rsplit("/", 1)[1]).status == "completed"


# ---------------------------------------------------------------------------------------------
# Joining a test: per client network


def test_joins_from_one_address_are_limited_and_a_refused_join_creates_no_participant(mos, settings, clock):
    settings.EVALSITE_JOIN_RATE = "3/hour"
    for _ in range(3):
        join(mos, REMOTE_ADDR="203.0.113.9")
    client = Client(enforce_csrf_checks=True, REMOTE_ADDR="203.0.113.9")
    client.get(f"/l/i/{mos.invite_token}/")
    page = client.post(
        f"/l/i/{mos.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    # The consent form is a page, so the answer is a page: the message, and when to come back.
    assert page.status_code == 429 and 1 <= int(page["Retry-After"]) <= 3600
    text = page.content.decode()
    assert (
        views.JOIN_LIMITED.format(rate="3 an hour", wait=ratelimit.describe_wait(int(page["Retry-After"])))
        in text
    )
    assert Participant.objects.count() == 3
    as_json = post_json(client, f"/l/i/{mos.invite_token}/", {})
    assert_limited(as_json, "join", "Too many people have joined this test from your network", period=3600)
    # Another address, and the same one an hour later, join as before.
    join(mos, REMOTE_ADDR="198.51.100.4")
    clock[0] += 3600
    join(mos, REMOTE_ADDR="203.0.113.9")
    assert Participant.objects.count() == 5


def test_an_ipv6_client_is_one_network_and_a_forged_forwarded_for_is_not_a_new_client(mos, settings, clock):
    settings.EVALSITE_JOIN_RATE = "2/hour"
    join(mos, REMOTE_ADDR="2001:db8:1:2::10")
    join(mos, REMOTE_ADDR="2001:db8:1:2:ffff::99", HTTP_X_FORWARDED_FOR="192.0.2.77")
    for addr, forwarded in (("2001:db8:1:2::abcd", ""), ("2001:db8:1:2::abcd", "192.0.2.78")):
        client = Client(REMOTE_ADDR=addr, HTTP_X_FORWARDED_FOR=forwarded)
        client.get(f"/l/i/{mos.invite_token}/")
        assert client.post(f"/l/i/{mos.invite_token}/").status_code == 429
    join(mos, REMOTE_ADDR="2001:db8:1:3::10")  # the next /64
    assert Participant.objects.count() == 3


def test_the_default_join_budget_admits_the_load_benchmarks_200_listeners_from_one_address(
    mos, settings, clock
):
    assert parse_rate(settings.EVALSITE_JOIN_RATE) == (300, 3600)
    request = types.SimpleNamespace(META={"REMOTE_ADDR": "127.0.0.1"}, method="POST")
    assert [ratelimit.limit_hit(request, "join", "127.0.0.1") for _ in range(300)] == [None] * 300
    assert ratelimit.limit_hit(request, "join", "127.0.0.1").retry_after >= 1


# ---------------------------------------------------------------------------------------------
# Signing in: per client network


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_sign_in_attempts_are_limited_per_address_and_then_even_the_right_password_is_refused(
    url, settings, clock
):
    settings.EVALSITE_LOGIN_RATE = "3/hour"
    get_user_model().objects.create_superuser("ada", password="right-password-1")
    guesser = Client(REMOTE_ADDR="203.0.113.50")
    for n in range(3):
        assert (
            guesser.post(url, {"username": "ada", "password": f"guess-{n}"}).status_code == 200
        )  # form again
    refused = guesser.post(url, {"username": "ada", "password": "right-password-1"})
    assert refused.status_code == 429 and "_auth_user_id" not in guesser.session
    assert (
        "Too many sign-in attempts from your network: at most 3 an hour. Try again in "
        in refused.content.decode()
    )
    assert 1 <= int(refused["Retry-After"]) <= 3600
    as_json = guesser.post(url, {"username": "ada", "password": "x"}, HTTP_ACCEPT="application/json")
    assert_limited(as_json, "login", "Too many sign-in attempts", period=3600)
    # Looking at the page is not an attempt, and another address signs in.
    assert guesser.get(url).status_code == 200
    other = Client(REMOTE_ADDR="192.0.2.8")
    assert other.post(url, {"username": "ada", "password": "right-password-1"}).status_code == 302
    assert other.session["_auth_user_id"]


def test_a_sign_in_post_refused_by_the_csrf_check_is_not_counted(settings, clock):
    settings.EVALSITE_LOGIN_RATE = "1/hour"
    get_user_model().objects.create_superuser("ada", password="right-password-1")
    client = Client(enforce_csrf_checks=True, REMOTE_ADDR="203.0.113.51")
    for _ in range(3):
        assert client.post("/accounts/login/", {"username": "ada", "password": "x"}).status_code == 403
    client.get("/accounts/login/")
    signed_in = client.post(
        "/accounts/login/",
        {
            "username": "ada",
            "password": "right-password-1",
            "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
        },
    )
    assert signed_in.status_code == 302


# ---------------------------------------------------------------------------------------------
# The budgets as settings


def test_budgets_are_read_from_the_environment_and_a_mistyped_one_names_its_variable(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("EVALSITE_LISTENER_RATE", "600/10min")
    assert env_rate("EVALSITE_LISTENER_RATE", "1200/min") == "600/10min"
    assert parse_rate("600/10min") == (600, 600) and parse_rate("20/hour") == (20, 3600)
    monkeypatch.setenv("EVALSITE_JOIN_RATE", "OFF")
    assert env_rate("EVALSITE_JOIN_RATE", "300/hour") is None
    monkeypatch.delenv("EVALSITE_LOGIN_RATE", raising=False)
    assert env_rate("EVALSITE_LOGIN_RATE", "20/hour") == "20/hour"
    monkeypatch.setenv("EVALSITE_LOGIN_RATE", "fast")
    with pytest.raises(ImproperlyConfigured) as exc:
        env_rate("EVALSITE_LOGIN_RATE", "20/hour")
    assert str(exc.value).startswith("EVALSITE_LOGIN_RATE is 'fast'; write it as N/s, N/min, N/hour or N/day")


def test_a_budget_turned_off_never_refuses(mos, settings, clock):
    settings.EVALSITE_LISTENER_RATE = None
    settings.EVALSITE_JOIN_RATE = None
    client, url = join(mos)
    for _ in range(30):
        join(mos)
        assert client.get(url + "state").status_code == 200
    assert Participant.objects.count() == 31
