"""A researcher's "preview as a listener": the real listener pages and services, with nothing kept."""

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    ListeningTest,
    Participant,
    Rating,
    SoundFetch,
    StimulusHandle,
)
from evalsite.listening.preview import PREVIEW_EXPIRED
from evalsite.listening.selectors import headphone_trials
from evalsite.listening.services import listening_test_close, listening_test_publish, participant_join
from evalsite.listening.services.answers import PLAY_ALL_FIRST
from evalsite.listening.services.session import HEADPHONE_CHECK_FIRST, trial_coverage
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

BANNER = "Preview — answers are not saved."


def nothing_kept():
    for model in (Participant, Assignment, StimulusHandle, Rating, ArtifactFlag, SoundFetch):
        assert not model.objects.exists(), model.__name__


def mushra(**extra):
    world = listening_world(n_items=3)
    return make_listening_test(
        name="preview-me",
        kind="mushra",
        checkpoints=world["checkpoints"],
        training_items=1,
        require_play_all=True,
        headphone_check=True,
        gold_items=1,
        instructions="Rate each sound against the reference.",
        **extra,
    )


def start(client, test) -> str:
    consent = client.get(f"/listening/{test.pk}/preview/")
    assert consent.status_code == 200 and BANNER in consent.content.decode()
    response = client.post(f"/listening/{test.pk}/preview/")
    assert response.status_code == 302 and response["Location"].startswith("/l/p/preview.")
    return response["Location"].split("/")[3]


def get_json(client, url):
    response = client.get(url, HTTP_ACCEPT="application/json")
    return response.status_code, response.json()


def post(client, url, body):
    response = client.post(
        url, json.dumps(body), content_type="application/json", HTTP_ACCEPT="application/json"
    )
    return response.status_code, (response.json() if response.content else None)


def preview_participant(client, token) -> Participant:
    """The preview's participant as its snapshot (in the researcher's session) has it: to answer the
    headphone check right, as a listener with headphones would."""
    snapshot = json.loads(client.session["listening-previews"][token]["snapshot"])
    return Participant(token=token, seed=snapshot["participant"]["seed"])


def fetch(client, url):
    response = client.get(url)
    assert response.status_code == 200, url
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert body[:4] == b"RIFF"  # audio is served to the researcher


def walk_checks(client, token):
    base = f"/l/p/{token}"
    status, state = get_json(client, f"{base}/state")
    assert status == 200 and state["phase"] == "calibration"
    fetch(client, state["calibration"]["url"])
    assert post(client, f"{base}/calibration", {"plays": 1})[0] == 200
    status, state = get_json(client, f"{base}/state")
    assert state["phase"] == "headphone"
    for trial in state["headphone_check"]["trials"]:
        fetch(client, trial["url"])
    answers = [t["answer"] for t in headphone_trials(preview_participant(client, token))]
    status, body = post(client, f"{base}/headphone", {"answers": answers})
    assert status == 200 and body["passed"] is True


def walk_trials(client, token):
    base = f"/l/p/{token}"
    status, state = get_json(client, f"{base}/state")
    assert state["phase"] == "training" and state["test"]["instructions"].startswith("Rate each sound")
    for n, trial in enumerate(state["trials"]):
        for s in trial["stimuli"]:
            assert (
                post(
                    client,
                    f"{base}/rate",
                    {"trial": trial["id"], "stimulus": s["id"], "score": 80, "request_id": uuid.uuid4().hex},
                )[0]
                == 200
            )
        # Not heard yet: refused as for a listener.
        status, body = post(client, f"{base}/complete", {"trial": trial["id"]})
        assert status == 400 and body["message"].startswith(PLAY_ALL_FIRST.split(":")[0])
        fetch(client, trial["reference"]["url"])
        for s in trial["stimuli"]:
            fetch(client, s["url"])
        first = trial["stimuli"][0]["id"]
        assert (
            post(
                client,
                f"{base}/flag",
                {
                    "trial": trial["id"],
                    "stimulus": first,
                    "start": 0.1,
                    "end": 0.3,
                    "category": "click",
                    "request_id": uuid.uuid4().hex,
                },
            )[0]
            == 201
        )
        assert (
            post(client, f"{base}/telemetry", {"trial": trial["id"], "events": [{"t": 1, "type": "play"}]})[0]
            == 204
        )
        status, body = post(client, f"{base}/complete", {"trial": trial["id"]})
        assert status == 200, body
        if n == 0:
            # The answers of the walk so far come back with the state, as for a listener.
            _, again = get_json(client, f"{base}/state")
            assert again["trials"][0]["done"] and len(again["trials"][0]["flags"]) == 1
            assert set(again["trials"][0]["ratings"].values()) == {80}
    return body


