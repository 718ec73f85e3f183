"""Evidence of listening from the server (issue 16, item 4): "play every sound" and the level
calibration are decided from the bytes the server sent this participant and the wall time since,
never from telemetry (SQLite, the Django test client as the listener's browser)."""

import json
import uuid
from datetime import timedelta

import pytest

from evalsite.listening import services
from evalsite.listening.models import Assignment, Participant, SoundFetch
from evalsite.listening.services.heard import CALIBRATION_SOUND, merge_ranges, reference_sound
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

FRACTION = 0.8


@pytest.fixture
def world():
    return listening_world(n_items=1)


@pytest.fixture(autouse=True)
def wall_time_rule(settings):
    settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION = FRACTION


def publish(world, **kw):
    test = make_listening_test(
        name=f"heard-{uuid.uuid4().hex[:8]}",
        kind="smos",
        checkpoints=world["checkpoints"],
        seed=3,
        training_items=0,
        completion_code="HEARD",
        **kw,
    )
    return services.listening_test_publish(test=test)


def join(client, test) -> tuple[Participant, dict]:
    client.post(f"/l/i/{test.invite_token}/")
    participant = Participant.objects.filter(test=test).latest("created_at")
    return participant, client.get(f"/l/p/{participant.token}/state").json()


def post(client, participant, what, body):
    return client.post(f"/l/p/{participant.token}/{what}", json.dumps(body), content_type="application/json")


def rate_all(client, participant, trial):
    for s in trial["stimuli"]:
        rated = post(
            client,
            participant,
            "rate",
            {"trial": trial["id"], "stimulus": s["id"], "score": 4, "request_id": uuid.uuid4().hex},
        )
        assert rated.status_code == 200


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def urls(trial) -> list[str]:
    return [trial["reference"]["url"]] + [s["url"] for s in trial["stimuli"]]


def let_time_pass(participant, seconds: float) -> None:
    """Move every first fetch of this participant ``seconds`` into the past (the clock cannot be frozen here)."""
    for fetch in SoundFetch.objects.filter(participant=participant):
        fetch.first_fetched_at -= timedelta(seconds=seconds)
        fetch.save(update_fields=["first_fetched_at"])


def longest_duration(participant) -> float:
    return max(SoundFetch.objects.filter(participant=participant).values_list("duration_s", flat=True))


# ---------------------------------------------------------------------------------------------
# Play every sound


def test_a_telemetry_only_client_is_refused_with_a_message_naming_the_unheard_sounds(world, client):
    test = publish(world, require_play_all=True)
    p, state = join(client, test)
    trial = state["trials"][0]
    rate_all(client, p, trial)
    events = [
        {"t": 1, "type": t, "stimulus": s, "pos": 0}
        for t in ("play", "heard")
        for s in [None] + [x["id"] for x in trial["stimuli"]]
    ]
    assert post(client, p, "telemetry", {"trial": trial["id"], "events": events}).status_code == 204
    refused = post(client, p, "complete", {"trial": trial["id"]})
    assert refused.status_code == 400
    assert refused.json() == {
        "message": services.PLAY_ALL_FIRST.format(missing="Reference, Sample A"),
        "extra": {"fields": {"trial": [services.PLAY_ALL_FIRST.format(missing="Reference, Sample A")]}},
    }
    assert Assignment.objects.get(token=trial["id"]).completed_at is None


def test_partial_byte_ranges_are_not_enough_until_together_they_cover_the_whole_sound(world, client):
    test = publish(world, require_play_all=True)
    p, state = join(client, test)
    trial = state["trials"][0]
    rate_all(client, p, trial)
    whole = {url: body(client.get(url)) for url in urls(trial)}
    SoundFetch.objects.all().delete()  # start again: this listener's browser asks by Range only
    for url, data in whole.items():
        half = len(data) // 2
        first = client.get(url, HTTP_RANGE=f"bytes=0-{half - 1}")
        assert first.status_code == 206 and body(first) == data[:half]
        assert first["Content-Range"] == f"bytes 0-{half - 1}/{len(data)}"
    let_time_pass(p, 3600)
    refused = post(client, p, "complete", {"trial": trial["id"]})
    assert refused.status_code == 400
    assert refused.json()["message"] == services.PLAY_ALL_FIRST.format(missing="Reference, Sample A")
    for url, data in whole.items():
        # Overlapping the first half, then the rest by a suffix range: merged, that is every byte.
        middle = client.get(url, HTTP_RANGE=f"bytes=10-{len(data) - 101}")
        rest = client.get(url, HTTP_RANGE="bytes=-100")
        assert body(middle) == data[10 : len(data) - 100] and body(rest) == data[-100:]
    fetch = SoundFetch.objects.get(participant=p, sound=trial["stimuli"][0]["id"])
    assert fetch.complete and fetch.ranges == [[0, fetch.size]]
    assert post(client, p, "complete", {"trial": trial["id"]}).status_code == 200


def test_a_full_fetch_with_too_little_wall_time_is_refused_and_with_enough_it_is_accepted(world, client):
    test = publish(world, require_play_all=True)
    p, state = join(client, test)
    trial = state["trials"][0]
    rate_all(client, p, trial)
    for url in urls(trial):
        response = client.get(url)
        assert response.status_code == 200 and response["Accept-Ranges"] == "bytes"
    duration = longest_duration(p)
    assert duration * FRACTION > 0.5  # the answer below comes well before the sounds could have played
    refused = post(client, p, "complete", {"trial": trial["id"]})
    assert refused.status_code == 400
    assert refused.json()["message"] == services.PLAY_ALL_FIRST.format(missing="Reference, Sample A")
    let_time_pass(p, duration * FRACTION * 0.5)
    assert post(client, p, "complete", {"trial": trial["id"]}).status_code == 400
    # Fetching again (a replay that missed the cache) does not restart the clock: the first fetch counts.
    for url in urls(trial):
        assert client.get(url).status_code == 200
    let_time_pass(p, duration * FRACTION * 0.5 + 0.05)
    assert post(client, p, "complete", {"trial": trial["id"]}).status_code == 200
    assert Assignment.objects.get(token=trial["id"]).completed_at is not None


