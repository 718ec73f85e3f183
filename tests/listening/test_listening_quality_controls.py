"""Optional quality controls of a listening test: play every sound, level calibration and the
headphone check, gold and trapping trials for every kind (SQLite, services and the Django test client)."""

import io
import json
import re
import uuid

import numpy as np
import pytest
import soundfile as sf
from django.core.management import call_command

from evalsite.audio.headphone_check import GAP_S, SAMPLE_RATE, TONE_S
from evalsite.audio.selectors import audio_asset_samples
from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.listening import services
from evalsite.listening.calibration import active_level_dbfs
from evalsite.listening.models import Assignment, ListeningTest, Participant, Stimulus, Trial
from evalsite.listening.selectors import (
    headphone_trials,
    listener_state,
    listening_test_progress,
    quality_control_results,
)
from evalsite.listening.services.heard import reference_sound
from evalsite.runs.models import EvalItem, Generation
from tests.factories import hear, make_listening_test

pytestmark = pytest.mark.django_db


def build(world, kind="mos", name=None, **kw):
    # These tests follow the generated audio into the trials; tests/listening/test_loudness_alignment.py
    # covers the aligned renditions the default design serves.
    kw.setdefault("loudness_target_lufs", None)
    test = make_listening_test(
        name=name or f"qc-{kind}",
        kind=kind,
        checkpoints=world["checkpoints"],
        seed=99,
        training_items=0,
        completion_code="QC-DONE",
        **kw,
    )
    return services.listening_test_publish(test=test)


def answer(participant, trial, score=3):
    for stim in trial["stimuli"]:
        services.rating_submit(
            participant=participant,
            trial=trial["id"],
            stimulus=stim["id"],
            score=score,
            request_id=uuid.uuid4().hex,
        )


def heard(participant, trial, stimuli=None):
    """The server's evidence that these sounds of ``trial`` (default: all of them and its reference) were heard."""
    if stimuli is None:
        stimuli = [x["id"] for x in trial["stimuli"]] + (
            [reference_sound(trial["id"])] if trial["reference"] else []
        )
    hear(participant, *stimuli)


def play_events(participant, trial):
    """What a script can post without fetching a byte: a "heard" event for every sound and the reference."""
    events = [{"t": 10, "type": "heard", "stimulus": s["id"], "pos": 1.0} for s in trial["stimuli"]]
    events.append({"t": 10, "type": "heard", "stimulus": None, "pos": 1.0})
    services.telemetry_append(participant=participant, trial=trial["id"], events=events)


# ---------------------------------------------------------------------------------------------
# 1. Play every sound


def test_with_play_all_a_trial_is_refused_until_the_server_sent_every_sound_and_telemetry_cannot_stand_in(
    world,
):
    test = build(world, kind="mushra", require_play_all=True)
    p = services.participant_join(test=test)
    trial = listener_state(p)["trials"][0]
    answer(p, trial, score=50)
    play_events(p, trial)
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=p, trial=trial["id"])
    every = "Reference, Sample A, Sample B, Sample C, Sample D, Sample E"
    assert exc.value.message == services.PLAY_ALL_FIRST.format(missing=every) and exc.value.extra == {
        "fields": {"trial": [exc.value.message]}
    }
    heard(p, trial, [reference_sound(trial["id"])] + [s["id"] for s in trial["stimuli"][:4]])
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=p, trial=trial["id"])
    assert exc.value.message == services.PLAY_ALL_FIRST.format(missing="Sample E")
    heard(p, trial, [trial["stimuli"][4]["id"]])
    services.trial_complete(participant=p, trial=trial["id"])
    assert Assignment.objects.get(token=trial["id"]).completed_at is not None


def test_play_events_naming_another_trials_or_participants_sounds_are_dropped_and_do_not_count(world):
    test = build(world, require_play_all=True)
    p, other = services.participant_join(test=test), services.participant_join(test=test)
    first, second = listener_state(p)["trials"][:2]
    foreign = listener_state(other)["trials"][0]["stimuli"][0]["id"]
    services.telemetry_append(
        participant=p,
        trial=first["id"],
        events=[
            {"t": 1, "type": "heard", "stimulus": foreign},
            {"t": 1, "type": "heard", "stimulus": second["stimuli"][0]["id"]},
            {"t": 1, "type": "heard", "stimulus": "made-up"},
            {"t": 1, "type": "heard", "stimulus": None},
        ],
    )
    assert Assignment.objects.get(token=first["id"]).telemetry == [
        {"t": 1, "type": "heard", "stimulus": None, "pos": 0}
    ]
    answer(p, first)
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=p, trial=first["id"])
    assert exc.value.message == services.PLAY_ALL_FIRST.format(missing="Sample A")


