"""Listening tests: building, assignment, answers, resume and blinding (SQLite, Django test client)."""

import json
import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.listening import services
from evalsite.listening.models import ArtifactFlag, Assignment, Condition, Participant, Rating
from evalsite.listening.selectors import listener_state
from evalsite.runs.models import Checkpoint, Generation
from tests.factories import make_listening_test

pytestmark = pytest.mark.django_db
RATE = 22050


def build(world, kind="mushra", **kw):
    # These tests follow the generated audio into the trials; tests/listening/test_loudness_alignment.py
    # covers the aligned renditions the default design serves.
    kw.setdefault("loudness_target_lufs", None)
    test = make_listening_test(
        name=f"t-{kind}",
        kind=kind,
        checkpoints=world["checkpoints"],
        seed=1234,
        completion_code="C0DE-42",
        **kw,
    )
    return services.listening_test_publish(test=test)


def rate_all(participant, score):
    state = listener_state(participant)
    for trial in state["trials"]:
        for stim in trial["stimuli"]:
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score,
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def test_a_mushra_test_has_hidden_reference_two_anchors_and_every_checkpoint_per_trial(world):
    test = build(world)
    roles = sorted(test.conditions.values_list("role", flat=True))
    assert roles == ["anchor_lp35", "anchor_lp70", "hidden_reference", "system", "system"]
    trial = test.trials.filter(is_training=False).first()
    stimuli = {s.condition.role: s for s in trial.stimuli.select_related("condition", "asset")}
    assert len(trial.stimuli.all()) == 5 and trial.reference_id == trial.item.reference_id
    assert stimuli["hidden_reference"].asset_id == trial.item.reference_id
    lp35 = stimuli["anchor_lp35"].asset
    assert (
        lp35.frames == trial.item.reference.frames and lp35.content_hash != trial.item.reference.content_hash
    )
    assert test.trials.filter(is_training=True).count() == 1 and test.trials.count() == 4


def test_mushra_refuses_more_than_twelve_signals(world):
    run = world["checkpoints"][0].run
    many = [Checkpoint.objects.create(run=run, step=s, uri=f"/c/{s}") for s in range(1, 11)]  # 10 + 3 = 13
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="big", kind="mushra", checkpoints=many)
    assert exc.value.message == services.MUSHRA_TOO_MANY.format(n=10, total=13)


def test_items_without_output_from_every_checkpoint_are_skipped_with_a_warning(world):
    Generation.objects.filter(checkpoint=world["checkpoints"][1], item__key="utt3").delete()
    test = build(world, kind="mos", training_items=0)
    assert test.trials.count() == 3 * 2
    assert any("utt3 skipped: no output from evagan-hidden-run@77777" in w for w in test.build_warnings)


def test_each_participant_gets_a_seeded_random_order_and_resumes_where_they_left_off(world):
    test = build(world)
    a = services.participant_join(test=test, external_id="worker-a")
    b = services.participant_join(test=test, external_id="worker-b")

    def order(p):
        return [x.trial_id for x in Assignment.objects.filter(participant=p).order_by("position")]

    assert sorted(order(a)) == sorted(order(b)) and len(order(a)) == 4
    assert Assignment.objects.filter(participant=a).first().trial.is_training  # training comes first
    state = listener_state(a)
    first = state["trials"][0]
    services.rating_submit(
        participant=a, trial=first["id"], stimulus=first["stimuli"][0]["id"], score=55, request_id="r1"
    )
    again = services.participant_join(test=test, external_id="worker-a", resume_token=a.token)
    assert again.pk == a.pk
    resumed = listener_state(again)
    assert resumed["position"] == 0 and resumed["trials"][0]["ratings"] == {first["stimuli"][0]["id"]: 55.0}


def test_the_assignment_engine_gives_new_listeners_the_least_covered_trials_and_tops_up_after_screening(
    world,
):
    test = build(world, kind="mos", training_items=0, trials_per_participant=2, votes_target=2)
    p = [services.participant_join(test=test) for _ in range(4)]
    coverage = services.trial_coverage(test)
    assert sorted(coverage.values()) == [1] * 8  # 8 trials, 4 listeners x 2 trials: perfectly balanced
    for _ in range(4):
        services.participant_join(test=test)
    assert set(services.trial_coverage(test).values()) == {2}
    with pytest.raises(ConflictError) as exc:
        services.participant_join(test=test)
    assert exc.value.message == services.TEST_FULL
    Participant.objects.filter(pk=p[0].pk).update(status=Participant.Status.SCREENED_OUT)
    topped_up = services.participant_join(test=test)
    assert {a.trial_id for a in topped_up.assignments.all()} == {a.trial_id for a in p[0].assignments.all()}


