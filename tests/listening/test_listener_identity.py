"""Issue 16, item 1: a listener's identity is per test. One browser holds one signed binding per test,
so it can take several tests; the invite link brings it back to its own participant (no second
consent, no new participant), finished and screened-out listeners see their end page again, and the
researcher sees abandoned sessions as such (Django test client, SQLite)."""

import json
import uuid
from datetime import timedelta

import pytest
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.utils import timezone

from evalsite.listening import services, views
from evalsite.listening.models import ArtifactFlag, Assignment, ListeningTest, Participant, Rating
from evalsite.listening.selectors import (
    SCREENED_OUT_MESSAGE,
    headphone_trials,
    listener_state,
    listening_test_progress,
    participants_abandoned,
)
from tests.factories import hear, listening_world, make_listening_test

pytestmark = pytest.mark.django_db

PID = "60aa0c0ffee0123456789abc"
CONSENT_BUTTON = 'data-testid="consent-agree"'
LISTENER_APP = 'id="listener-app"'


@pytest.fixture
def world():
    return listening_world(n_items=3)


def build(world, name, kind="mushra", **kw) -> ListeningTest:
    test = make_listening_test(
        name=name, kind=kind, checkpoints=world["checkpoints"], training_items=0, seed=7, **kw
    )
    return services.listening_test_publish(test=test)


def browser() -> Client:
    return Client(enforce_csrf_checks=True)


def invite_url(test: ListeningTest) -> str:
    return f"/l/i/{test.invite_token}/"


