"""The build form's instructions, item selection (all / random N / chosen) and quality-control defaults,
and the same item selection through the API."""

import random
import re

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from evalsite.api.services import researcher_token_issue
from evalsite.listening.models import ListeningTest
from evalsite.listening.researcher_views import BuildForm
from evalsite.listening.services.build import RANDOM_ITEMS_TOO_MANY
from evalsite.listening.services.design import (
    INSTRUCTIONS_TOO_LONG,
    ITEMS_AND_RANDOM,
    RANDOM_ITEMS_RANGE,
    TestDesign,
)
from evalsite.runs.models import Generation
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db


def form_data(world, **extra):
    return {
        "name": "form-built",
        "kind": "mos",
        "checkpoints": [c.pk for c in world["checkpoints"]],
        "title": "Quality",
        "training_items": 0,
        "votes_target": 3,
        **extra,
    }


def item_keys(test: ListeningTest) -> list[str]:
    return sorted(set(test.trials.filter(control="").values_list("item__key", flat=True)))


def test_quality_controls_are_on_by_default_and_the_blocks_are_separate(admin_client):
    form = BuildForm(user=get_user_model().objects.get(username="admin"))
    assert form["require_play_all"].initial is True and form["headphone_check"].initial is True
    assert form["gold_items"].initial == 1 and form["trapping_items"].initial == 1
    page = admin_client.get("/listening/new/").content.decode()
    quality = page.split('data-testid="build-quality-controls"')[1].split("</fieldset>")[0]
    for name in ("require_play_all", "headphone_check"):
        assert re.search(rf'<input type="checkbox" name="{name}"[^>]* checked>', quality), name
    for name in ("gold_items", "trapping_items"):
        assert re.search(rf'<input type="number" name="{name}" value="1"', quality), name
    items = page.split('data-testid="build-instructions-and-items"')[1].split("</fieldset>")[0]
    assert '<textarea name="instructions"' in items and 'value="all"' in items and "checked" in items


def test_instructions_are_kept_for_listeners_and_an_over_long_text_is_refused_on_its_field(admin_client):
    world = listening_world(n_items=2)
    text = "Rate how natural the voice sounds.\n\nIgnore the words."
    assert admin_client.post("/listening/new/", form_data(world, instructions=text)).status_code == 302
    assert ListeningTest.objects.get(name="form-built").instructions == text
    page = admin_client.post("/listening/new/", form_data(world, name="long", instructions="x" * 5001))
    assert page.status_code == 200 and list(page.context["form"].errors) == ["instructions"]
    assert not ListeningTest.objects.filter(name="long").exists()
    with pytest.raises(Exception, match="instructions may be at most 5000"):
        make_listening_test(name="svc", kind="mos", checkpoints=world["checkpoints"], instructions="y" * 5001)
    assert INSTRUCTIONS_TOO_LONG.startswith("instructions")


def test_chosen_items_make_the_only_trials(admin_client):
    world = listening_world(n_items=4)
    chosen = [world["items"][1].pk, world["items"][3].pk]
    response = admin_client.post("/listening/new/", form_data(world, item_selection="chosen", items=chosen))
    assert response.status_code == 302
    assert item_keys(ListeningTest.objects.get(name="form-built")) == ["utt1", "utt3"]


def test_choosing_items_but_none_or_a_random_draw_without_a_number_is_refused_on_its_field(admin_client):
    world = listening_world(n_items=2)
    page = admin_client.post("/listening/new/", form_data(world, item_selection="chosen"))
    assert list(page.context["form"].errors) == ["items"]
    page = admin_client.post("/listening/new/", form_data(world, item_selection="random"))
    assert list(page.context["form"].errors) == ["random_items"]
    assert not ListeningTest.objects.exists()


def test_an_item_of_another_eval_set_is_refused_on_the_items_field(admin_client):
    world, other = listening_world(n_items=2), listening_world(n_items=2, runs=("third-run",))
    foreign = other["items"][0]
    page = admin_client.post(
        "/listening/new/", form_data(world, item_selection="chosen", items=[world["items"][0].pk, foreign.pk])
    )
    errors = page.context["form"].errors
    assert list(errors) == ["items"] and "utt0" in errors["items"][0] and "eval set" in errors["items"][0]
    assert not ListeningTest.objects.exists()
    # The service refuses it too, whoever calls it.
    with pytest.raises(Exception, match="must belong to the checkpoints' eval set"):
        make_listening_test(name="svc", kind="mos", checkpoints=world["checkpoints"], items=[foreign])


def test_an_item_of_a_run_the_researcher_cannot_see_is_not_offered_nor_accepted(client):
    world = listening_world(n_items=2)
    ada = get_user_model().objects.create_user("ada", password="x")
    for ckpt in world["checkpoints"]:
        ckpt.run.owner = ada
        ckpt.run.save()
    hidden = listening_world(n_items=1, runs=("someone-elses",))
    client.force_login(ada)
    page = client.get("/listening/new/").content.decode()
    assert f'value="{world["items"][0].pk}"' in page and f'value="{hidden["items"][0].pk}"' not in page
    page = client.post(
        "/listening/new/", form_data(world, item_selection="chosen", items=[hidden["items"][0].pk])
    )
    assert list(page.context["form"].errors) == ["items"] and not ListeningTest.objects.exists()