def test_listeners_who_joined_and_left_stop_holding_their_trials_after_the_hold_but_finished_trials_still_count(
    world, settings
):
    settings.EVALSITE_ASSIGNMENT_HOLD_MIN = 120
    test = build(world, kind="mos", training_items=0, trials_per_participant=4, votes_target=1)
    finisher, leaver = services.participant_join(test=test), services.participant_join(test=test)
    with pytest.raises(ConflictError):
        services.participant_join(test=test)  # full: 8 trials, two listeners hold four each
    first = listener_state(finisher)["trials"][0]
    for stim in first["stimuli"]:
        services.rating_submit(
            participant=finisher, trial=first["id"], stimulus=stim["id"], score=4, request_id=uuid.uuid4().hex
        )
    services.trial_complete(participant=finisher, trial=first["id"])
    # Three hours on, neither came back: only the finished trial still counts.
    Participant.objects.filter(pk__in=[finisher.pk, leaver.pk]).update(
        consented_at=timezone.now() - timedelta(hours=3)
    )
    coverage = services.trial_coverage(test)
    finished_trial = Assignment.objects.get(token=first["id"]).trial_id
    assert coverage[finished_trial] == 1 and sum(coverage.values()) == 1
    newcomer = services.participant_join(test=test)
    given = {a.trial_id for a in newcomer.assignments.all()}
    assert len(given) == 4 and finished_trial not in given


def test_a_retried_rating_creates_no_duplicate_and_a_late_retry_never_overwrites_a_newer_answer(world):
    test = build(world)
    part = services.participant_join(test=test)
    trial = listener_state(part)["trials"][1]
    stim = trial["stimuli"][0]["id"]
    services.rating_submit(participant=part, trial=trial["id"], stimulus=stim, score=40, request_id="first")
    services.rating_submit(participant=part, trial=trial["id"], stimulus=stim, score=40, request_id="first")
    services.rating_submit(participant=part, trial=trial["id"], stimulus=stim, score=80, request_id="second")
    services.rating_submit(participant=part, trial=trial["id"], stimulus=stim, score=40, request_id="first")
    rating = Rating.objects.get(participant=part)
    assert Rating.objects.count() == 1 and rating.score == 80 and rating.history == ["first", "second"]


@pytest.mark.parametrize(
    "kind,bad",
    [
        ("mushra", 101),
        ("mushra", -1),
        ("mushra", "90"),
        ("mushra", float("nan")),
        ("mos", 0),
        ("mos", 6),
        ("mos", 3.5),
        ("mos", True),
    ],
)
def test_out_of_range_or_malformed_scores_are_refused_and_nothing_is_stored(world, kind, bad):
    test = build(world, kind=kind)
    part = services.participant_join(test=test)
    trial = listener_state(part)["trials"][0]
    with pytest.raises(ApplicationError) as exc:
        services.rating_submit(
            participant=part, trial=trial["id"], stimulus=trial["stimuli"][0]["id"], score=bad, request_id="x"
        )
    assert (
        exc.value.extra == {"fields": {"score": [exc.value.message]}} and "score must be" in exc.value.message
    )
    assert not Rating.objects.exists()


def test_answers_for_another_participants_trial_are_not_found_and_store_nothing(world):
    test = build(world)
    a, b = services.participant_join(test=test), services.participant_join(test=test)
    theirs = listener_state(b)["trials"][0]
    with pytest.raises(NotFoundError):
        services.rating_submit(
            participant=a, trial=theirs["id"], stimulus=theirs["stimuli"][0]["id"], score=5, request_id="x"
        )
    mine = listener_state(a)["trials"][0]
    with pytest.raises(NotFoundError) as exc:
        services.rating_submit(
            participant=a, trial=mine["id"], stimulus=theirs["stimuli"][0]["id"], score=5, request_id="x"
        )
    assert exc.value.message == services.UNKNOWN_STIMULUS and not Rating.objects.exists()


def test_a_trial_completes_only_when_every_sound_is_rated_and_the_last_one_completes_the_participant(world):
    test = build(world)
    part = services.participant_join(test=test)
    trial = listener_state(part)["trials"][0]
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=part, trial=trial["id"])
    assert exc.value.message == services.RATE_ALL_FIRST.format(missing=5)
    rate_all(part, 100)
    part.refresh_from_db()
    state = listener_state(part)
    assert part.status == "completed" and state["phase"] == "done"
    assert state["completion"] == {"code": "C0DE-42", "redirect": None}
    assert Rating.objects.filter(participant=part, is_training=True).count() == 5
    last = state["trials"][-1]["id"]
    assert services.trial_complete(participant=part, trial=last).status == "completed"  # a retry is harmless


def test_submissions_after_the_test_closed_are_refused(world):
    test = build(world)
    part = services.participant_join(test=test)
    trial = listener_state(part)["trials"][0]
    services.listening_test_close(test=test)
    part.refresh_from_db()
    with pytest.raises(ConflictError) as exc:
        services.rating_submit(
            participant=part, trial=trial["id"], stimulus=trial["stimuli"][0]["id"], score=5, request_id="x"
        )
    assert exc.value.message == services.TEST_NOT_OPEN and not Rating.objects.exists()


