"""One error shape for listening: services name the request fields a refusal is about, and the API and
the listener endpoints render it alike (``{"message", "extra": {"fields": {name: [why]}}}``)."""

import dataclasses
import json

import pytest
from django.test import Client

from evalsite.core.exceptions import ApplicationError, ConflictError, error_body
from evalsite.listening import services
from evalsite.listening.services import TestDesign
from tests.factories import listening_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    return listening_world()


def test_a_design_is_frozen_and_keeps_its_lists_as_tuples(world):
    design = TestDesign(
        name="frozen", kind="mos", checkpoints=list(world["checkpoints"]), items=world["items"]
    )
    assert isinstance(design.checkpoints, tuple) and isinstance(design.items, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        design.kind = "mushra"


# How each refusal changes a valid MOS design of the world's checkpoints, and the fields it names.
REFUSALS = {
    "no-checkpoints": (lambda cps: {"checkpoints": []}, ["checkpoints"]),
    "duplicate-checkpoints": (lambda cps: {"checkpoints": [cps[0], cps[0]]}, ["checkpoints"]),
    "ab-needs-two": (lambda cps: {"kind": "ab", "checkpoints": cps[:1]}, ["checkpoints", "kind"]),
    "no-preference-only-ab": (lambda cps: {"allow_no_preference": True}, ["allow_no_preference", "kind"]),
    "comparison-only-cmos": (lambda cps: {"comparison": cps[-1]}, ["comparison", "kind"]),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_every_design_refusal_names_the_fields_it_is_about(world, refusal):
    change, fields = REFUSALS[refusal]
    checkpoints = world["checkpoints"]
    design = TestDesign(
        **{"name": "refused", "kind": "mos", "checkpoints": checkpoints, **change(checkpoints)}
    )
    with pytest.raises(ApplicationError) as exc:
        services.listening_test_build(design=design)
    assert exc.value.extra == {"fields": {name: [exc.value.message] for name in fields}}


def test_error_body_names_the_whole_request_only_for_a_400_about_no_field():
    assert error_body(ApplicationError("wrong", fields=("score",))) == {
        "message": "wrong",
        "extra": {"fields": {"score": ["wrong"]}},
    }
    assert error_body(ApplicationError("wrong as a whole"), whole="query") == {
        "message": "wrong as a whole",
        "extra": {"fields": {"query": ["wrong as a whole"]}},
    }
    assert error_body(ConflictError("not now")) == {"message": "not now", "extra": {}}


def joined(test) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.get(f"/l/i/{test.invite_token}/")
    session = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )["Location"]
    return client, session


def post(client: Client, url: str, body: dict):
    return client.post(
        url,
        json.dumps(body),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )


def test_the_listener_endpoints_answer_field_and_whole_body_errors_in_the_api_shape(world):
    test = services.listening_test_publish(
        test=services.listening_test_build(
            design=TestDesign(name="shapes", kind="mos", checkpoints=world["checkpoints"], training_items=0)
        )
    )
    client, session = joined(test)
    state = client.get(session + "state").json()
    trial = state["trials"][0]
    bad_score = post(
        client,
        session + "rate",
        {"trial": trial["id"], "stimulus": trial["stimuli"][0]["id"], "score": 9, "request_id": "r1"},
    )
    assert bad_score.status_code == 400
    message = bad_score.json()["message"]
    assert bad_score.json() == {"message": message, "extra": {"fields": {"score": [message]}}}
    # This test has no headphone check: a refusal about no single field names the body.
    not_asked = post(client, session + "calibration", {"plays": 1})
    assert not_asked.status_code == 400
    assert not_asked.json() == {
        "message": services.CALIBRATION_NOT_ASKED,
        "extra": {"fields": {"body": [services.CALIBRATION_NOT_ASKED]}},
    }
    unknown = post(client, session + "complete", {"trial": "no-such-trial"})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "message": services.UNKNOWN_TRIAL,
        "extra": {"fields": {"trial": [services.UNKNOWN_TRIAL]}},
    }
