"""Optional quality controls of a listening test: play every sound, the headphone check, gold and
trapping trials (SQLite, services and the Django test client)."""

import io
import json
import re
import uuid

import numpy as np
import pytest
import soundfile as sf
from django.core.management import call_command

from evalsite.audio.headphone_check import GAP_S, SAMPLE_RATE, TONE_S
from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.listening import services
from evalsite.audio.selectors import audio_asset_samples
from evalsite.listening.models import Assignment, ListeningTest, Participant, Trial
from evalsite.listening.selectors import (
    headphone_trials,
    listener_state,
    listening_test_progress,
    quality_control_results,
)
from evalsite.runs.models import Generation
from tests.factories import listening_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    return listening_world()


def build(world, kind="mos", name=None, **kw):
    test = services.listening_test_build(name=name or f"qc-{kind}", kind=kind, checkpoints=world["checkpoints"],
                                         seed=99, training_items=0, completion_code="QC-DONE", **kw)
    return services.listening_test_publish(test=test)


def answer(participant, trial, score=3):
    for stim in trial["stimuli"]:
        services.rating_submit(participant=participant, trial=trial["id"], stimulus=stim["id"], score=score,
                               request_id=uuid.uuid4().hex)


def heard(participant, trial, stimuli=None):
    events = [{"t": 10, "type": "heard", "stimulus": s, "pos": 1.0} for s in (stimuli or [x["id"] for x in trial["stimuli"]])]
    services.telemetry_append(participant=participant, trial=trial["id"], events=events)


# ---------------------------------------------------------------------------------------------
# 1. Play every sound


def test_with_play_all_a_trial_is_refused_until_every_sound_has_a_play_event(world):
    test = build(world, kind="mushra", require_play_all=True)
    p = services.participant_join(test=test)
    trial = listener_state(p)["trials"][0]
    answer(p, trial, score=50)
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=p, trial=trial["id"])
    assert exc.value.message == services.PLAY_ALL_FIRST.format(missing=5) and exc.value.extra == {"field": "trial"}
    heard(p, trial, [s["id"] for s in trial["stimuli"][:4]])
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=p, trial=trial["id"])
    assert exc.value.message == services.PLAY_ALL_FIRST.format(missing=1)
    services.telemetry_append(participant=p, trial=trial["id"],
                              events=[{"t": 20, "type": "play", "stimulus": trial["stimuli"][4]["id"], "pos": 0}])
    services.trial_complete(participant=p, trial=trial["id"])
    assert Assignment.objects.get(token=trial["id"]).completed_at is not None


def test_play_events_naming_another_trials_or_participants_sounds_are_dropped_and_do_not_count(world):
    test = build(world, require_play_all=True)
    p, other = services.participant_join(test=test), services.participant_join(test=test)
    first, second = listener_state(p)["trials"][:2]
    foreign = listener_state(other)["trials"][0]["stimuli"][0]["id"]
    services.telemetry_append(participant=p, trial=first["id"], events=[
        {"type": "heard", "stimulus": foreign}, {"type": "heard", "stimulus": second["stimuli"][0]["id"]},
        {"type": "heard", "stimulus": "made-up"}, {"type": "heard", "stimulus": None}])
    assert Assignment.objects.get(token=first["id"]).telemetry == [{"type": "heard", "stimulus": None}]
    answer(p, first)
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=p, trial=first["id"])
    assert exc.value.message == services.PLAY_ALL_FIRST.format(missing=1)


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
    response = client.post(f"/l/p/{p.token}/telemetry", json.dumps({"trial": trial["id"], "events": [
        {"t": 5, "type": "heard", "stimulus": None, "pos": 1.0}, {"t": 9, "type": "heard", "stimulus": stim, "pos": 1}]}),
        content_type="application/json")
    assert response.status_code == 204
    state = client.get(f"/l/p/{p.token}/state").json()
    assert state["test"]["require_play_all"] is True
    assert sorted(state["trials"][0]["heard"]) == sorted([stim, "ref"])
    answer(p, trial)
    response = client.post(f"/l/p/{p.token}/complete", json.dumps({"trial": trial["id"]}), content_type="application/json")
    assert response.status_code == 200


# ---------------------------------------------------------------------------------------------
# 2. Headphone check


