"""Researcher pages: build from checkpoints, preview, publish/close, progress per item x condition."""

import uuid

import pytest

from evalsite.listening import services
from evalsite.listening.models import ListeningTest, Participant
from evalsite.listening.selectors import SMOS_SCALE, listener_state, listening_test_progress
from evalsite.listening.services.controls import TRAP_TEXT
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db


def answer_everything(participant, score):
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score,
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def test_listeners_and_strangers_are_sent_to_the_login_page(client):
    for url in ("/listening/", "/listening/new/", "/listening/1/", "/listening/1/trials/0/"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_researcher_builds_publishes_and_closes_a_test_through_the_pages(admin_client):
    world = listening_world(n_items=3)
    response = admin_client.post(
        "/listening/new/",
        {
            "name": "web-built",
            "kind": "mushra",
            "checkpoints": [c.pk for c in world["checkpoints"]],
            "title": "Quality",
            "training_items": 1,
            "votes_target": 3,
            "min_listeners": 25,
            "completion_code": "OK",
        },
    )
    test = ListeningTest.objects.get(name="web-built")
    assert response.status_code == 302 and response["Location"] == f"/listening/{test.pk}/"
    assert test.min_listeners == 25
    assert test.status == "draft" and test.trials.count() == 3 and test.owner.username == "admin"
    detail = admin_client.get(f"/listening/{test.pk}/").content.decode()
    assert f"/l/i/{test.invite_token}/" in detail and "PROLIFIC_PID" in detail
    admin_client.post(f"/listening/{test.pk}/publish/")
    test.refresh_from_db()
    assert test.status == "published"
    admin_client.post(f"/listening/{test.pk}/close/")
    test.refresh_from_db()
    assert test.status == "closed"


@pytest.mark.parametrize("value", ["0", "-3", "10001", "many"])
def test_a_minimum_of_listeners_out_of_range_is_refused_on_the_form(admin_client, value):
    world = listening_world(n_items=2)
    page = admin_client.post(
        "/listening/new/",
        {
            "name": "few",
            "kind": "mos",
            "checkpoints": [world["checkpoints"][0].pk],
            "title": "Quality",
            "training_items": 0,
            "votes_target": 3,
            "min_listeners": value,
        },
    )
    assert page.status_code == 200 and "min_listeners" in page.context["form"].errors
    assert not ListeningTest.objects.filter(name="few").exists()


def test_a_build_error_is_shown_on_the_form_and_nothing_is_created(admin_client):
    world = listening_world(n_items=2)
    run = world["checkpoints"][0].run
    from evalsite.runs.models import Checkpoint

    many = [Checkpoint.objects.create(run=run, step=s, uri=f"/c/{s}") for s in range(1, 11)]
    page = admin_client.post(
        "/listening/new/",
        {
            "name": "too-big",
            "kind": "mushra",
            "checkpoints": [c.pk for c in many],
            "title": "x",
            "training_items": 0,
            "votes_target": 1,
        },
    )
    assert page.status_code == 200
    assert services.MUSHRA_TOO_MANY.format(n=10, total=13) in page.content.decode()
    assert not ListeningTest.objects.filter(name="too-big").exists()


def test_progress_counts_valid_votes_per_item_and_condition(admin_client):
    world = listening_world(n_items=3)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="p", kind="mushra", checkpoints=world["checkpoints"], training_items=1, votes_target=2
        )
    )
    good, bad = services.participant_join(test=test), services.participant_join(test=test)
    answer_everything(good, 100)
    answer_everything(bad, 100)
    progress = listening_test_progress(test)
    assert [row["item"] for row in progress["rows"]] == ["utt1", "utt2"]  # utt0 is the training item
    assert all(v == 2 for row in progress["rows"] for v in row["cells"]) and len(progress["conditions"]) == 5
    Participant.objects.filter(pk=bad.pk).update(status=Participant.Status.SCREENED_OUT)
    progress = listening_test_progress(test)
    assert all(v == 1 for row in progress["rows"] for v in row["cells"]) and progress["cells_at_target"] == 0
    page = admin_client.get(f"/listening/{test.pk}/").content.decode()
    assert "0 of 10 cells have 2 or more votes" in page


def test_the_preview_shows_each_stimulus_with_its_condition_to_the_researcher(admin_client):
    world = listening_world(n_items=2)
    test = make_listening_test(name="pv", kind="mushra", checkpoints=world["checkpoints"])
    page = admin_client.get(f"/listening/{test.pk}/trials/1/").content.decode()
    assert "hifigan-secret-run@77777" in page and "anchor: 3.5 kHz low-pass" in page
    assert page.count("<audio") == 6  # open reference + 5 conditions