def test_telemetry_keeps_only_the_four_fields_the_page_sends_with_a_known_type_and_finite_numbers(world):
    test = build(world)
    p = services.participant_join(test=test)
    trial = listener_state(p)["trials"][0]
    own = trial["stimuli"][0]["id"]
    services.telemetry_append(
        participant=p,
        trial=trial["id"],
        events=[
            {"t": 5, "type": "play", "stimulus": own, "pos": 0.5, "junk": "x" * 100_000},
            {"t": 6, "type": "x" * 1000, "stimulus": own, "pos": 0},
            {"t": "6", "type": "seek", "stimulus": own, "pos": 1},
            {"t": 7, "type": "seek", "stimulus": own, "pos": float("inf")},
            {"t": 8, "type": "pause", "stimulus": own, "pos": True},
            [1, 2],
            "heard",
            None,
        ],
        device={"sample_rate": 48000, "blob": "y" * 100_000, "z" * 500: 1},
    )
    assert Assignment.objects.get(token=trial["id"]).telemetry == [
        {"t": 5, "type": "play", "stimulus": own, "pos": 0.5}
    ]
    assert Participant.objects.get(pk=p.pk).device == {"sample_rate": 48000, "z" * 40: 1}


def test_without_play_all_a_rated_trial_completes_without_any_telemetry(world):
    test = build(world)
    p = services.participant_join(test=test)
    trial = listener_state(p)["trials"][0]
    answer(p, trial)
    services.trial_complete(participant=p, trial=trial["id"])
    assert listener_state(p)["test"]["require_play_all"] is False