def join_through_invite(client, test):
    client.post(f"/l/i/{test.invite_token}/")
    return Participant.objects.filter(test=test).latest("created_at")


def test_the_headphone_check_comes_first_and_rating_before_it_is_refused(world, client):
    test = build(world, headphone_check=True)
    p = join_through_invite(client, test)
    state = client.get(f"/l/p/{p.token}/state").json()
    assert state["phase"] == "headphone" and len(state["headphone_check"]["trials"]) == 6
    trial = state["trials"][0]
    with pytest.raises(ConflictError) as exc:
        services.rating_submit(participant=p, trial=trial["id"], stimulus=trial["stimuli"][0]["id"], score=3,
                               request_id="r1")
    assert exc.value.message == services.HEADPHONE_CHECK_FIRST


def test_each_headphone_trial_is_a_stereo_wav_with_a_quiet_tone_where_the_answer_says_and_one_antiphase_tone(world, client):
    test = build(world, headphone_check=True)
    p = join_through_invite(client, test)
    urls = [t["url"] for t in client.get(f"/l/p/{p.token}/state").json()["headphone_check"]["trials"]]
    expected = headphone_trials(p)
    assert len({tuple(t["order"]) for t in expected}) > 1  # the order is randomised
    assert expected == headphone_trials(Participant.objects.get(pk=p.pk))  # and deterministic
    tone = int(TONE_S * SAMPLE_RATE)
    step = int((TONE_S + GAP_S) * SAMPLE_RATE)
    for url, trial in zip(urls, expected):
        response = client.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
        samples, rate = sf.read(io.BytesIO(b"".join(response.streaming_content if response.streaming else [response.content])))
        assert rate == SAMPLE_RATE and samples.shape == (3 * tone + 2 * (step - tone), 2)
        rms = [np.sqrt(np.mean(samples[i * step:i * step + tone] ** 2, axis=0)) for i in range(3)]
        quiet = trial["answer"] - 1
        assert all(np.allclose(20 * np.log10(rms[quiet] / rms[i]), -6, atol=0.05) for i in range(3) if i != quiet)
        anti = trial["order"].index("antiphase")
        left, right = samples[anti * step:anti * step + tone].T
        assert np.allclose(left, -right, atol=1e-4) and np.abs(left).max() > 0.3
    client.cookies.clear()
    assert client.get(urls[0]).status_code == 404  # another browser


def test_passing_the_headphone_check_opens_the_test_and_is_stored(world, client):
    test = build(world, headphone_check=True)
    p = join_through_invite(client, test)
    answers = [t["answer"] for t in headphone_trials(p)]
    answers[2] = answers[2] % 3 + 1  # one wrong: 5 of 6 still passes
    response = client.post(f"/l/p/{p.token}/headphone", json.dumps({"answers": answers}), content_type="application/json")
    assert response.status_code == 200 and response.json()["passed"] is True and response.json()["phase"] == "main"
    p.refresh_from_db()
    assert p.headphone_passed is True and p.headphone_answers == answers and p.status == "active"
    state = listener_state(p)
    assert state["headphone_check"] is None
    answer(p, state["trials"][0])
    services.trial_complete(participant=p, trial=state["trials"][0]["id"])


def test_failing_the_headphone_check_screens_the_listener_out_with_the_tests_redirect(world, client):
    test = build(world, headphone_check=True, screened_out_redirect="https://app.prolific.com/submissions/complete?cc=NOHP")
    p = join_through_invite(client, test)
    answers = [t["answer"] % 3 + 1 for t in headphone_trials(p)]
    answers[0] = headphone_trials(p)[0]["answer"]  # 1 of 6
    response = client.post(f"/l/p/{p.token}/headphone", json.dumps({"answers": answers}), content_type="application/json")
    assert response.json() == {"passed": False, "phase": "screened_out", "screened_out": {
        "message": services.SCREENED_OUT, "redirect": "https://app.prolific.com/submissions/complete?cc=NOHP"}}
    p.refresh_from_db()
    assert p.status == Participant.Status.SCREENED_OUT and p.headphone_passed is False
    assert services.trial_coverage(test) == dict.fromkeys(services.trial_coverage(test), 0)
    # Taken once: a second try (or a retried request) changes nothing.
    good = [t["answer"] for t in headphone_trials(p)]
    assert services.headphone_check_submit(participant=p, answers=good).headphone_passed is False
    trial = listener_state(p)["trials"][0]
    with pytest.raises(ConflictError) as exc:
        services.rating_submit(participant=p, trial=trial["id"], stimulus=trial["stimuli"][0]["id"], score=3,
                               request_id="r1")
    assert exc.value.message == services.SCREENED_OUT
    assert client.get(f"/l/p/{p.token}/state").json()["phase"] == "screened_out"


