"""Stored audio (/media/...) opens only for who may see it: researchers by run, API tokens by run."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from evalsite.api.services import researcher_token_issue
from evalsite.listening.models import Condition, Stimulus
from evalsite.runs.services import run_token_issue
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    User = get_user_model()
    world = listening_world(runs=("media-run-r", "media-run-s"), n_items=2)
    ckpt_r, ckpt_s = world["checkpoints"]
    owner, outsider = (
        User.objects.create_user("owner", password="x"),
        User.objects.create_user("outsider", password="x"),
    )
    ckpt_r.run.owner = owner
    ckpt_r.run.save()
    ckpt_s.run.owner = outsider
    ckpt_s.run.save()
    test = make_listening_test(name="media-test", kind="mushra", checkpoints=[ckpt_r], training_items=0)
    anchor = Stimulus.objects.filter(
        trial__test=test, condition__role=Condition.Role.ANCHOR_LP35
    ).select_related("asset")
    return {
        **world,
        "owner": owner,
        "outsider": outsider,
        "run_r": ckpt_r.run,
        "run_s": ckpt_s.run,
        "output": ckpt_r.generations.select_related("asset").first().asset,
        "reference": world["items"][0].reference,
        "anchor": anchor.first().asset,
    }


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def url(asset) -> str:
    return asset.file.url


def test_an_output_opens_for_its_runs_researchers_and_token_only(world):
    output = url(world["output"])
    assert output.startswith("/media/audio/")
    allowed = {
        "owner": signed_in(world["owner"]),
        "owner's token": bearer(researcher_token_issue(user=world["owner"])),
        "run token": bearer(run_token_issue(run=world["run_r"])),
    }
    refused = {
        "anonymous": Client(),
        "outsider": signed_in(world["outsider"]),
        "outsider's token": bearer(researcher_token_issue(user=world["outsider"])),
        "another run's token": bearer(run_token_issue(run=world["run_s"])),
        "a made-up token": bearer("evr_" + "x" * 43),
    }
    for who, client in allowed.items():
        response = client.get(output)
        assert response.status_code == 200, who
        assert response["Content-Type"] == "audio/wav" and "private" in response["Cache-Control"]
        assert b"".join(response.streaming_content) == world["output"].file.open("rb").read()
    for who, client in refused.items():
        assert client.get(output).status_code == 404, who
    superuser = get_user_model().objects.create_user("root", password="x", is_superuser=True)
    assert signed_in(superuser).get(output).status_code == 200


def test_references_are_shared_by_researchers_and_a_tests_anchors_follow_the_test(world):
    outsider, owner = signed_in(world["outsider"]), signed_in(world["owner"])
    assert outsider.get(url(world["reference"])).status_code == 200  # eval sets are shared
    assert Client().get(url(world["reference"])).status_code == 404
    assert owner.get(url(world["anchor"])).status_code == 200
    assert outsider.get(url(world["anchor"])).status_code == 404
    # A run token sees its own eval set's references, not another run's test material.
    assert bearer(run_token_issue(run=world["run_r"])).get(url(world["anchor"])).status_code == 200
    assert bearer(run_token_issue(run=world["run_s"])).get(url(world["anchor"])).status_code == 404


def test_a_missing_file_or_unknown_name_is_the_same_404_and_writes_are_refused(world):
    owner = signed_in(world["owner"])
    assert owner.get("/media/audio/00/00/" + "0" * 64 + ".wav").status_code == 404
    assert owner.get("/media/../../etc/passwd").status_code == 404
    world["output"].file.storage.delete(world["output"].file.name)
    assert owner.get(url(world["output"])).status_code == 404
    assert owner.post(url(world["reference"])).status_code == 405


def test_with_accel_redirect_the_web_server_sends_the_bytes_after_the_check(world, settings):
    settings.EVALSITE_MEDIA_ACCEL_REDIRECT = "/protected-media/"
    response = signed_in(world["owner"]).get(url(world["output"]))
    assert response.status_code == 200 and response.content == b""
    assert response["X-Accel-Redirect"] == "/protected-media/" + world["output"].file.name
    assert signed_in(world["outsider"]).get(url(world["output"])).status_code == 404


def test_every_audio_player_on_the_run_page_plays_for_its_researcher(world):
    owner = signed_in(world["owner"])
    page = owner.get(f"/runs/{world['run_r'].pk}/").content.decode()
    sources = re.findall(r'<audio[^>]* src="([^"]+)"', page)
    assert len(sources) == 4  # two items: reference and output each
    assert all(owner.get(src).status_code == 200 for src in sources)