def test_a_researcher_walks_a_draft_test_to_the_end_and_nothing_is_kept(admin_client):
    test = mushra()
    token = start(admin_client, test)
    page = admin_client.get(f"/l/p/{token}/").content.decode()
    assert BANNER in page and 'data-preview="true"' in page and f"/l/p/{token}/state" in page
    walk_checks(admin_client, token)
    last = walk_trials(admin_client, token)
    assert last["phase"] == "done"
    end = admin_client.get(f"/l/p/{token}/").content.decode()
    assert "you have finished the test" in end and BANNER in end
    nothing_kept()
    test.refresh_from_db()
    assert test.status == ListeningTest.Status.DRAFT and test.votes_target == 10


def test_the_preview_enforces_the_controls_a_listener_meets(admin_client):
    test = mushra()
    token = start(admin_client, test)
    status, state = get_json(admin_client, f"/l/p/{token}/state")
    trial = state["trials"][0]
    body = {"trial": trial["id"], "stimulus": trial["stimuli"][0]["id"], "score": 50, "request_id": "r1"}
    status, answer = post(admin_client, f"/l/p/{token}/rate", body)
    assert status == 409 and answer["message"] == HEADPHONE_CHECK_FIRST
    # Confirming the calibration without having been sent the sound is refused too.
    assert post(admin_client, f"/l/p/{token}/calibration", {"plays": 1})[0] == 400
    status, answer = post(admin_client, f"/l/p/{token}/rate", {**body, "score": 101})
    assert status == 409  # the check comes first, as for a listener
    walk_checks(admin_client, token)
    status, answer = post(admin_client, f"/l/p/{token}/rate", {**body, "score": 101})
    assert status == 400 and "score" in answer["extra"]["fields"]
    nothing_kept()


def test_a_failed_headphone_check_screens_the_preview_out_but_keeps_nothing(admin_client):
    test = mushra()
    token = start(admin_client, test)
    _, state = get_json(admin_client, f"/l/p/{token}/state")
    fetch(admin_client, state["calibration"]["url"])
    post(admin_client, f"/l/p/{token}/calibration", {"plays": 1})
    answers = [t["answer"] % 3 + 1 for t in headphone_trials(preview_participant(admin_client, token))]
    status, body = post(admin_client, f"/l/p/{token}/headphone", {"answers": answers})
    assert status == 200 and body["passed"] is False and body["phase"] == "screened_out"
    assert BANNER in admin_client.get(f"/l/p/{token}/").content.decode()
    nothing_kept()


def test_a_published_test_is_previewed_without_touching_its_listeners_or_coverage(admin_client):
    test = listening_test_publish(test=mushra(votes_target=1))
    listener = participant_join(test=test)
    coverage = trial_coverage(test)
    token = start(admin_client, test)  # the test is full (votes_target 1): the preview still gets trials
    walk_checks(admin_client, token)
    assert walk_trials(admin_client, token)["phase"] == "done"
    assert list(Participant.objects.all()) == [listener] and trial_coverage(test) == coverage
    assert not Rating.objects.exists() and not SoundFetch.objects.exists()