def test_the_listener_state_says_play_all_is_required_and_which_sounds_were_already_heard(world, client):
    test = build(world, kind="smos", require_play_all=True)
    client.post(f"/l/i/{test.invite_token}/")
    p = Participant.objects.get(test=test)
    trial = listener_state(p)["trials"][0]
    stim = trial["stimuli"][0]["id"]
    response = client.post(
        f"/l/p/{p.token}/telemetry",
        json.dumps(
            {
                "trial": trial["id"],
                "events": [
                    {"t": 5, "type": "heard", "stimulus": None, "pos": 1.0},
                    {"t": 9, "type": "heard", "stimulus": stim, "pos": 1},
                ],
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 204
    state = client.get(f"/l/p/{p.token}/state").json()
    assert state["test"]["require_play_all"] is True
    assert sorted(state["trials"][0]["heard"]) == sorted([stim, "ref"])
    answer(p, trial)
    # The page fetches every sound it plays: that, not the events above, is what lets the trial finish.
    for url in [trial["reference"]["url"]] + [s["url"] for s in trial["stimuli"]]:
        assert client.get(url).status_code == 200
    response = client.post(
        f"/l/p/{p.token}/complete", json.dumps({"trial": trial["id"]}), content_type="application/json"
    )
    assert response.status_code == 200


# ---------------------------------------------------------------------------------------------
# 2. Level calibration, then the headphone check


def join_through_invite(client, test):
    client.post(f"/l/i/{test.invite_token}/")
    return Participant.objects.filter(test=test).latest("created_at")


def calibrate(participant, plays=1):
    hear(participant)
    return services.calibration_confirm(participant=participant, plays=plays)


def wav(response):
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return sf.read(io.BytesIO(body))


def level_db(samples):
    return 20 * np.log10(np.sqrt(np.mean(np.square(samples, dtype=np.float64), axis=0)))


def test_calibration_then_the_headphone_check_come_first_and_neither_can_be_skipped(world, client):
    test = build(world, headphone_check=True)
    p = join_through_invite(client, test)
    state = client.get(f"/l/p/{p.token}/state").json()
    assert state["phase"] == "calibration" and state["headphone_check"] is None
    assert state["calibration"] == {"url": f"/l/p/{p.token}/cal"}
    trial = state["trials"][0]
    with pytest.raises(ConflictError) as exc:
        services.rating_submit(
            participant=p, trial=trial["id"], stimulus=trial["stimuli"][0]["id"], score=3, request_id="r1"
        )
    assert exc.value.message == services.HEADPHONE_CHECK_FIRST
    # The server refuses the headphone check (answers and sounds) until the volume is calibrated.
    answers = [t["answer"] for t in headphone_trials(p)]
    refused = client.post(
        f"/l/p/{p.token}/headphone", json.dumps({"answers": answers}), content_type="application/json"
    )
    assert refused.status_code == 409 and refused.json()["message"] == services.CALIBRATE_FIRST
    hp_url = f"/l/p/{p.token}/hp/{headphone_trials(p)[0]['token']}"
    assert client.get(hp_url).status_code == 409
    p.refresh_from_db()
    assert p.headphone_passed is None and p.headphone_answers == [] and p.calibrated_at is None

    # A self-reported play is no evidence: the server must have sent the calibration noise.
    response = client.post(
        f"/l/p/{p.token}/calibration", json.dumps({"plays": 2}), content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["message"] == services.CALIBRATION_NOT_HEARD.format(seconds=3)
    assert client.get(f"/l/p/{p.token}/cal").status_code == 200
    response = client.post(
        f"/l/p/{p.token}/calibration", json.dumps({"plays": 2}), content_type="application/json"
    )
    assert response.status_code == 200 and response.json() == {"phase": "headphone", "screened_out": None}
    p.refresh_from_db()
    assert p.calibrated_at is not None and p.calibration == {
        "plays": 2,
        "level_dbfs": round(test.calibration_level_dbfs, 2),
    }
    state = client.get(f"/l/p/{p.token}/state").json()
    assert (
        state["phase"] == "headphone"
        and state["calibration"] is None
        and len(state["headphone_check"]["trials"]) == 6
    )
    assert client.get(hp_url).status_code == 200
    # Confirmed once: a retried confirmation changes nothing.
    first = p.calibrated_at
    assert (
        calibrate(p, plays=7).calibrated_at == first
        and Participant.objects.get(pk=p.pk).calibration["plays"] == 2
    )


@pytest.mark.parametrize("plays", [None, 0, -1, "2", 1.5, True, 10**6])
def test_a_calibration_without_a_play_or_malformed_is_refused_and_nothing_is_stored(world, plays):
    p = services.participant_join(test=build(world, headphone_check=True))
    with pytest.raises(ApplicationError) as exc:
        calibrate(p, plays=plays)
    assert exc.value.extra == {"fields": {"plays": [exc.value.message]}}
    p.refresh_from_db()
    assert p.calibrated_at is None and p.calibration == {}


def test_without_a_headphone_check_there_is_no_calibration(world, client):
    test = build(world)
    p = join_through_invite(client, test)
    with pytest.raises(ApplicationError) as exc:
        calibrate(p)
    assert exc.value.message == services.CALIBRATION_NOT_ASKED
    assert client.get(f"/l/p/{p.token}/cal").status_code == 404
    assert client.get(f"/l/p/{p.token}/state").json()["calibration"] is None


def test_the_calibration_noise_has_the_level_of_the_test_material_and_the_check_tones_share_it(world, client):
    test = build(world, headphone_check=True)
    # listening_world's clips are Gaussian noise of standard deviation 0.2: -14 dBFS.
    assert test.calibration_level_dbfs == pytest.approx(20 * np.log10(0.2), abs=0.3)
    p = join_through_invite(client, test)
    response = client.get(f"/l/p/{p.token}/cal")
    assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
    assert response["Content-Disposition"] == 'inline; filename="sound.wav"'
    noise, rate = wav(response)
    assert rate == SAMPLE_RATE and noise.shape[1] == 2 and np.array_equal(noise[:, 0], noise[:, 1])
    assert np.allclose(level_db(noise), test.calibration_level_dbfs, atol=0.1)
    calibrate(p)
    tone = int(TONE_S * SAMPLE_RATE)
    step = int((TONE_S + GAP_S) * SAMPLE_RATE)
    for trial in headphone_trials(p):
        samples, _ = wav(client.get(f"/l/p/{p.token}/hp/{trial['token']}"))
        levels = {
            name: level_db(samples[i * step : i * step + tone]) for i, name in enumerate(trial["order"])
        }
        assert np.allclose(levels["standard"], test.calibration_level_dbfs, atol=0.1)
        assert np.allclose(levels["antiphase"], test.calibration_level_dbfs, atol=0.1)
        assert np.allclose(levels["quiet"], test.calibration_level_dbfs - 6, atol=0.1)


def test_a_test_built_before_calibration_levels_existed_calibrates_at_the_checks_own_level(world, client):
    test = build(world, headphone_check=True)
    ListeningTest.objects.filter(pk=test.pk).update(calibration_level_dbfs=None)
    p = join_through_invite(client, test)
    noise, _ = wav(client.get(f"/l/p/{p.token}/cal"))
    calibrate(p)
    trial = headphone_trials(p)[0]
    samples, _ = wav(client.get(f"/l/p/{p.token}/hp/{trial['token']}"))
    standard = trial["order"].index("standard")
    step = int((TONE_S + GAP_S) * SAMPLE_RATE)
    tone_level = level_db(samples[standard * step : standard * step + int(TONE_S * SAMPLE_RATE)])
    assert np.allclose(level_db(noise), tone_level, atol=0.1)
    assert np.abs(samples).max() == pytest.approx(10 ** (-10 / 20), abs=1e-3)  # the check's -10 dBFS peak


def test_material_too_loud_for_the_noise_calibrates_at_the_loudest_level_that_does_not_clip():
    from evalsite.listening.calibration import calibration_level, calibration_samples, headphone_trial_samples

    level = calibration_level(-3.0)
    noise = calibration_samples(-3.0)
    assert -16 < level < -3 and np.abs(noise).max() == pytest.approx(0.99, abs=1e-3)
    assert np.allclose(level_db(noise), level, atol=0.05)
    tones = headphone_trial_samples(("standard", "quiet", "antiphase"), -3.0)
    assert np.allclose(level_db(tones[: int(TONE_S * SAMPLE_RATE)]), level, atol=0.05)


def test_each_headphone_trial_is_a_stereo_wav_with_a_quiet_tone_where_the_answer_says_and_one_antiphase_tone(
    world, client
):
    test = build(world, headphone_check=True)
    p = join_through_invite(client, test)
    calibrate(p)
    urls = [t["url"] for t in client.get(f"/l/p/{p.token}/state").json()["headphone_check"]["trials"]]
    expected = headphone_trials(p)
    assert len({tuple(t["order"]) for t in expected}) > 1  # the order is randomised
    assert expected == headphone_trials(Participant.objects.get(pk=p.pk))  # and deterministic
    tone = int(TONE_S * SAMPLE_RATE)
    step = int((TONE_S + GAP_S) * SAMPLE_RATE)
    for url, trial in zip(urls, expected):
        response = client.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
        samples, rate = wav(response)
        assert rate == SAMPLE_RATE and samples.shape == (3 * tone + 2 * (step - tone), 2)
        rms = [np.sqrt(np.mean(samples[i * step : i * step + tone] ** 2, axis=0)) for i in range(3)]
        quiet = trial["answer"] - 1
        assert all(
            np.allclose(20 * np.log10(rms[quiet] / rms[i]), -6, atol=0.05) for i in range(3) if i != quiet
        )
        anti = trial["order"].index("antiphase")
        left, right = samples[anti * step : anti * step + tone].T
        assert np.allclose(left, -right, atol=1e-4) and np.abs(left).max() > 0.1
    client.cookies.clear()
    assert client.get(urls[0]).status_code == 404  # another browser


def test_passing_the_headphone_check_opens_the_test_and_is_stored(world, client):
    test = build(world, headphone_check=True)
    p = join_through_invite(client, test)
    calibrate(p)
    answers = [t["answer"] for t in headphone_trials(p)]
    answers[2] = answers[2] % 3 + 1  # one wrong: 5 of 6 still passes
    response = client.post(
        f"/l/p/{p.token}/headphone", json.dumps({"answers": answers}), content_type="application/json"
    )
    assert (
        response.status_code == 200
        and response.json()["passed"] is True
        and response.json()["phase"] == "main"
    )
    p.refresh_from_db()
    assert p.headphone_passed is True and p.headphone_answers == answers and p.status == "active"
    state = listener_state(p)
    assert state["headphone_check"] is None and state["calibration"] is None
    answer(p, state["trials"][0])
    services.trial_complete(participant=p, trial=state["trials"][0]["id"])


def test_failing_the_headphone_check_screens_the_listener_out_with_the_tests_redirect(world, client):
    test = build(
        world,
        headphone_check=True,
        screened_out_redirect="https://app.prolific.com/submissions/complete?cc=NOHP",
    )
    p = join_through_invite(client, test)
    calibrate(p)
    answers = [t["answer"] % 3 + 1 for t in headphone_trials(p)]
    answers[0] = headphone_trials(p)[0]["answer"]  # 1 of 6
    response = client.post(
        f"/l/p/{p.token}/headphone", json.dumps({"answers": answers}), content_type="application/json"
    )
    assert response.json() == {
        "passed": False,
        "phase": "screened_out",
        "screened_out": {
            "message": services.SCREENED_OUT,
            "redirect": "https://app.prolific.com/submissions/complete?cc=NOHP",
        },
    }
    p.refresh_from_db()
    assert p.status == Participant.Status.SCREENED_OUT and p.headphone_passed is False
    assert services.trial_coverage(test) == dict.fromkeys(services.trial_coverage(test), 0)
    # Taken once: a second try (or a retried request) changes nothing.
    good = [t["answer"] for t in headphone_trials(p)]
    assert services.headphone_check_submit(participant=p, answers=good).headphone_passed is False
    trial = listener_state(p)["trials"][0]
    with pytest.raises(ConflictError) as exc:
        services.rating_submit(
            participant=p, trial=trial["id"], stimulus=trial["stimuli"][0]["id"], score=3, request_id="r1"
        )
    assert exc.value.message == services.SCREENED_OUT
    assert client.get(f"/l/p/{p.token}/state").json()["phase"] == "screened_out"


@pytest.mark.parametrize(
    "bad", [None, [1, 2, 3], [1, 2, 3, 1, 2, 4], [1, 2, 3, 1, 2, "3"], [1, 2, 3, 1, 2, True]]
)
def test_malformed_headphone_answers_are_refused_and_nothing_is_stored(world, bad):
    test = build(world, headphone_check=True)
    p = services.participant_join(test=test)
    calibrate(p)
    with pytest.raises(ApplicationError) as exc:
        services.headphone_check_submit(participant=p, answers=bad)
    assert exc.value.extra == {"fields": {"answers": [exc.value.message]}}
    p.refresh_from_db()
    assert p.headphone_passed is None and p.status == "active"


def test_without_a_headphone_check_there_is_none_to_take(world):
    p = services.participant_join(test=build(world))
    assert listener_state(p)["phase"] == "main" and listener_state(p)["headphone_check"] is None
    with pytest.raises(ApplicationError) as exc:
        services.headphone_check_submit(participant=p, answers=[1] * 6)
    assert exc.value.message == services.HEADPHONE_NOT_ASKED


# ---------------------------------------------------------------------------------------------
# 3. Gold and trapping trials, every kind

KINDS = ["mos", "smos", "mushra", "cmos", "ab"]
NEUTRAL = {"mos": 3, "smos": 3, "mushra": 50, "cmos": 0}


def controls_of(participant):
    return {
        a.token: a.trial
        for a in Assignment.objects.filter(
            participant=participant, trial__control__in=["gold", "trapping"]
        ).select_related("trial")
    }


def ordinary_shape(test):
    trial = Trial.objects.filter(test=test, control="", is_training=False).first()
    return trial.stimuli.count(), trial.reference_id is not None


def expectations(trial):
    return {s.pk: s.expected for s in trial.stimuli.all() if s.expected}


def answers_for(participant, trial_state, good: bool):
    """What a careful (``good``) or careless listener answers, per sound token, for one trial."""
    assignment = Assignment.objects.select_related("trial__test").get(token=trial_state["id"])
    kind = assignment.trial.test.kind
    handles = list(assignment.handles.select_related("stimulus").order_by("position"))
    if kind not in ("cmos", "ab"):
        out = {}
        for h in handles:
            exp = h.stimulus.expected
            if not exp:
                out[h.token] = NEUTRAL[kind]
            elif good:
                out[h.token] = exp["min"] if kind != "mushra" else (exp["min"] + exp["max"]) / 2
            else:
                out[h.token] = (
                    (0 if exp["min"] >= 50 else 100) if kind == "mushra" else (1 if exp["min"] >= 3 else 5)
                )
        return out
    raw = 0.0 if kind == "cmos" else -1.0
    for position, h in enumerate(handles):
        exp = h.stimulus.expected
        if exp:
            wanted = exp["min"] if exp["of"] == "answer" or position == 1 else -exp["min"]
            raw = wanted if good else (-wanted if wanted else 3.0)
    b = handles[1].token
    if kind == "cmos":
        return {b: raw}
    return {b: handles[1].token if raw > 0 else handles[0].token if raw < 0 else "none"}


def take(participant, good_controls: bool):
    controls = controls_of(participant)
    for trial in listener_state(participant)["trials"]:
        is_control = trial["id"] in controls
        for token, score in answers_for(participant, trial, good=not is_control or good_controls).items():
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=token,
                score=score,
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])
    participant.refresh_from_db()


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_gold_and_trapping_trials_shaped_like_its_ordinary_trials(world, kind):
    test = build(world, kind=kind, gold_items=2, trapping_items=2)
    shape = ordinary_shape(test)
    controls = list(
        Trial.objects.filter(test=test).exclude(control="").prefetch_related("stimuli__condition")
    )
    assert sorted(t.control for t in controls) == ["gold", "gold", "trapping", "trapping"]
    for trial in controls:
        assert (trial.stimuli.count(), trial.reference_id is not None) == shape and not trial.is_training
        assert {s.condition.role for s in trial.stimuli.all()} == {
            trial.control
        }  # never a system's condition
        assert expectations(trial), f"{kind} {trial.control} trial expects nothing"
        for exp in expectations(trial).values():
            assert set(exp) == {"min", "max", "of"} and exp["min"] <= exp["max"]
            assert exp["of"] == (
                "score"
                if kind in ("mos", "smos", "mushra")
                else "preference"
                if trial.control == "gold"
                else "answer"
            )


def test_mushra_gold_expects_the_hidden_reference_high_and_a_degraded_copy_low(world):
    test = build(world, kind="mushra", gold_items=1)
    gold = Trial.objects.get(test=test, control="gold")
    by_range = {(e["min"], e["max"]): s for s in gold.stimuli.all() if (e := s.expected)}
    assert set(by_range) == {services.MUSHRA_REFERENCE_RANGE, services.MUSHRA_DEGRADED_RANGE}
    assert by_range[services.MUSHRA_REFERENCE_RANGE].asset_id == gold.item.reference_id == gold.reference_id
    degraded, _ = audio_asset_samples(by_range[services.MUSHRA_DEGRADED_RANGE].asset)
    reference, _ = audio_asset_samples(gold.item.reference)
    # Clipped (most samples at the clipping level), at the level of the reference: never louder.
    assert active_level_dbfs(degraded, 22050) == pytest.approx(active_level_dbfs(reference, 22050), abs=0.1)
    assert np.mean(np.abs(degraded) > 0.5 * np.abs(degraded).max()) > 0.5
    labels = {s.condition.label for s in gold.stimuli.all()}
    assert {
        "quality control: gold, anchor: 3.5 kHz low-pass",
        "quality control: gold, hidden reference",
    } <= labels


def test_mushra_trapping_asks_in_words_for_a_score_and_expects_it_within_ten_points(world):
    test = build(world, kind="mushra", trapping_items=3)
    for trap in Trial.objects.filter(test=test, control="trapping"):
        (stimulus,) = [s for s in trap.stimuli.all() if s.expected]
        low, high = stimulus.expected["min"], stimulus.expected["max"]
        value = next(
            v for v in services.MUSHRA_TRAP_VALUES if max(0, v - 10) == low and min(100, v + 10) == high
        )
        samples, rate = audio_asset_samples(stimulus.asset)
        # As long as the item: the spoken instruction is fitted into it (tests/security/test_control_sound_sizes.py).
        assert samples.shape == audio_asset_samples(trap.item.reference)[0].shape
        assert 0 <= value <= 100


def test_smos_gold_uses_the_same_speakers_other_recording_or_a_different_voice(world):
    test = build(world, kind="smos", gold_items=2)
    low, high = Trial.objects.filter(test=test, control="gold").order_by("index")
    (s_low,), (s_high,) = low.stimuli.all(), high.stimuli.all()
    assert (s_low.expected["min"], s_low.expected["max"]) == services.SMOS_DIFFERENT_RANGE
    assert (s_high.expected["min"], s_high.expected["max"]) == services.SMOS_SAME_RANGE
    speaker_of = {i.reference_id: i.speaker for i in world["items"]}
    assert speaker_of[s_low.asset_id] != low.item.speaker  # another labelled speaker
    assert speaker_of[s_high.asset_id] == high.item.speaker and s_high.asset_id != high.item.reference_id
    assert low.reference_id == low.item.reference_id and high.reference_id == high.item.reference_id


def test_smos_gold_without_speaker_labels_shifts_the_voice_or_repeats_the_reference(world):
    EvalItem.objects.filter(eval_set=world["eval_set"]).update(speaker="")
    test = build(world, kind="smos", gold_items=2)
    low, high = Trial.objects.filter(test=test, control="gold").order_by("index")
    shifted, rate = audio_asset_samples(low.stimuli.get().asset)
    reference, _ = audio_asset_samples(low.item.reference)
    assert len(shifted) == len(reference)  # read faster, then padded with silence to the item's length
    assert np.abs(shifted[int(len(reference) / services.SMOS_OTHER_VOICE_RATIO) + rate // 100 :]).max() == 0
    assert high.stimuli.get().asset_id == high.item.reference_id


@pytest.mark.parametrize("kind", ["cmos", "ab"])
def test_comparison_gold_pits_the_clean_reference_against_a_degraded_copy(world, kind):
    test = build(world, kind=kind, gold_items=1)
    gold = Trial.objects.get(test=test, control="gold")
    clean, degraded = sorted(gold.stimuli.all(), key=lambda s: s.expected is None)
    assert clean.asset_id == gold.item.reference_id and degraded.expected is None
    assert clean.expected == {"min": 1.0, "max": 3.0 if kind == "cmos" else 1.0, "of": "preference"}


@pytest.mark.parametrize(
    "of,order,raw,expected",
    [
        ("preference", (7, 8), 2.0, 2.0),  # the clean sound (8) was B: B relative to A as given
        ("preference", (8, 7), 2.0, -2.0),  # the clean sound was A: the sign flips
        ("preference", (8, 7), 0.0, 0.0),
        ("answer", (8, 7), -3.0, -3.0),  # a spoken instruction names the answer as given
        ("answer", (7, 8), 1.0, 1.0),
    ],
)
def test_comparison_controls_read_the_answer_sign_corrected_or_as_given(of, order, raw, expected):
    from evalsite.listening.selectors import control_value

    value = control_value({"min": 1, "max": 3, "of": of}, 8, {order[1]: raw}, order)
    assert value == expected
    assert control_value({"min": 1, "max": 3, "of": of}, 8, {}, order) is None  # unanswered


@pytest.mark.parametrize("kind", KINDS)
def test_control_trials_pass_for_careful_listeners_fail_for_careless_ones_and_never_count_as_votes(
    world, kind
):
    test = build(world, kind=kind, gold_items=1, trapping_items=1, votes_target=3)
    careful, careless, idle = (services.participant_join(test=test) for _ in range(3))
    for p in (careful, careless, idle):
        assert sorted(t.control for t in controls_of(p).values()) == ["gold", "trapping"]
    take(careful, good_controls=True)
    take(careless, good_controls=False)
    assert careful.status == careless.status == "completed"
    results = quality_control_results(test)
    assert results[careful.pk] == {"gold": {"passed": 1, "total": 1}, "trapping": {"passed": 1, "total": 1}}
    assert results[careless.pk] == {"gold": {"passed": 0, "total": 1}, "trapping": {"passed": 0, "total": 1}}
    assert results[idle.pk] == {"gold": {"passed": 0, "total": 1}, "trapping": {"passed": 0, "total": 1}}
    # Control trials are no votes: coverage and progress count only the ordinary trials.
    main = Trial.objects.filter(test=test, control="")
    assert services.trial_coverage(test) == dict.fromkeys(main.values_list("pk", flat=True), 3)
    progress = listening_test_progress(test)
    assert not {c.role for c in progress["conditions"]} & {"gold", "trapping"}
    assert progress["trials"] == main.count()


def test_the_results_selector_leaves_out_tests_without_controls(world):
    assert quality_control_results(build(world, name="no-controls")) == {}


def test_each_listener_gets_one_gold_and_one_trapping_trial_mixed_in(world):
    test = build(world, gold_items=2, trapping_items=2, votes_target=2)
    gold = Trial.objects.filter(test=test, control="gold")
    assert sorted((e["min"], e["max"]) for t in gold for e in expectations(t).values()) == [
        (1.0, 2.0),
        (4.0, 5.0),
    ]
    trap = Trial.objects.filter(test=test, control="trapping").order_by("index").first()
    (exp,) = expectations(trap).values()
    assert exp["min"] == exp["max"] and 1 <= exp["min"] <= 5
    samples, rate = audio_asset_samples(trap.stimuli.get().asset)
    # The item's length: 1 s leaves no room for a real output's start, only the spoken instruction (a
    # longer item keeps that start: tests/security/test_control_sound_sizes.py).
    outputs = [audio_asset_samples(g.asset)[0] for g in Generation.objects.filter(item=trap.item)]
    assert all(samples.shape == output.shape for output in outputs) and np.abs(samples).max() > 0.05
    p = services.participant_join(test=test)
    assert Assignment.objects.filter(participant=p).count() == 8 + 2
    take(p, good_controls=True)
    assert p.status == "completed"
    services.participant_join(test=test)
    with pytest.raises(ConflictError):  # two votes per main trial: full, whatever the control trials have
        services.participant_join(test=test)


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_a_listener_receives_tells_a_control_trial_or_its_expected_answer(world, client, kind):
    test = build(world, kind=kind, gold_items=1, trapping_items=1, require_play_all=True)
    client.post(f"/l/i/{test.invite_token}/")
    p = Participant.objects.get(test=test)
    state = client.get(f"/l/p/{p.token}/state").json()
    controls = controls_of(p)
    shapes = {(tuple(sorted(t)), len(t["stimuli"]), t["reference"] is None) for t in state["trials"]}
    assert len(shapes) == 1  # every trial has the same keys, number of sounds and reference or not
    for t in state["trials"]:
        assert tuple(sorted(t["stimuli"][0])) == ("id", "label", "url") and t["training"] is False
    received = json.dumps(state) + client.get(f"/l/p/{p.token}/").content.decode()
    for t in state["trials"]:
        for s in t["stimuli"]:
            response = client.get(s["url"])
            assert response["Content-Disposition"] == 'inline; filename="sound.wav"'
            received += s["url"] + json.dumps(dict(response.headers))
        first = answers_for(p, t, good=True)
        token, score = next(iter(first.items()))
        rated = client.post(
            f"/l/p/{p.token}/rate",
            json.dumps({"trial": t["id"], "stimulus": token, "score": score, "request_id": uuid.uuid4().hex}),
            content_type="application/json",
        )
        assert rated.status_code == 200
        received += rated.content.decode() + json.dumps(dict(rated.headers))
    # Opaque tokens are random letters: blank them so a token spelling "gold" is no false alarm.
    lowered = re.sub(r"[A-Za-z0-9_-]{20,}", "", received).lower()
    leaks = [
        "gold",
        "trap",
        "attention",
        "expected",
        "quality control",
        "degraded",
        "shifted voice",
        "other speaker",
        "other recording",
    ]
    assert [w for w in leaks if w in lowered] == []
    # Nor the words a trapping sound speaks, whichever phrasing the build used.
    said = [s.instruction.lower() for s in Stimulus.objects.filter(trial__test=test).exclude(instruction="")]
    assert len(said) == 1 and [t for t in said if t in lowered] == []
    for token, trial in controls.items():
        entry = next(t for t in state["trials"] if t["id"] == token)
        hidden = json.dumps({k: v for k, v in entry.items() if k not in ("id", "stimuli")})
        for exp in expectations(trial).values():
            assert f"{exp['min']}" not in hidden and f"{exp['max']}" not in hidden
    assert not re.search(r"/(\d+)(/|$)", " ".join(s["url"] for t in state["trials"] for s in t["stimuli"]))


# ---------------------------------------------------------------------------------------------
# Settings: management command and researcher form


def test_the_management_command_and_the_build_form_set_every_quality_control(world, admin_client):
    call_command(
        "build_listening_test",
        "cmd-qc",
        "--kind",
        "mos",
        "--checkpoints",
        "hifigan-secret-run@77777",
        "--require-play-all",
        "--headphone-check",
        "--gold-items",
        "1",
        "--trapping-items",
        "2",
    )
    test = ListeningTest.objects.get(name="cmd-qc")
    assert (test.require_play_all, test.headphone_check, test.gold_items, test.trapping_items) == (
        True,
        True,
        1,
        2,
    )
    assert (
        test.trials.filter(control="gold").count() == 1
        and test.trials.filter(control="trapping").count() == 2
    )
    ckpt = world["checkpoints"][0]
    response = admin_client.post(
        "/listening/new/",
        {
            "name": "form-qc",
            "kind": "mos",
            "checkpoints": [ckpt.pk],
            "title": "t",
            "training_items": 0,
            "votes_target": 3,
            "require_play_all": "on",
            "headphone_check": "on",
            "gold_items": 1,
            "trapping_items": 0,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    form = ListeningTest.objects.get(name="form-qc")
    assert (form.require_play_all, form.headphone_check, form.gold_items, form.trapping_items) == (
        True,
        True,
        1,
        0,
    )