def test_a_cmos_test_against_a_baseline_and_an_ab_test_with_no_preference_are_built_from_the_form(
    admin_client,
):
    world = listening_world(n_items=2, runs=("base-run", "new-run", "other-run"))
    base, new, other = world["checkpoints"]
    admin_client.post(
        "/listening/new/",
        {
            "name": "cmos-web",
            "kind": "cmos",
            "checkpoints": [new.pk, other.pk],
            "comparison": base.pk,
            "title": "x",
            "training_items": 0,
            "votes_target": 1,
        },
    )
    cmos = ListeningTest.objects.get(name="cmos-web")
    assert cmos.conditions.get(role="comparison").checkpoint_id == base.pk and cmos.trials.count() == 4
    admin_client.post(
        "/listening/new/",
        {
            "name": "ab-web",
            "kind": "ab",
            "checkpoints": [new.pk, other.pk],
            "allow_no_preference": "on",
            "title": "x",
            "training_items": 0,
            "votes_target": 1,
        },
    )
    ab = ListeningTest.objects.get(name="ab-web")
    assert ab.allow_no_preference and ab.trials.count() == 2


def test_the_preview_names_each_condition_once(admin_client):
    world = listening_world(n_items=2)
    test = make_listening_test(name="pv-once", kind="mushra", checkpoints=world["checkpoints"])
    page = admin_client.get(f"/listening/{test.pk}/trials/1/").content.decode()
    assert page.count("Hidden Reference") == 1 and "(Hidden Reference)" not in page
    assert page.count("anchor: 3.5 kHz low-pass") == 1
    assert "hifigan-secret-run@77777 <small>(System)</small>" in page  # a label that does not say its role


def test_the_preview_of_a_control_trial_shows_the_expected_answer_and_the_spoken_instruction(
    admin_client, world
):
    test = make_listening_test(
        name="pv-qc",
        kind="smos",
        checkpoints=world["checkpoints"],
        training_items=0,
        gold_items=1,
        trapping_items=1,
        loudness_target_lufs=None,
    )
    trap = test.trials.get(control="trapping")
    (stimulus,) = trap.stimuli.all()
    value = stimulus.expected["min"]
    label = next(lbl["text"] for lbl in SMOS_SCALE["labels"] if lbl["value"] == value)
    # The build keeps the phrasing it spoke: one of the phrasings of the request for that answer.
    assert stimulus.instruction in {t.format(label=label) for t in TRAP_TEXT}
    page = admin_client.get(f"/listening/{test.pk}/trials/{trap.index}/").content.decode()
    assert "(trapping control)" in page
    assert f"Spoken instruction: “{stimulus.instruction}”" in page
    assert f"Expected: a rating of {value:g} ({label})" in page

    gold = test.trials.get(control="gold")
    (sound,) = gold.stimuli.all()
    page = admin_client.get(f"/listening/{test.pk}/trials/{gold.index}/").content.decode()
    low, high = sound.expected["min"], sound.expected["max"]
    assert f"Expected: a rating of {low:g} to {high:g}" in page and "Spoken instruction" not in page


def test_the_preview_says_what_an_ab_trapping_trial_expects_in_the_listeners_words(admin_client, world):
    test = make_listening_test(
        name="pv-ab", kind="ab", checkpoints=world["checkpoints"], training_items=0, trapping_items=1
    )
    trap = test.trials.get(control="trapping")
    stimulus = trap.stimuli.get(expected__isnull=False)
    letter = "A" if stimulus.expected["min"] < 0 else "B"
    assert stimulus.instruction.endswith(f"I prefer {letter}.")
    page = admin_client.get(f"/listening/{test.pk}/trials/{trap.index}/").content.decode()
    assert f"Expected: the answer I prefer {letter}" in page


def test_the_build_form_has_no_default_title_and_asks_for_one(admin_client):
    world = listening_world(n_items=2)
    form = admin_client.get("/listening/new/").content.decode()
    assert 'value="Listening test"' not in form and 'name="title"' in form
    response = admin_client.post(
        "/listening/new/",
        {
            "name": "no-title",
            "kind": "mos",
            "checkpoints": [world["checkpoints"][0].pk],
            "training_items": 0,
            "votes_target": 1,
        },
    )
    assert response.status_code == 200 and not ListeningTest.objects.filter(name="no-title").exists()
    assert "This field is required." in response.content.decode()
