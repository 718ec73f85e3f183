"""Issue 14 finding 7: ``POST listening-tests/`` with 20 000 copies of one checkpoint held a web worker for 73 s.
Duplicates and over-long lists are refused before any work, and every list or count parameter has a range."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from evalsite.core.exceptions import ApplicationError
from evalsite.listening import services
from evalsite.listening.models import Condition, ListeningTest, Trial
from evalsite.runs.models import Checkpoint
from evalsite.runs.services import run_token_issue
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db
URL = "/api/v1/listening-tests/"


@pytest.fixture
def world():
    return listening_world(runs=("alpha", "beta", "gamma"), n_items=3)


@pytest.fixture
def client(world):
    """The run token of the first run; the other runs' checkpoints are not its to rate."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {run_token_issue(run=world['checkpoints'][0].run)}")
    return api


def ref(checkpoint):
    return {"run": checkpoint.run_id, "step": checkpoint.step}


def nothing_built():
    return (
        not ListeningTest.objects.exists() and not Trial.objects.exists() and not Condition.objects.exists()
    )


def test_twenty_thousand_copies_of_one_checkpoint_are_refused_before_any_lookup(world, client):
    body = {"name": "dos", "kind": "mos", "checkpoints": [ref(world["checkpoints"][0])] * 20_000}
    with CaptureQueriesContext(connection) as queries:
        response = client.post(URL, body, format="json")
    assert response.status_code == 400
    assert "checkpoints" in response.json()["extra"]["fields"]
    assert "EVALSITE_LISTENING_MAX_SYSTEMS" in response.json()["message"]
    # Authentication and the rate limit only: no checkpoint was resolved.
    assert not [q for q in queries.captured_queries if "runs_checkpoint" in q["sql"]]
    assert nothing_built()


def test_a_checkpoint_listed_twice_is_refused_naming_the_field(world, client):
    first = world["checkpoints"][0]
    response = client.post(
        URL, {"name": "twice", "kind": "mos", "checkpoints": [ref(first), ref(first)]}, format="json"
    )
    assert response.status_code == 400
    fields = response.json()["extra"]["fields"]
    assert "more than once" in fields["checkpoints"][0] and f"step {first.step}" in fields["checkpoints"][0]
    assert nothing_built()


def test_a_list_over_the_operators_cap_is_refused(world, client, settings):
    settings.EVALSITE_LISTENING_MAX_SYSTEMS = 2
    response = client.post(
        URL,
        {"name": "three", "kind": "mos", "checkpoints": [ref(c) for c in world["checkpoints"]]},
        format="json",
    )
    assert (
        response.status_code == 400
        and "at most 2 checkpoints" in response.json()["extra"]["fields"]["checkpoints"][0]
    )
    assert nothing_built()


def test_item_lists_are_capped_and_duplicates_refused(world, client, settings):
    body = {"name": "items", "kind": "mos", "checkpoints": [ref(world["checkpoints"][0])]}
    twice = client.post(URL, {**body, "items": ["utt0", "utt1", "utt0"]}, format="json")
    assert twice.status_code == 400 and "utt0" in twice.json()["extra"]["fields"]["items"][0]
    settings.EVALSITE_LISTENING_MAX_ITEMS = 2
    many = client.post(URL, {**body, "items": [f"utt{i}" for i in range(20_000)]}, format="json")
    assert many.status_code == 400 and "at most 2 eval items" in many.json()["extra"]["fields"]["items"][0]
    everything = client.post(URL, body, format="json")  # the default (every item of the set) counts too
    assert everything.status_code == 400 and "items" in everything.json()["extra"]["fields"]
    assert nothing_built()


@pytest.mark.parametrize(
    "field, value",
    [
        ("votes_target", 0),
        ("votes_target", 10_001),
        ("votes_target", "1e9"),
        ("min_listeners", 0),
        ("min_listeners", -20),
        ("min_listeners", 10_001),
        ("min_listeners", "twenty"),
        ("trials_per_participant", 0),
        ("trials_per_participant", 10_001),
        ("trials_per_participant", 2**31),
        ("training_items", -1),
        ("training_items", 21),
        ("gold_items", 51),
        ("trapping_items", -1),
        ("trapping_items", 51),
        ("name", "x" * 201),
        ("instructions", "x" * 5001),
    ],
)
def test_each_count_parameter_out_of_range_is_refused_naming_it(world, client, field, value):
    body = {"name": "ranges", "kind": "mos", "checkpoints": [ref(world["checkpoints"][0])], field: value}
    response = client.post(URL, body, format="json")
    assert response.status_code == 400 and field in response.json()["extra"]["fields"], response.json()
    assert nothing_built()


def test_the_trial_cap_refuses_an_ab_test_that_grows_with_the_square_of_its_checkpoints(world, settings):
    settings.EVALSITE_LISTENING_MAX_TRIALS = 8  # 3 checkpoints → 3 pairs per item × 3 items = 9
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="ab", kind="ab", checkpoints=world["checkpoints"])
    assert exc.value.message == services.TOO_MANY_TRIALS.format(n=9, per_item=3, items=3, limit=8)
    assert nothing_built()


def test_the_service_refuses_a_minimum_of_listeners_below_one_from_every_caller(world):
    from evalsite.listening.services.design import MIN_LISTENERS_TOO_LOW

    with pytest.raises(ApplicationError) as exc:
        make_listening_test(
            name="none-wanted", kind="mos", checkpoints=world["checkpoints"][:1], min_listeners=0
        )
    assert exc.value.message == MIN_LISTENERS_TOO_LOW.format(n=0)
    assert exc.value.extra["fields"] == {"min_listeners": [MIN_LISTENERS_TOO_LOW.format(n=0)]}
    assert nothing_built()


def test_the_service_refuses_duplicates_from_every_caller(world):
    first = world["checkpoints"][0]
    again = Checkpoint.objects.get(pk=first.pk)
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="dup", kind="mushra", checkpoints=[first, again])
    assert exc.value.message == services.DUPLICATE_CHECKPOINTS.format(labels=f"alpha@{first.step}")
    item = world["items"][0]
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="dup", kind="mos", checkpoints=[first], items=[item, item])
    assert exc.value.message == services.DUPLICATE_ITEMS.format(keys=item.key)
    assert nothing_built()


def test_a_test_within_the_caps_is_still_built(world, client):
    response = client.post(
        URL,
        {
            "name": "fine",
            "kind": "mos",
            "checkpoints": [ref(world["checkpoints"][0])],
            "items": ["utt0", "utt1"],
            "trials_per_participant": 2,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["trials"] == 2