def test_a_head_request_sends_no_bytes_and_is_no_evidence(world, client):
    test = publish(world, require_play_all=True)
    p, state = join(client, test)
    trial = state["trials"][0]
    for url in urls(trial):
        assert client.head(url).status_code == 200
    assert not SoundFetch.objects.filter(participant=p).exists()


def test_another_participants_fetches_are_not_this_ones_evidence(world, client):
    from django.test import Client

    test = publish(world, require_play_all=True, votes_target=2)
    p, state = join(client, test)
    other_client = Client()
    other, other_state = join(other_client, test)
    for url in urls(other_state["trials"][0]):
        assert other_client.get(url).status_code == 200
        assert client.get(url).status_code == 404  # the other listener's URL is nothing to this one
    let_time_pass(other, 3600)
    trial = state["trials"][0]
    rate_all(client, p, trial)
    assert post(client, p, "complete", {"trial": trial["id"]}).status_code == 400


def test_without_play_all_sounds_are_served_without_recording_anything(world, client):
    test = publish(world)
    p, state = join(client, test)
    trial = state["trials"][0]
    for url in urls(trial):
        assert client.get(url).status_code == 200
    assert not SoundFetch.objects.exists()
    rate_all(client, p, trial)
    assert post(client, p, "complete", {"trial": trial["id"]}).status_code == 200


def test_byte_ranges_are_served_as_rfc_9110_says(world, client):
    test = publish(world, require_play_all=True)
    p, state = join(client, test)
    url = state["trials"][0]["stimuli"][0]["url"]
    data = body(client.get(url))
    n = len(data)
    open_ended = client.get(url, HTTP_RANGE=f"bytes={n - 5}-")
    assert open_ended.status_code == 206 and body(open_ended) == data[-5:]
    assert open_ended["Content-Length"] == "5"
    past_end = client.get(url, HTTP_RANGE=f"bytes=0-{n + 100}")
    assert past_end.status_code == 206 and body(past_end) == data
    unsatisfiable = client.get(url, HTTP_RANGE=f"bytes={n}-")
    assert unsatisfiable.status_code == 416 and unsatisfiable["Content-Range"] == f"bytes */{n}"
    for ignored in ("bytes=0-1,5-9", "bytes=9-2", "items=0-1", "bytes=-"):
        whole = client.get(url, HTTP_RANGE=ignored)
        assert whole.status_code == 200 and body(whole) == data, ignored


def test_merged_ranges_join_overlapping_and_touching_spans_only():
    assert merge_ranges([[5, 9], [0, 5], [20, 30], [8, 12], [40, 40]]) == [[0, 12], [20, 30]]
    assert merge_ranges([]) == []
    assert reference_sound("abc") == "ref:abc"


# ---------------------------------------------------------------------------------------------
# Level calibration


def test_calibration_needs_the_noise_sent_whole_and_its_duration_passed_not_a_self_reported_play(
    world, client
):
    test = publish(world, headphone_check=True)
    p, state = join(client, test)
    cal = state["calibration"]["url"]
    not_heard = services.CALIBRATION_NOT_HEARD.format(seconds=3)
    refused = post(client, p, "calibration", {"plays": 1})
    assert refused.status_code == 400 and refused.json()["message"] == not_heard
    data = body(client.get(cal, HTTP_RANGE="bytes=0-999"))
    assert len(data) == 1000
    let_time_pass(p, 3600)
    assert post(client, p, "calibration", {"plays": 1}).json()["message"] == not_heard  # a part only
    assert client.get(cal).status_code == 200  # now every byte; the first fetch still counts
    fetch = SoundFetch.objects.get(participant=p, sound=CALIBRATION_SOUND)
    assert fetch.complete and fetch.duration_s == 3.0
    accepted = post(client, p, "calibration", {"plays": 1})
    assert accepted.status_code == 200 and accepted.json()["phase"] == "headphone"


def test_calibration_with_the_noise_sent_but_too_little_wall_time_is_refused(world, client):
    test = publish(world, headphone_check=True)
    p, state = join(client, test)
    assert client.get(state["calibration"]["url"]).status_code == 200
    refused = post(client, p, "calibration", {"plays": 3})
    assert refused.status_code == 400
    assert refused.json()["message"] == services.CALIBRATION_NOT_HEARD.format(seconds=3)
    assert Participant.objects.get(pk=p.pk).calibrated_at is None
    let_time_pass(p, 3.0 * FRACTION + 0.05)
    assert post(client, p, "calibration", {"plays": 3}).status_code == 200
    assert Participant.objects.get(pk=p.pk).calibration["plays"] == 3


def test_the_minimum_play_fraction_is_a_setting_read_at_each_answer(world, client, settings):
    test = publish(world, headphone_check=True)
    p, state = join(client, test)
    assert client.get(state["calibration"]["url"]).status_code == 200
    assert post(client, p, "calibration", {"plays": 1}).status_code == 400
    settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION = 0.0
    assert post(client, p, "calibration", {"plays": 1}).status_code == 200