def test_a_random_draw_is_reproducible_from_the_seed_and_takes_n_items(admin_client):
    world = listening_world(n_items=6)
    first = make_listening_test(
        name="a", kind="mos", checkpoints=world["checkpoints"], random_items=3, seed=11
    )
    again = make_listening_test(
        name="b", kind="mos", checkpoints=world["checkpoints"], random_items=3, seed=11
    )
    keys = [f"utt{i}" for i in range(6)]
    assert item_keys(first) == item_keys(again) == sorted(random.Random("items:11").sample(keys, 3))
    draws = {
        tuple(
            item_keys(
                make_listening_test(
                    name=f"s{s}", kind="mos", checkpoints=world["checkpoints"], random_items=3, seed=s
                )
            )
        )
        for s in range(5)
    }
    assert len(draws) > 1  # the seed, not a fixed rule, picks them
    response = admin_client.post("/listening/new/", form_data(world, item_selection="random", random_items=2))
    assert response.status_code == 302 and len(item_keys(ListeningTest.objects.get(name="form-built"))) == 2


def test_a_random_draw_is_made_from_the_items_with_output_only(admin_client):
    world = listening_world(n_items=4)
    Generation.objects.filter(item=world["items"][0]).delete()
    test = make_listening_test(name="a", kind="mos", checkpoints=world["checkpoints"], random_items=3, seed=3)
    assert item_keys(test) == ["utt1", "utt2", "utt3"]
    page = admin_client.post("/listening/new/", form_data(world, item_selection="random", random_items=4))
    assert list(page.context["form"].errors) == ["random_items"]
    assert RANDOM_ITEMS_TOO_MANY.format(n=4, usable=3, reference="") in page.content.decode()


@pytest.mark.parametrize("value", ["0", "-1", "many", "5"])
def test_a_random_number_out_of_range_is_refused_on_its_field(admin_client, value):
    world = listening_world(n_items=4)
    page = admin_client.post("/listening/new/", form_data(world, item_selection="random", random_items=value))
    assert page.status_code == 200 and list(page.context["form"].errors) == ["random_items"]
    assert not ListeningTest.objects.exists()
    if value == "5":
        assert RANDOM_ITEMS_RANGE.format(n=4, value=5) in page.content.decode()


def test_items_and_a_random_draw_together_are_refused_by_the_service():
    world = listening_world(n_items=2)
    with pytest.raises(Exception, match="not both"):
        make_listening_test(
            name="x", kind="mos", checkpoints=world["checkpoints"], items=world["items"], random_items=1
        )
    assert TestDesign(name="x", kind="mos", checkpoints=[]).random_items is None


@pytest.fixture
def api():
    world = listening_world(n_items=4, runs=("alpha",))
    user = get_user_model().objects.create_user("ada", password="x")
    run = world["checkpoints"][0].run
    run.owner = user
    run.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {researcher_token_issue(user=user)}")
    return client, run


def create(client, run, **extra):
    body = {"name": "api-built", "kind": "mos", "checkpoints": [{"run": run.pk, "step": 77777}], **extra}
    return client.post("/api/v1/listening-tests/", body, format="json")


def test_the_api_draws_random_items_by_the_seed_and_takes_instructions(api):
    client, run = api
    response = create(client, run, random_items=2, instructions="Listen closely.", training_items=0)
    assert response.status_code == 201, response.json()
    test = ListeningTest.objects.get(pk=response.json()["id"])
    keys = [f"utt{i}" for i in range(4)]
    assert item_keys(test) == sorted(random.Random(f"items:{test.seed}").sample(keys, 2))
    assert test.instructions == "Listen closely."


@pytest.mark.parametrize(
    ("extra", "fields"),
    [
        ({"random_items": 0}, ["random_items"]),
        ({"random_items": "two"}, ["random_items"]),
        ({"random_items": 5}, ["random_items"]),
        ({"random_items": 1, "items": ["utt0"]}, ["items", "random_items"]),
        ({"items": ["utt0", "../../etc/passwd"]}, ["items"]),
        ({"instructions": "x" * 5001}, ["instructions"]),
    ],
)
def test_the_api_names_the_field_of_a_bad_item_selection(api, extra, fields):
    client, run = api
    response = create(client, run, **extra)
    assert response.status_code == 400, response.json()
    assert sorted(response.json()["extra"]["fields"]) == fields
    assert not ListeningTest.objects.exists()
    if extra.get("random_items") == 1:
        assert response.json()["extra"]["fields"]["items"] == [ITEMS_AND_RANDOM]