@pytest.mark.parametrize("bad", [None, [1, 2, 3], [1, 2, 3, 1, 2, 4], [1, 2, 3, 1, 2, "3"], [1, 2, 3, 1, 2, True]])
def test_malformed_headphone_answers_are_refused_and_nothing_is_stored(world, bad):
    test = build(world, headphone_check=True)
    p = services.participant_join(test=test)
    with pytest.raises(ApplicationError) as exc:
        services.headphone_check_submit(participant=p, answers=bad)
    assert exc.value.extra == {"field": "answers"}
    p.refresh_from_db()
    assert p.headphone_passed is None and p.status == "active"


def test_without_a_headphone_check_there_is_none_to_take(world):
    p = services.participant_join(test=build(world))
    assert listener_state(p)["phase"] == "main" and listener_state(p)["headphone_check"] is None
    with pytest.raises(ApplicationError) as exc:
        services.headphone_check_submit(participant=p, answers=[1] * 6)
    assert exc.value.message == services.HEADPHONE_NOT_ASKED


# ---------------------------------------------------------------------------------------------
# 3. Gold and trapping trials


def controls_of(participant):
    return {a.token: a.trial for a in Assignment.objects.filter(participant=participant, trial__control__in=["gold", "trapping"])
            .select_related("trial")}


def test_each_listener_gets_one_gold_and_one_trapping_trial_mixed_in_that_do_not_count_as_votes(world):
    test = build(world, gold_items=2, trapping_items=2, votes_target=2)
    gold = Trial.objects.filter(test=test, control="gold")
    trap = Trial.objects.get(test=test, control="trapping", index=Trial.objects.filter(test=test, control="trapping")
                             .order_by("index").first().index)
    assert gold.count() == 2 and Trial.objects.filter(test=test, control="trapping").count() == 2
    assert sorted((t.expected_min, t.expected_max) for t in gold) == [(1.0, 2.0), (4.0, 5.0)]
    assert trap.expected_min == trap.expected_max and 1 <= trap.expected_min <= 5
    samples, rate = audio_asset_samples(trap.stimuli.get().asset)
    heads = [audio_asset_samples(g.asset)[0][:rate] for g in Generation.objects.filter(item=trap.item)]
    assert any(np.array_equal(samples[:rate], head) for head in heads)  # a real output's start...
    assert len(samples) > 2 * rate  # ...then the spoken instruction
    p = services.participant_join(test=test)
    mine = controls_of(p)
    assert sorted(t.control for t in mine.values()) == ["gold", "trapping"]
    assert Assignment.objects.filter(participant=p).count() == 8 + 2
    rate_all(p)
    assert p.status == "completed"
    progress = listening_test_progress(test)
    assert [c.role for c in progress["conditions"]] == ["system", "system"] and progress["trials"] == 8
    coverage = services.trial_coverage(test)
    assert coverage == dict.fromkeys(Trial.objects.filter(test=test, control="").values_list("pk", flat=True), 1)
    assert sum(sum(c for c in row["cells"]) for row in progress["rows"]) == 8
    services.participant_join(test=test)
    with pytest.raises(ConflictError):  # two votes per main trial: full, whatever the control trials have
        services.participant_join(test=test)


def rate_all(p, score_of=lambda token: 3):
    for trial in listener_state(p)["trials"]:
        for stim in trial["stimuli"]:
            services.rating_submit(participant=p, trial=trial["id"], stimulus=stim["id"], score=score_of(trial["id"]),
                                   request_id=uuid.uuid4().hex)
        services.trial_complete(participant=p, trial=trial["id"])
    p.refresh_from_db()