def test_only_the_researcher_who_opened_a_preview_can_use_it(admin_client):
    test = mushra()
    token = start(admin_client, test)
    listener = Client()
    assert listener.get(f"/l/p/{token}/").status_code == 404
    assert get_json(listener, f"/l/p/{token}/state")[0] == 404
    assert post(listener, f"/l/p/{token}/calibration", {"plays": 1})[0] == 404
    other = get_user_model().objects.create_superuser("eve", password="x")
    stranger = Client()
    stranger.force_login(other)
    assert get_json(stranger, f"/l/p/{token}/state")[0] == 404
    # A listener of the published test cannot turn their own session into a preview either.
    listening_test_publish(test=test)
    joined = Client()
    joined.post(f"/l/i/{test.invite_token}/")
    assert get_json(joined, f"/l/p/{token}/state")[0] == 404


def test_a_forged_or_expired_preview_token_is_refused(admin_client):
    test = mushra()
    token = start(admin_client, test)
    for forged in ("preview.AAAAAAAAAAAAAAAAAAAAAAAA", token + "x", token[:-1]):
        assert get_json(admin_client, f"/l/p/{forged}/state")[0] == 404
    session = admin_client.session
    session["listening-previews"][token]["expires"] = 0
    session.save()
    status, body = get_json(admin_client, f"/l/p/{token}/state")
    assert status == 410 and body["message"] == PREVIEW_EXPIRED
    assert admin_client.get(f"/l/p/{token}/").status_code == 410


def test_a_test_the_researcher_cannot_see_is_not_previewed(client):
    test = mushra()
    ada = get_user_model().objects.create_user("ada", password="x")
    client.force_login(ada)
    assert client.get(f"/listening/{test.pk}/preview/").status_code == 404
    assert client.post(f"/listening/{test.pk}/preview/").status_code == 404
    nothing_kept()
    # Nor once access is lost after the preview was opened.
    owner = get_user_model().objects.create_user("bob", password="x")
    for run in {c.checkpoint.run for c in test.conditions.exclude(checkpoint=None)}:
        run.owner = owner
        run.save()
    bob = Client()
    bob.force_login(owner)
    token = start(bob, test)
    for run in {c.checkpoint.run for c in test.conditions.exclude(checkpoint=None)}:
        run.owner = ada
        run.save()
    assert get_json(bob, f"/l/p/{token}/state")[0] == 404


def test_the_detail_page_links_to_the_preview(admin_client):
    test = mushra()
    page = admin_client.get(f"/listening/{test.pk}/").content.decode()
    assert f'href="/listening/{test.pk}/preview/"' in page and "Preview as a listener" in page


def test_a_closed_test_is_previewed_and_stays_closed(admin_client):
    test = listening_test_close(test=listening_test_publish(test=mushra()))
    token = start(admin_client, test)
    status, state = get_json(admin_client, f"/l/p/{token}/state")
    assert status == 200 and state["phase"] == "calibration"
    test.refresh_from_db()
    assert test.status == ListeningTest.Status.CLOSED
    # Its invite link still tells listeners it is closed.
    assert Client().get(f"/l/i/{test.invite_token}/").status_code == 410
    nothing_kept()


def test_a_preview_shows_the_questionnaire_pages_and_keeps_no_answers(admin_client):
    world = listening_world(n_items=2)
    test = make_listening_test(
        name="preview-q",
        kind="mos",
        checkpoints=world["checkpoints"][:1],
        training_items=0,
        loudness_target_lufs=None,
        questionnaire={"pre": ["age_band"], "post": ["comments"]},
    )
    token = start(admin_client, test)
    page = admin_client.get(f"/l/p/{token}/").content.decode()
    assert BANNER in page and 'data-testid="questionnaire-pre"' in page
    refused = admin_client.post(f"/l/p/{token}/questionnaire/pre", {})
    assert refused.status_code == 400 and BANNER in refused.content.decode()  # checked as for a listener
    accepted = admin_client.post(f"/l/p/{token}/questionnaire/pre", {"age_band": "25-34"})
    assert accepted.status_code == 302
    page = admin_client.get(f"/l/p/{token}/").content.decode()
    assert 'id="listener-app"' in page and "questionnaire-pre" not in page  # the walk remembers the page
    nothing_kept()
