"""Issue 14, finding 4: a second browser that joined with a known PROLIFIC_PID was given the victim's
session and overwrote their rating. Resuming is now bound to the browser's signed listener cookie;
another browser presenting the same crowd id is refused and gets nothing of the existing session."""

import json

import pytest
from django.test import Client

from evalsite.listening import services
from evalsite.listening.models import ArtifactFlag, Assignment, Participant, Rating
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

PID = "5f1e0c0ffee0123456789abc"


@pytest.fixture
def test():
    world = listening_world()
    return services.listening_test_publish(
        test=make_listening_test(
            name="takeover", kind="mushra", checkpoints=world["checkpoints"], training_items=0, seed=3
        )
    )


def join(client: Client, test, **params):
    assert client.get(f"/l/i/{test.invite_token}/", params).status_code == 200
    return client.post(
        f"/l/i/{test.invite_token}/", {**params, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )


def post_json(client: Client, url: str, body: dict):
    return client.post(
        url,
        json.dumps(body),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
        HTTP_ACCEPT="application/json",
    )


def test_a_second_browser_with_the_same_prolific_id_is_refused_and_cannot_touch_the_first_ones_answers(test):
    a = Client(enforce_csrf_checks=True)
    joined = join(a, test, PROLIFIC_PID=PID, STUDY_ID="st", SESSION_ID="se-a")
    assert joined.status_code == 302
    session = joined["Location"]
    state = a.get(session + "state").json()
    trial = state["trials"][0]
    rated = {"trial": trial["id"], "stimulus": trial["stimuli"][0]["id"], "score": 64, "request_id": "a-1"}
    assert post_json(a, session + "rate", rated).status_code == 200
    victim = Participant.objects.get(test=test)
    before = (
        Participant.objects.count(),
        Assignment.objects.count(),
        list(Rating.objects.values_list("score", "updated_at")),
    )

    # The attack as run: a fresh browser joins with the victim's crowd id (and its own study session).
    b = Client(enforce_csrf_checks=True)
    refused = join(b, test, PROLIFIC_PID=PID, STUDY_ID="st", SESSION_ID="se-b")
    assert refused.status_code == 409
    assert services.CROWD_ID_IN_USE in refused.content.decode()
    assert "Location" not in refused and victim.token not in refused.content.decode()
    assert refused.cookies.get("evalsite_listener") is None  # no cookie naming the victim's session
    # B then tries the victim's URLs directly (as it would have after the redirect): not its session.
    assert b.get(session).status_code == 404
    assert post_json(b, session + "rate", {**rated, "score": 3, "request_id": "b-1"}).status_code == 404
    assert (
        post_json(
            b,
            session + "flag",
            {
                "trial": trial["id"],
                "stimulus": trial["stimuli"][0]["id"],
                "start": 0.1,
                "end": 0.2,
                "category": "click",
                "request_id": "b-2",
            },
        ).status_code
        == 404
    )
    assert post_json(b, session + "complete", {"trial": trial["id"]}).status_code == 404

    # Nothing happened: no participant, no assignment, A's rating as it was, no flag, no completion.
    assert (
        Participant.objects.count(),
        Assignment.objects.count(),
        list(Rating.objects.values_list("score", "updated_at")),
    ) == before
    assert Rating.objects.get().score == 64 and not ArtifactFlag.objects.exists()
    assert not Assignment.objects.filter(completed_at__isnull=False).exists()
    victim.refresh_from_db()
    assert victim.session_id == "se-a" and victim.status == Participant.Status.ACTIVE

    # A comes back through the invite link with its cookie: straight to the same session (no second
    # consent), its answer kept.
    again = a.get(f"/l/i/{test.invite_token}/", {"PROLIFIC_PID": PID, "STUDY_ID": "st", "SESSION_ID": "se-a"})
    assert again.status_code == 302 and again["Location"] == session
    resumed = a.get(session + "state").json()
    assert resumed["trials"][0]["ratings"] == {trial["stimuli"][0]["id"]: 64.0}


def test_a_forged_or_foreign_listener_cookie_does_not_resume_someone_elses_crowd_id(test):
    a = Client(enforce_csrf_checks=True)
    assert join(a, test, PROLIFIC_PID=PID).status_code == 302
    victim = Participant.objects.get(external_id=PID)
    # B has a valid cookie of its own (another participant of the test), and then an unsigned one
    # holding the victim's token: neither resumes the victim.
    b = Client(enforce_csrf_checks=True)
    assert join(b, test, PROLIFIC_PID="someone-else").status_code == 302
    assert join(b, test, PROLIFIC_PID=PID).status_code == 409
    b.cookies["evalsite_listener"] = victim.token
    assert join(b, test, PROLIFIC_PID=PID).status_code == 409
    assert Participant.objects.count() == 2


def test_the_service_resumes_only_with_the_participants_own_token(test):
    first = services.participant_join(test=test, external_id=PID)
    with pytest.raises(services.CrowdIdInUse) as exc:
        services.participant_join(test=test, external_id=PID)
    assert exc.value.message == services.CROWD_ID_IN_USE
    with pytest.raises(services.CrowdIdInUse):
        services.participant_join(test=test, external_id=PID, resume_token="not-" + first.token)
    assert services.participant_join(test=test, external_id=PID, resume_token=first.token).pk == first.pk
    assert Participant.objects.count() == 1