def consent(client: Client, test: ListeningTest, **params) -> str:
    """Open the invite link, see the consent form, agree: the session URL the browser is sent to."""
    page = client.get(invite_url(test), params)
    assert page.status_code == 200 and CONSENT_BUTTON in page.content.decode()
    joined = client.post(
        invite_url(test), {**params, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    assert joined.status_code == 302
    return joined["Location"]


def post_json(client: Client, url: str, body: dict):
    return client.post(
        url,
        json.dumps(body),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
        HTTP_ACCEPT="application/json",
    )


def rate_first(client: Client, session: str, score: float, request_id: str) -> dict:
    trial = client.get(session + "state").json()["trials"][0]
    body = {
        "trial": trial["id"],
        "stimulus": trial["stimuli"][0]["id"],
        "score": score,
        "request_id": request_id,
    }
    assert post_json(client, session + "rate", body).status_code == 200
    return trial


def finish(participant: Participant, score: float) -> None:
    for trial in listener_state(participant)["trials"]:
        for stimulus in trial["stimuli"]:
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stimulus["id"],
                score=score,
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def signed(value: str) -> str:
    """``value`` signed as the listener cookie is (whatever salt scheme this Django version uses)."""
    response = HttpResponse()
    response.set_signed_cookie(views.COOKIE, value, salt=views.COOKIE_SALT)
    return response.cookies[views.COOKIE].value


def unsigned(cookie: str) -> str:
    request = RequestFactory().get("/")
    request.COOKIES[views.COOKIE] = cookie
    return request.get_signed_cookie(views.COOKIE, salt=views.COOKIE_SALT)


def cookie_bindings(client: Client) -> list[str]:
    return unsigned(client.cookies[views.COOKIE].value).split("~")


# ---------------------------------------------------------------------------------------------
# Several tests in one browser


def test_one_browser_takes_a_mushra_and_an_smos_test_and_keeps_both_sessions(world):
    mushra, smos = build(world, "demo-mushra"), build(world, "demo-smos", kind="smos")
    client = browser()
    first = consent(client, mushra)
    rate_first(client, first, 64, "m-1")
    second = consent(client, smos)  # the join of issue 16 that took the first session away
    rate_first(client, second, 4, "s-1")

    # Both sessions still belong to this browser: page, state and answers of each.
    assert LISTENER_APP in client.get(first).content.decode()
    trial = rate_first(client, first, 70, "m-2")
    assert client.get(first + "state").json()["trials"][0]["ratings"] == {trial["stimuli"][0]["id"]: 70.0}
    assert client.get(second).status_code == 200 and client.get(second + "state").status_code == 200
    m, s = Participant.objects.get(test=mushra), Participant.objects.get(test=smos)
    assert first == f"/l/p/{m.token}/" and second == f"/l/p/{s.token}/"
    assert cookie_bindings(client) == [f"{mushra.invite_token}.{m.token}", f"{smos.invite_token}.{s.token}"]
    # Each invite link takes the browser back to that test's own session.
    assert client.get(invite_url(mushra))["Location"] == first
    assert client.get(invite_url(smos))["Location"] == second


def test_a_browser_bound_to_one_test_is_still_a_stranger_to_other_listeners_sessions(world):
    test, other = build(world, "a"), build(world, "b")
    owner, stranger = browser(), browser()
    victim = consent(owner, test)
    consent(stranger, other)
    assert stranger.get(victim).status_code == 404
    assert (
        post_json(stranger, victim + "rate", {"trial": "x", "stimulus": "y", "score": 1}).status_code == 404
    )
    # A binding naming the victim's token for the stranger's own test, unsigned, is not one either.
    stranger.cookies[views.COOKIE] = f"{other.invite_token}.{victim.split('/')[3]}"
    assert stranger.get(victim).status_code == 404
    assert Rating.objects.count() == 0


def test_the_cookie_keeps_at_most_its_cap_of_bindings_dropping_the_oldest(world, monkeypatch):
    monkeypatch.setattr(views, "COOKIE_MAX_TESTS", 2)
    tests = [build(world, f"cap-{i}") for i in range(3)]
    client = browser()
    sessions = [consent(client, t) for t in tests]
    assert len(cookie_bindings(client)) == 2
    assert client.get(sessions[0]).status_code == 404
    assert all(client.get(s).status_code == 200 for s in sessions[1:])


def test_a_full_cookie_of_bindings_with_the_longest_tokens_stays_under_the_browsers_4096_byte_limit():
    longest = ListeningTest._meta.get_field("invite_token").max_length
    assert longest == Participant._meta.get_field("token").max_length == 40
    request = RequestFactory().get("/")
    bindings = {f"{i:040d}": "t" * longest for i in range(views.COOKIE_MAX_TESTS + 10)}
    test, ptoken = ListeningTest(invite_token="i" * longest), "p" * longest
    response = views._bind(HttpResponse(), request, bindings, test=test, ptoken=ptoken)
    morsel = response.cookies[views.COOKIE]
    assert len(morsel.OutputString()) < 4096
    kept = unsigned(morsel.value).split("~")
    assert len(kept) == views.COOKIE_MAX_TESTS and kept[-1] == f"{test.invite_token}.{ptoken}"
    assert morsel["httponly"] and morsel["samesite"] == "Lax"


def test_a_cookie_from_before_per_test_bindings_still_opens_its_session_and_is_rewritten(world):
    test, other = build(world, "old"), build(world, "new")
    participant = services.participant_join(test=test)
    client = browser()
    client.cookies[views.COOKIE] = signed(participant.token)
    session = f"/l/p/{participant.token}/"
    assert LISTENER_APP in client.get(session).content.decode()
    again = client.get(invite_url(test))
    assert again.status_code == 302 and again["Location"] == session
    assert cookie_bindings(client) == [f"{test.invite_token}.{participant.token}"]
    second = consent(client, other)
    assert client.get(session).status_code == 200 and client.get(second).status_code == 200
    assert Participant.objects.filter(test=test).count() == 1


# ---------------------------------------------------------------------------------------------
# Coming back with the invite link


@pytest.mark.parametrize("params", [{}, {"PROLIFIC_PID": PID, "STUDY_ID": "st", "SESSION_ID": "se"}])
def test_reopening_the_invite_link_resumes_the_session_without_consent_or_a_new_participant(world, params):
    test = build(world, "resume")
    client = browser()
    session = consent(client, test, **params)
    trial = rate_first(client, session, 55, "r-1")

    back = client.get(invite_url(test), params)  # the tab was closed; the link is opened again
    assert back.status_code == 302 and back["Location"] == session
    # A consent form left open in another tab and sent afterwards joins nobody new either.
    stale = client.post(
        invite_url(test), {**params, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    assert stale.status_code == 302 and stale["Location"] == session
    assert Participant.objects.filter(test=test).count() == 1
    assert Assignment.objects.filter(participant__test=test).count() == test.trials.count()
    state = client.get(session + "state").json()
    assert state["trials"][0]["ratings"] == {trial["stimuli"][0]["id"]: 55.0}


def test_the_link_without_the_crowd_parameters_resumes_the_crowd_workers_session(world):
    test = build(world, "bare-link")
    client = browser()
    session = consent(client, test, PROLIFIC_PID=PID)
    assert client.get(invite_url(test))["Location"] == session
    assert Participant.objects.get(test=test).external_id == PID


def test_another_crowd_id_at_the_same_computer_is_another_listener(world):
    test = build(world, "shared-computer")
    client = browser()
    first = consent(client, test, PROLIFIC_PID=PID)
    second = consent(client, test, PROLIFIC_PID="another-worker")
    assert first != second
    assert sorted(Participant.objects.filter(test=test).values_list("external_id", flat=True)) == sorted(
        [PID, "another-worker"]
    )
    # The first worker's id on this browser, whose binding now is the second's: the rule for a
    # crowd id in use holds (the first session stays untouched).
    refused = client.post(
        invite_url(test), {"PROLIFIC_PID": PID, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    assert refused.status_code == 409 and services.CROWD_ID_IN_USE in refused.content.decode()


def test_a_finished_listener_who_opens_the_link_again_sees_the_completion_page_not_the_test(world):
    test = build(world, "finished", completion_code="DONE-7", completion_redirect="https://example.org/back")
    client = browser()
    session = consent(client, test)
    participant = Participant.objects.get(test=test)
    finish(participant, 80)
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED

    for response in (
        client.get(invite_url(test)),
        client.post(invite_url(test), {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}),
    ):
        assert response.status_code == 302 and response["Location"] == session
    page = client.get(session).content.decode()
    assert 'data-testid="completion"' in page and "DONE-7" in page and "https://example.org/back" in page
    assert LISTENER_APP not in page and CONSENT_BUTTON not in page
    # Also once the test has closed: the end page, not the "not open" message.
    services.listening_test_close(test=test)
    assert client.get(invite_url(test))["Location"] == session
    assert 'data-testid="completion"' in client.get(session).content.decode()
    assert Participant.objects.filter(test=test).count() == 1


def test_a_listener_screened_out_by_the_headphone_check_cannot_rejoin_through_the_link(world):
    test = build(
        world, "screened", headphone_check=True, screened_out_redirect="https://example.org/screened"
    )
    client = browser()
    session = consent(client, test)
    participant = Participant.objects.get(test=test)
    hear(participant)  # the calibration noise, as the page plays it
    assert post_json(client, session + "calibration", {"plays": 1}).status_code == 200
    wrong = [t["answer"] % 3 + 1 for t in headphone_trials(participant)]
    assert post_json(client, session + "headphone", {"answers": wrong}).json()["passed"] is False

    again = client.get(invite_url(test))
    assert again.status_code == 302 and again["Location"] == session
    rejoin = client.post(invite_url(test), {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert rejoin.status_code == 302 and rejoin["Location"] == session
    page = client.get(session).content.decode()
    assert 'data-testid="screened-out"' in page and SCREENED_OUT_MESSAGE in page
    assert "https://example.org/screened" in page and LISTENER_APP not in page
    assert Participant.objects.filter(test=test).count() == 1


def test_an_unfinished_session_of_a_closed_test_gets_the_closed_message(world):
    test = build(world, "closed")
    client = browser()
    consent(client, test)
    services.listening_test_close(test=test)
    response = client.get(invite_url(test))
    assert response.status_code == 410 and services.TEST_NOT_OPEN in response.content.decode()


# ---------------------------------------------------------------------------------------------
# Abandoned sessions, as the researcher sees them


def age(participant: Participant, minutes: float) -> None:
    """Move every timestamp of the participant's activity ``minutes`` into the past."""
    then = timezone.now() - timedelta(minutes=minutes)
    Participant.objects.filter(pk=participant.pk).update(updated_at=then, consented_at=then)
    Assignment.objects.filter(participant=participant, completed_at__isnull=False).update(completed_at=then)
    Rating.objects.filter(participant=participant).update(updated_at=then)
    ArtifactFlag.objects.filter(participant=participant).update(updated_at=then)


def test_a_listener_silent_for_the_configured_time_shows_as_abandoned_until_they_answer_again(
    world, settings, admin_client
):
    settings.EVALSITE_ABANDONED_AFTER_MIN = 30
    test = build(world, "abandon")
    left, finished, screened, recent = (services.participant_join(test=test) for _ in range(4))
    state = listener_state(left)
    trial = state["trials"][0]
    for stimulus in trial["stimuli"]:
        services.rating_submit(
            participant=left,
            trial=trial["id"],
            stimulus=stimulus["id"],
            score=40,
            request_id=uuid.uuid4().hex,
        )
    services.trial_complete(participant=left, trial=trial["id"])
    finish(finished, 90)
    Participant.objects.filter(pk=screened.pk).update(status=Participant.Status.SCREENED_OUT)
    for p in (left, finished, screened):
        age(p, 45)
    age(recent, 29)  # silent, but not yet for the configured time

    progress = listening_test_progress(test)
    # Abandoned sessions are listed apart from the other listeners.
    by_pk = {p.pk: p for p in progress["participants"] + progress["abandoned"]}
    assert [by_pk[p.pk].abandoned for p in (left, finished, screened, recent)] == [True, False, False, False]
    assert [p.pk for p in progress["abandoned"]] == [left.pk] and left.pk not in {
        p.pk for p in progress["participants"]
    }
    # The activity subqueries leave the trial counts of the same rows as they were.
    assert (by_pk[left.pk].done, by_pk[left.pk].total) == (1, test.trials.count())
    assert by_pk[finished.pk].done == by_pk[finished.pk].total == test.trials.count()

    page = admin_client.get(f"/listening/{test.pk}/").content.decode()
    assert "1 abandoned" in page and "30 minutes" in page
    assert page.count('<td data-testid="listener-status">abandoned</td>') == 1
    analysis = admin_client.get(f"/analysis/tests/{test.pk}/").content.decode()
    assert '<span data-testid="abandoned">1 abandoned' in analysis and "30 minutes" in analysis
    assert participants_abandoned(test) == 1

    # One answer, and the listener is active again; a flag alone is activity too.
    services.rating_submit(
        participant=left,
        trial=state["trials"][1]["id"],
        stimulus=state["trials"][1]["stimuli"][0]["id"],
        score=41,
        request_id="back",
    )
    assert listening_test_progress(test)["abandoned"] == []
    age(left, 45)
    services.flag_submit(
        participant=left,
        trial=state["trials"][1]["id"],
        stimulus=state["trials"][1]["stimuli"][1]["id"],
        start=0.1,
        end=0.2,
        category="click",
        request_id="f-1",
    )
    assert listening_test_progress(test)["abandoned"] == []
    settings.EVALSITE_ABANDONED_AFTER_MIN = 20
    assert len(listening_test_progress(test)["abandoned"]) == 1  # ``recent``, silent for 29 minutes
    assert participants_abandoned(test) == 1