def test_flags_are_stored_in_seconds_idempotently_and_bad_regions_are_refused(world):
    test = build(world)
    part = services.participant_join(test=test)
    trial = listener_state(part)["trials"][0]
    stim = trial["stimuli"][2]["id"]
    kw = dict(participant=part, trial=trial["id"], stimulus=stim, category="click", note="pop at the start")
    first = services.flag_submit(start=0.1, end=0.25, request_id="f1", **kw)
    again = services.flag_submit(start=0.1, end=0.25, request_id="f1", **kw)
    assert first.pk == again.pk and ArtifactFlag.objects.count() == 1
    assert (first.start_s, first.end_s, first.category) == (0.1, 0.25, "click")
    for start, end in ((0.5, 0.2), (-0.1, 0.2), (0.2, 9.0)):
        with pytest.raises(ApplicationError) as exc:
            services.flag_submit(start=start, end=end, request_id=f"bad{start}{end}", **kw)
        assert "must lie within the sound (0 to 1.00 s)" in exc.value.message
    with pytest.raises(ApplicationError) as exc:
        services.flag_submit(start=0.1, end=0.2, request_id="f9", **{**kw, "category": "boing"})
    assert (
        exc.value.extra == {"fields": {"category": [exc.value.message]}} and ArtifactFlag.objects.count() == 1
    )


# ---------------------------------------------------------------------------------------------
# Through HTTP, as the browser does


def join_via_link(client, test, **params):
    page = client.get(f"/l/i/{test.invite_token}/", params)
    assert page.status_code == 200
    response = client.post(
        f"/l/i/{test.invite_token}/", {**params, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    assert response.status_code == 302
    return response["Location"]


def post_json(client, url, body):
    token = client.cookies["csrftoken"].value
    return client.post(url, json.dumps(body), content_type="application/json", HTTP_X_CSRFTOKEN=token)


def test_a_crowd_worker_joins_through_the_invite_link_and_rates_through_the_json_endpoints(world, client):
    from django.test import Client

    test = build(world)
    client = Client(enforce_csrf_checks=True)
    session_url = join_via_link(client, test, PROLIFIC_PID="pid-1", STUDY_ID="s", SESSION_ID="x")
    assert client.get(session_url).status_code == 200
    state = client.get(session_url + "state").json()
    trial = state["trials"][0]
    body = {"trial": trial["id"], "stimulus": trial["stimuli"][0]["id"], "score": 64, "request_id": "abc"}
    assert post_json(client, session_url + "rate", body).json() == {"score": 64.0}
    assert post_json(client, session_url + "rate", {**body, "score": 300}).status_code == 400
    assert Participant.objects.get().external_id == "pid-1" and Rating.objects.get().score == 64
    audio = client.get(trial["stimuli"][0]["url"])
    assert audio.status_code == 200 and audio["Content-Type"] == "audio/wav"
    assert audio["Content-Disposition"] == 'inline; filename="sound.wav"'


def test_another_browser_cannot_use_a_participants_urls(world, client):
    from django.test import Client

    test = build(world)
    session_url = join_via_link(client, test)
    state = client.get(session_url + "state").json()
    stranger = Client()
    assert stranger.get(session_url + "state").status_code == 404
    assert stranger.get(state["trials"][0]["stimuli"][0]["url"]).status_code == 404


@pytest.mark.parametrize("controls", [0, 1], ids=["plain", "with-gold-and-trapping"])
def test_nothing_a_listener_receives_names_a_run_checkpoint_system_or_role(world, client, controls):
    test = build(world, gold_items=controls, trapping_items=controls)
    session_url = join_via_link(client, test)
    received = []
    for url in (f"/l/i/{test.invite_token}/", session_url, session_url + "state"):
        response = client.get(url)
        received.append(response.content.decode() + json.dumps(dict(response.headers)))
    state = client.get(session_url + "state").json()
    for trial in state["trials"]:
        for url in [s["url"] for s in trial["stimuli"]] + (
            [trial["reference"]["url"]] if trial["reference"] else []
        ):
            response = client.get(url)
            received.append(url + json.dumps(dict(response.headers)))
    forbidden = [
        "hifigan-secret-run",
        "evagan-hidden-run",
        "77777",
        "g_00077777",
        "hidden_reference",
        "anchor",
        "lp35",
        "lp70",
        "system",
        "checkpoint",
        "/media/",
    ]
    forbidden += list(Generation.objects.values_list("asset__content_hash", flat=True))
    forbidden += [str(s.label) for s in Condition.objects.all()]
    blob = "\n".join(received).lower()
    leaks = [word for word in forbidden if word.lower() in blob]
    assert leaks == []
    # Nor that a trial is a control: checked with the random tokens blanked (one might spell "gold").
    words = re.sub(r"[a-z0-9_-]{20,}", "", blob)
    assert [
        w for w in ("gold", "trap", "quality control", "expected", "degraded", "attention") if w in words
    ] == []
    # Opaque ids only: no integer primary keys in any id field.
    assert not any(re.fullmatch(r"\d+", t["id"]) for t in state["trials"])