def test_the_results_selector_counts_gold_and_trapping_trials_passed_per_listener(world):
    test = build(world, gold_items=1, trapping_items=1)
    good, careless, idle = (services.participant_join(test=test) for _ in range(3))
    expected = {tok: t.expected_min for tok, t in controls_of(good).items()}
    rate_all(good, lambda tok: expected.get(tok, 3))
    wrong = {tok: (5 if t.expected_min < 3 else 1) for tok, t in controls_of(careless).items()}
    rate_all(careless, lambda tok: wrong.get(tok, 3))
    results = quality_control_results(test)
    assert results[good.pk] == {"gold": {"passed": 1, "total": 1}, "trapping": {"passed": 1, "total": 1}}
    assert results[careless.pk] == {"gold": {"passed": 0, "total": 1}, "trapping": {"passed": 0, "total": 1}}
    assert results[idle.pk] == {"gold": {"passed": 0, "total": 1}, "trapping": {"passed": 0, "total": 1}}
    assert quality_control_results(build(world, name="no-controls")) == {}


def test_gold_and_trapping_trials_are_built_for_mos_only(world):
    with pytest.raises(ApplicationError) as exc:
        services.listening_test_build(name="x", kind="mushra", checkpoints=world["checkpoints"], trapping_items=1)
    assert exc.value.message == services.CONTROL_TRIALS_ONLY_MOS.format(kind="mushra")


def test_nothing_a_listener_receives_tells_a_control_trial_or_its_expected_answer(world, client):
    test = build(world, gold_items=1, trapping_items=1, require_play_all=True)
    client.post(f"/l/i/{test.invite_token}/")
    p = Participant.objects.get(test=test)
    state = client.get(f"/l/p/{p.token}/state").json()
    controls = controls_of(p)
    shapes = {tuple(sorted(t)): None for t in state["trials"]}
    assert len(shapes) == 1  # every trial has the same keys
    for t in state["trials"]:
        assert tuple(sorted(t["stimuli"][0])) == ("id", "label", "url") and t["training"] is False
    received = json.dumps(state) + client.get(f"/l/p/{p.token}/").content.decode()
    for t in state["trials"]:
        response = client.get(t["stimuli"][0]["url"])
        assert response["Content-Disposition"] == 'inline; filename="sound.wav"'
        received += json.dumps(dict(response.headers))
    # Opaque tokens are random letters: blank them so a token spelling "gold" is no false alarm.
    lowered = re.sub(r"[A-Za-z0-9_-]{20,}", "", received).lower()
    leaks = ["gold", "trap", "attention", "expected", "quality control"]
    assert [w for w in leaks if w in lowered] == []
    for token, trial in controls.items():
        entry = next(t for t in state["trials"] if t["id"] == token)
        assert str(int(trial.expected_min)) not in json.dumps({k: v for k, v in entry.items() if k not in ("id", "stimuli")})
    assert not re.search(r"/(\d+)(/|$)", " ".join(s["url"] for t in state["trials"] for s in t["stimuli"]))


# ---------------------------------------------------------------------------------------------
# Settings: management command and researcher form


def test_the_management_command_and_the_build_form_set_every_quality_control(world, admin_client):
    call_command("build_listening_test", "cmd-qc", "--kind", "mos", "--checkpoints", "hifigan-secret-run@77777",
                 "--require-play-all", "--headphone-check", "--gold-items", "1", "--trapping-items", "2")
    test = ListeningTest.objects.get(name="cmd-qc")
    assert (test.require_play_all, test.headphone_check, test.gold_items, test.trapping_items) == (True, True, 1, 2)
    assert test.trials.filter(control="gold").count() == 1 and test.trials.filter(control="trapping").count() == 2
    ckpt = world["checkpoints"][0]
    response = admin_client.post("/listening/new/", {
        "name": "form-qc", "kind": "mos", "checkpoints": [ckpt.pk], "title": "t", "training_items": 0,
        "votes_target": 3, "require_play_all": "on", "headphone_check": "on", "gold_items": 1, "trapping_items": 0})
    assert response.status_code == 302, response.content.decode()[:2000]
    form = ListeningTest.objects.get(name="form-qc")
    assert (form.require_play_all, form.headphone_check, form.gold_items, form.trapping_items) == (True, True, 1, 0)
