"""Issue 14, finding 8: 3 000 levels of nesting (6 KB) gave a 500 RecursionError on the listener's rate,
flag and telemetry endpoints. Now a 400 in the ``{"message", "extra"}`` shape of every other bad body,
and nothing is stored; the API's parser (evalsite.api.parsers) answers the same body with a 400 too."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from evalsite.api.services import researcher_token_issue
from evalsite.listening import services, views
from evalsite.listening.models import ArtifactFlag, Assignment, Rating
from evalsite.runs.models import Run
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

DEPTH = 3000
NESTED = "[" * DEPTH + "]" * DEPTH  # 6 000 bytes, as the attack sent it
NESTED_IN_A_FIELD = '{"trial": "x", "events": ' + NESTED + "}"


@pytest.fixture
def listener():
    world = listening_world()
    test = services.listening_test_publish(
        test=make_listening_test(
            name="nested", kind="mos", checkpoints=world["checkpoints"], training_items=0, seed=5
        )
    )
    client = Client(enforce_csrf_checks=True)
    assert client.get(f"/l/i/{test.invite_token}/").status_code == 200
    joined = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    return client, joined["Location"]


def stored() -> tuple:
    return (
        Rating.objects.count(),
        ArtifactFlag.objects.count(),
        list(Assignment.objects.order_by("pk").values_list("telemetry", "completed_at")),
    )


@pytest.mark.parametrize("endpoint", ["rate", "flag", "telemetry", "complete"])
@pytest.mark.parametrize("body", [NESTED, NESTED_IN_A_FIELD], ids=["whole-body", "in-a-field"])
def test_deeply_nested_json_to_a_listener_endpoint_is_a_400_in_the_standard_shape_and_stores_nothing(
    listener, endpoint, body
):
    client, session = listener
    before = stored()
    response = client.post(
        session + endpoint,
        body,
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )
    assert response.status_code == 400
    assert response.json() == {
        "message": views.BODY_TOO_DEEP,
        "extra": {"fields": {"body": [views.BODY_TOO_DEEP]}},
    }
    assert stored() == before
    # The session still works afterwards.
    assert client.get(session + "state").status_code == 200


def test_the_listener_endpoints_answer_other_bad_bodies_in_the_same_shape(listener):
    client, session = listener
    response = client.post(
        session + "rate",
        "{not json",
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )
    assert response.status_code == 400 and set(response.json()) == {"message", "extra"}
    assert list(response.json()["extra"]["fields"]) == ["body"]


def test_nesting_below_the_recursion_limit_is_an_ordinary_400_for_a_wrong_value():
    world = listening_world(n_items=1)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="nested-900", kind="mos", checkpoints=world["checkpoints"], training_items=0, seed=5
        )
    )
    client = Client(enforce_csrf_checks=True)
    client.get(f"/l/i/{test.invite_token}/")
    session = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )["Location"]
    trial = client.get(session + "state").json()["trials"][0]
    deep = "[" * 900 + "]" * 900
    body = '{{"trial": "{}", "stimulus": "{}", "score": {}, "request_id": "r"}}'.format(
        trial["id"], trial["stimuli"][0]["id"], deep
    )
    response = client.post(
        session + "rate",
        body,
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )
    assert response.status_code == 400 and set(response.json()) == {"message", "extra"}
    assert not Rating.objects.exists()


def test_the_api_answers_the_same_nesting_with_a_400_in_its_error_shape_and_creates_nothing():
    user = get_user_model().objects.create_user("ada", password="x")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {researcher_token_issue(user=user)}")
    response = api.post("/api/v1/runs/", NESTED, content_type="application/json")
    assert response.status_code == 400
    assert set(response.json()) == {"message", "extra"} and "nested too deeply" in response.json()["message"]
    assert not Run.objects.exists()
