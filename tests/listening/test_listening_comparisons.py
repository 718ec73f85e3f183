"""CMOS (ITU-T P.800 Annex E, CCR) and AB preference tests: building, the per-listener order of A
and B, sign correction, validation, idempotency, completion and blinding (SQLite, test client)."""

import itertools
import json
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from evalsite.core.exceptions import ApplicationError, NotFoundError
from evalsite.listening import services
from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    Condition,
    ListeningTest,
    Participant,
    Rating,
    StimulusHandle,
)
from evalsite.listening.selectors import (
    ab_choice,
    cmos_score,
    comparison_answers,
    listener_state,
    listening_test_progress,
)
from evalsite.runs.models import Generation
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db
RUNS3 = ("hifigan-secret-run", "evagan-hidden-run", "bigvgan-private-run")


@pytest.fixture
def world3():
    """Three checkpoints with outputs for 4 items (reference audio included)."""
    return listening_world(runs=RUNS3)


def build(world, kind, *, checkpoints=None, **kw):
    # These tests follow the generated audio into the trials; tests/listening/test_loudness_alignment.py
    # covers the aligned renditions the default design serves.
    kw.setdefault("loudness_target_lufs", None)
    test = make_listening_test(
        name=f"t-{kind}",
        kind=kind,
        checkpoints=checkpoints or world["checkpoints"],
        seed=1234,
        completion_code="C0DE-42",
        **kw,
    )
    return services.listening_test_publish(test=test)


def handles(assignment):
    return list(
        StimulusHandle.objects.filter(assignment=assignment)
        .select_related("stimulus__condition")
        .order_by("position")
    )


def main_assignment(participant):
    return (
        Assignment.objects.filter(participant=participant, trial__is_training=False)
        .order_by("position")
        .first()
    )


def force_order(assignment, first_role):
    """Present the stimulus of ``first_role`` as A (position 0), whatever the seed drew."""
    a, b = handles(assignment)
    if a.stimulus.condition.role != first_role:
        StimulusHandle.objects.filter(pk=a.pk).update(position=1)
        StimulusHandle.objects.filter(pk=b.pk).update(position=0)
    return handles(assignment)


def answer(participant, assignment, score, request_id=None, on=1):
    return services.rating_submit(
        participant=participant,
        trial=assignment.token,
        stimulus=handles(assignment)[on].token,
        score=score,
        request_id=request_id or uuid.uuid4().hex,
    )


# ---------------------------------------------------------------------------------------------
# Building


def test_a_cmos_test_pairs_every_checkpoint_output_with_the_items_reference_recording(world):
    test = build(world, "cmos")
    comparison = test.conditions.get(role=Condition.Role.COMPARISON)
    assert comparison.label == services.CMOS_REFERENCE_LABEL and comparison.checkpoint is None
    assert sorted(test.conditions.values_list("role", flat=True)) == ["comparison", "system", "system"]
    assert test.trials.count() == 4 * 2 and test.trials.filter(is_training=True).count() == 2
    for trial in test.trials.select_related("item"):
        stimuli = {s.condition.role: s for s in trial.stimuli.select_related("condition")}
        assert sorted(stimuli) == ["comparison", "system"] and trial.reference_id is None  # no open reference
        assert stimuli["comparison"].asset_id == trial.item.reference_id
        assert (
            stimuli["system"].asset_id
            == Generation.objects.get(
                item=trial.item, checkpoint=stimuli["system"].condition.checkpoint
            ).asset_id
        )


def test_a_cmos_test_can_rate_checkpoints_against_a_baseline_checkpoint_and_skips_items_it_lacks(world3):
    *rated, baseline = world3["checkpoints"]
    Generation.objects.filter(checkpoint=baseline, item__key="utt3").delete()
    test = build(world3, "cmos", checkpoints=rated, comparison=baseline, training_items=0)
    comparison = test.conditions.get(role=Condition.Role.COMPARISON)
    assert comparison.checkpoint == baseline and comparison.label == "bigvgan-private-run@77777"
    assert test.trials.count() == 3 * 2
    assert any("utt3 skipped: no output from bigvgan-private-run@77777" in w for w in test.build_warnings)
    for trial in test.trials.all():
        versus = trial.stimuli.get(condition=comparison)
        assert versus.asset_id == Generation.objects.get(item=trial.item, checkpoint=baseline).asset_id


def test_a_comparison_checkpoint_must_not_be_rated_itself_and_only_cmos_takes_one(world):
    a, b = world["checkpoints"]
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="x", kind="cmos", checkpoints=[a, b], comparison=b)
    assert exc.value.message == services.COMPARISON_IS_RATED.format(label="evagan-hidden-run@77777")
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="x", kind="mos", checkpoints=[a], comparison=b)
    assert exc.value.message == services.COMPARISON_ONLY_CMOS.format(kind="mos")
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="x", kind="cmos", checkpoints=[a], allow_no_preference=True)
    assert exc.value.message == services.NO_PREFERENCE_ONLY_AB.format(kind="cmos")
    assert not ListeningTest.objects.exists()


def test_an_ab_test_has_one_trial_per_item_and_pair_of_checkpoints(world3):
    test = build(world3, "ab", training_items=0)
    assert test.trials.count() == 4 * 3 and not test.conditions.exclude(role="system").exists()
    pairs = {}
    for trial in test.trials.select_related("item"):
        labels = sorted(trial.stimuli.values_list("condition__label", flat=True))
        assert len(labels) == 2 and labels[0] != labels[1] and trial.reference_id is None
        pairs.setdefault(trial.item.key, set()).add(tuple(labels))
    every_pair = {tuple(sorted(p)) for p in itertools.combinations([f"{r}@77777" for r in RUNS3], 2)}
    assert pairs == {f"utt{i}": every_pair for i in range(4)}


def test_an_ab_test_needs_at_least_two_checkpoints(world):
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(name="ab1", kind="ab", checkpoints=world["checkpoints"][:1])
    assert exc.value.message == services.AB_NEEDS_TWO.format(n=1) and not ListeningTest.objects.exists()


# ---------------------------------------------------------------------------------------------
# Order of A and B


def test_each_listener_hears_a_and_b_in_a_random_order_that_is_recorded_and_shown_as_given(world):
    test = build(world, "cmos")
    first_roles = []
    for _ in range(6):
        participant = services.participant_join(test=test)
        state = listener_state(participant)
        for trial in state["trials"]:
            assignment = Assignment.objects.get(token=trial["id"])
            recorded = handles(assignment)
            assert [s["label"] for s in trial["stimuli"]] == ["A", "B"]
            assert [s["id"] for s in trial["stimuli"]] == [h.token for h in recorded]
            first_roles.append(recorded[0].stimulus.condition.role)
    # 6 listeners x 8 trials: both orders occur (all one way has probability 2 ** -47).
    assert set(first_roles) == {"system", "comparison"}


def test_the_scales_and_instructions_a_listener_gets(world):
    cmos = listener_state(services.participant_join(test=build(world, "cmos")))["test"]
    assert [(l["value"], l["text"]) for l in cmos["scale"]["labels"]] == [
        (3, "Much better"),
        (2, "Better"),
        (1, "Slightly better"),
        (0, "About the same"),
        (-1, "Slightly worse"),
        (-2, "Worse"),
        (-3, "Much worse"),
    ]
    assert cmos["kind"] == "cmos" and "quality of B compared with the quality of A" in cmos["instructions"]
    test = make_listening_test(
        name="ab", kind="ab", checkpoints=world["checkpoints"], allow_no_preference=True
    )
    ab = listener_state(services.participant_join(test=services.listening_test_publish(test=test)))["test"]
    assert ab["scale"] == {"no_preference": True} and "choose the one you prefer" in ab["instructions"]


# ---------------------------------------------------------------------------------------------
# CMOS answers and the sign


@pytest.mark.parametrize("raw", [-3, -1, 0, 2, 3])
@pytest.mark.parametrize("system_first", [True, False], ids=["system-as-A", "comparison-as-A"])
def test_the_cmos_score_is_the_system_relative_to_the_comparison_in_either_order(world, system_first, raw):
    test = build(world, "cmos")
    participant = services.participant_join(test=test)
    assignment = main_assignment(participant)
    a, b = force_order(assignment, "system" if system_first else "comparison")
    rating = answer(participant, assignment, raw)
    rating.refresh_from_db()
    assert rating.stimulus_id == b.stimulus_id and rating.score == raw  # the raw answer, on B
    # The answer is B relative to A: with the system heard first (as A) it rates the comparison
    # against the system, so the system's score is its negation.
    expected = -raw if system_first else raw
    assert cmos_score(rating) == expected and str(cmos_score(rating)) != "-0.0"
    (row,) = comparison_answers(test)
    assert row == {
        "participant": participant.pk,
        "item": assignment.trial.item.key,
        "raw": float(raw),
        "training": False,
        "system": a.stimulus.condition.label if system_first else b.stimulus.condition.label,
        "comparison": services.CMOS_REFERENCE_LABEL,
        "system_first": system_first,
        "score": expected,
    }
    assert listener_state(participant)["trials"][assignment.position]["ratings"] == {b.token: float(raw)}


def test_cmos_score_refuses_ratings_of_other_test_kinds(world):
    test = build(world, "mos")
    participant = services.participant_join(test=test)
    rating = answer(participant, main_assignment(participant), 4, on=0)
    with pytest.raises(ValueError, match="belongs to a mos test"):
        cmos_score(rating)


@pytest.mark.parametrize("bad", [4, -4, 1.5, "2", True, None, float("nan"), [1]])
def test_malformed_cmos_answers_are_refused_with_the_field_and_nothing_is_stored(world, bad):
    test = build(world, "cmos")
    participant = services.participant_join(test=test)
    with pytest.raises(ApplicationError) as exc:
        answer(participant, main_assignment(participant), bad)
    assert exc.value.extra == {"fields": {"score": [exc.value.message]}}
    assert exc.value.message.startswith("score must be a whole number from -3 to 3")
    assert not Rating.objects.exists()


@pytest.mark.parametrize("kind,score", [("cmos", 2), ("ab", "A")])
def test_a_comparison_is_answered_on_sound_b_only(world, kind, score):
    test = build(world, kind)
    participant = services.participant_join(test=test)
    assignment = main_assignment(participant)
    score = handles(assignment)[0].token if score == "A" else score
    with pytest.raises(ApplicationError) as exc:
        answer(participant, assignment, score, on=0)
    assert exc.value.message == services.ANSWER_ON_B and exc.value.extra == {
        "fields": {"stimulus": [exc.value.message]}
    }
    assert not Rating.objects.exists()


def test_a_retried_cmos_answer_is_stored_once_and_a_late_retry_never_overwrites_a_newer_one(world):
    test = build(world, "cmos")
    participant = services.participant_join(test=test)
    assignment = main_assignment(participant)
    answer(participant, assignment, -2, request_id="first")
    answer(participant, assignment, -2, request_id="first")
    answer(participant, assignment, 1, request_id="second")
    answer(participant, assignment, -2, request_id="first")
    rating = Rating.objects.get()
    assert rating.score == 1 and rating.history == ["first", "second"]


# ---------------------------------------------------------------------------------------------
# AB answers


@pytest.mark.parametrize("choice", ["A", "B", "none"])
def test_an_ab_choice_is_stored_so_the_preferred_condition_is_recoverable(world, choice):
    test = services.listening_test_publish(
        test=make_listening_test(
            name="ab", kind="ab", checkpoints=world["checkpoints"], allow_no_preference=True
        )
    )
    participant = services.participant_join(test=test)
    assignment = main_assignment(participant)
    a, b = handles(assignment)
    given = {"A": a.token, "B": b.token, "none": "none"}[choice]
    rating = answer(participant, assignment, given)
    rating.refresh_from_db()
    assert rating.stimulus_id == b.stimulus_id and rating.score == {"A": -1.0, "B": 1.0, "none": 0.0}[choice]
    preferred = ab_choice(rating)
    assert preferred == {"A": a.stimulus, "B": b.stimulus, "none": None}[choice]
    (row,) = comparison_answers(test)
    label = {"A": a.stimulus.condition.label, "B": b.stimulus.condition.label, "none": None}[choice]
    assert (row["a"], row["b"], row["preferred"]) == (
        a.stimulus.condition.label,
        b.stimulus.condition.label,
        label,
    )
    assert listener_state(participant)["trials"][assignment.position]["ratings"] == {b.token: given}


def test_a_listener_can_change_their_ab_choice_and_one_answer_remains(world):
    test = build(world, "ab")
    participant = services.participant_join(test=test)
    assignment = main_assignment(participant)
    a, b = handles(assignment)
    answer(participant, assignment, a.token, request_id="one")
    answer(participant, assignment, b.token, request_id="two")
    answer(participant, assignment, a.token, request_id="one")  # a late retry of the first choice
    rating = Rating.objects.get()
    assert ab_choice(rating) == b.stimulus and rating.history == ["one", "two"]


@pytest.mark.parametrize("bad", ["none", "A", "other-trial", 1, None, ["x"], {"id": "x"}])
def test_malformed_ab_answers_are_refused_with_the_field_and_nothing_is_stored(world, bad):
    test = build(world, "ab")  # no "no preference" in this test
    participant = services.participant_join(test=test)
    assignment, other = Assignment.objects.filter(participant=participant, trial__is_training=False)[:2]
    bad = handles(other)[0].token if bad == "other-trial" else bad
    with pytest.raises(ApplicationError) as exc:
        answer(participant, assignment, bad)
    assert exc.value.extra == {"fields": {"score": [exc.value.message]}}
    assert exc.value.message.startswith("score must be the id of sound A or sound B; got")
    assert not Rating.objects.exists()


# ---------------------------------------------------------------------------------------------
# Completion, resume, flags


@pytest.mark.parametrize("kind", ["cmos", "ab"])
def test_a_comparison_trial_completes_once_answered_and_the_last_completes_the_participant(world, kind):
    test = build(world, kind)
    participant = services.participant_join(test=test)
    state = listener_state(participant)
    with pytest.raises(ApplicationError) as exc:
        services.trial_complete(participant=participant, trial=state["trials"][0]["id"])
    assert exc.value.message == services.ANSWER_FIRST and exc.value.extra == {
        "fields": {"trial": [exc.value.message]}
    }
    for n, trial in enumerate(state["trials"]):
        a, b = trial["stimuli"]
        score = (n % 7) - 3 if kind == "cmos" else (a["id"], b["id"])[n % 2]
        services.rating_submit(
            participant=participant, trial=trial["id"], stimulus=b["id"], score=score, request_id=f"r{n}"
        )
        if n == 1:  # the listener comes back: their answers so far are there
            resumed = listener_state(participant)
            assert resumed["position"] == 1 and resumed["trials"][1]["ratings"] == {b["id"]: score}
        services.trial_complete(participant=participant, trial=trial["id"])
    participant.refresh_from_db()
    final = listener_state(participant)
    assert participant.status == "completed" and final["phase"] == "done"
    assert final["completion"] == {"code": "C0DE-42", "redirect": None}
    assert Rating.objects.filter(participant=participant).count() == len(state["trials"])
    assert (
        len(comparison_answers(test))
        == len(state["trials"]) - Rating.objects.filter(is_training=True).count()
    )


def test_flags_can_mark_either_sound_of_a_comparison(world):
    test = build(world, "cmos")
    participant = services.participant_join(test=test)
    assignment = main_assignment(participant)
    a, _ = handles(assignment)
    flag = services.flag_submit(
        participant=participant,
        trial=assignment.token,
        stimulus=a.token,
        start=0.2,
        end=0.4,
        category="buzz",
        request_id="f1",
    )
    assert ArtifactFlag.objects.get() == flag and flag.stimulus_id == a.stimulus_id


def test_progress_counts_a_comparison_answer_as_a_vote_for_both_of_its_conditions(world):
    test = build(world, "cmos", training_items=0)
    participant = services.participant_join(test=test)
    assignment = main_assignment(participant)
    answer(participant, assignment, 1)
    system = assignment.trial.stimuli.get(condition__role="system").condition
    comparison = test.conditions.get(role="comparison")

    def votes():
        progress = listening_test_progress(test)
        row = next(r for r in progress["rows"] if r["item"] == assignment.trial.item.key)
        return dict(zip([c.pk for c in progress["conditions"]], row["cells"]))

    assert sum(votes().values()) == 0  # answered but not finished: not a vote yet
    services.trial_complete(participant=participant, trial=assignment.token)
    got = votes()
    assert got[system.pk] == 1 and got[comparison.pk] == 1 and sum(got.values()) == 2


# ---------------------------------------------------------------------------------------------
# Management command


def test_the_management_command_builds_cmos_against_a_baseline_and_ab_with_no_preference(world3, capsys):
    call_command(
        "build_listening_test",
        "cmd-cmos",
        "--kind",
        "cmos",
        "--checkpoints",
        "hifigan-secret-run@77777",
        "evagan-hidden-run@77777",
        "--comparison",
        "bigvgan-private-run@77777",
        "--min-listeners",
        "24",
        "--publish",
    )
    cmos = ListeningTest.objects.get(name="cmd-cmos")
    assert (
        cmos.status == "published" and cmos.conditions.get(role="comparison").checkpoint.run.name == RUNS3[2]
    )
    assert cmos.min_listeners == 24
    call_command(
        "build_listening_test",
        "cmd-ab",
        "--kind",
        "ab",
        "--checkpoints",
        *[f"{r}@77777" for r in RUNS3],
        "--allow-no-preference",
    )
    ab = ListeningTest.objects.get(name="cmd-ab")
    assert ab.allow_no_preference and ab.trials.count() == 4 * 3
    assert "ab test 'cmd-ab': 12 trials" in capsys.readouterr().out
    with pytest.raises(CommandError) as exc:
        call_command(
            "build_listening_test", "cmd-ab1", "--kind", "ab", "--checkpoints", "hifigan-secret-run@77777"
        )
    assert str(exc.value) == services.AB_NEEDS_TWO.format(n=1)
    with pytest.raises(CommandError, match="no checkpoint 'nope@1'"):
        call_command(
            "build_listening_test",
            "cmd-x",
            "--kind",
            "cmos",
            "--checkpoints",
            "hifigan-secret-run@77777",
            "--comparison",
            "nope@1",
        )


# ---------------------------------------------------------------------------------------------
# Through HTTP, as the browser does; blinding


def join_via_link(client, test):
    client.get(f"/l/i/{test.invite_token}/")
    response = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    assert response.status_code == 302
    return response["Location"]


def post_json(client, url, body):
    return client.post(
        url,
        json.dumps(body),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )


def test_ab_and_cmos_answers_through_the_json_endpoints_echo_what_the_listener_chose(world):
    client = Client(enforce_csrf_checks=True)
    ab = services.listening_test_publish(
        test=make_listening_test(
            name="ab-http", kind="ab", checkpoints=world["checkpoints"], allow_no_preference=True
        )
    )
    url = join_via_link(client, ab)
    trial = client.get(url + "state").json()["trials"][0]
    a, b = trial["stimuli"]
    body = {"trial": trial["id"], "stimulus": b["id"], "request_id": "r1"}
    assert post_json(client, url + "rate", {**body, "score": a["id"]}).json() == {"score": a["id"]}
    assert post_json(client, url + "rate", {**body, "score": "none", "request_id": "r2"}).json() == {
        "score": "none"
    }
    refused = post_json(client, url + "rate", {**body, "score": "B", "request_id": "r3"})
    assert refused.status_code == 400 and list(refused.json()["extra"]["fields"]) == ["score"]
    on_a = post_json(
        client, url + "rate", {**body, "stimulus": a["id"], "score": a["id"], "request_id": "r4"}
    )
    assert on_a.status_code == 400 and on_a.json() == {
        "message": services.ANSWER_ON_B,
        "extra": {"fields": {"stimulus": [services.ANSWER_ON_B]}},
    }
    assert post_json(client, url + "complete", {"trial": trial["id"]}).status_code == 200

    cmos = build(world, "cmos")
    client = Client(enforce_csrf_checks=True)
    url = join_via_link(client, cmos)
    trial = client.get(url + "state").json()["trials"][0]
    body = {"trial": trial["id"], "stimulus": trial["stimuli"][1]["id"], "request_id": "c1"}
    assert post_json(client, url + "rate", {**body, "score": -3}).json() == {"score": -3.0}
    assert post_json(client, url + "rate", {**body, "score": 3.5, "request_id": "c2"}).status_code == 400


@pytest.mark.parametrize(
    "kind,baseline",
    [("cmos", False), ("cmos", True), ("ab", False)],
    ids=["cmos-vs-reference", "cmos-vs-baseline", "ab"],
)
def test_nothing_a_cmos_or_ab_listener_receives_names_a_run_checkpoint_condition_or_role(
    world3, kind, baseline
):
    checkpoints = world3["checkpoints"][:2] if baseline else world3["checkpoints"]
    test = services.listening_test_publish(
        test=make_listening_test(
            name=f"blind-{kind}",
            kind=kind,
            checkpoints=checkpoints,
            comparison=world3["checkpoints"][2] if baseline else None,
            allow_no_preference=kind == "ab",
        )
    )
    client = Client()
    session_url = join_via_link(client, test)
    received = []
    for url in (f"/l/i/{test.invite_token}/", session_url, session_url + "state"):
        response = client.get(url)
        received.append(response.content.decode() + json.dumps(dict(response.headers)))
    state = client.get(session_url + "state").json()
    for trial in state["trials"]:
        assert trial["reference"] is None and [s["label"] for s in trial["stimuli"]] == ["A", "B"]
        assert all(set(s) == {"id", "url", "label"} for s in trial["stimuli"])
        a, b = trial["stimuli"]
        answer_ = 2 if kind == "cmos" else a["id"]
        rated = post_json(
            client,
            session_url + "rate",
            {"trial": trial["id"], "stimulus": b["id"], "score": answer_, "request_id": uuid.uuid4().hex},
        )
        received.append(rated.content.decode() + json.dumps(dict(rated.headers)))
        for s in trial["stimuli"]:
            response = client.get(s["url"])
            assert response.status_code == 200
            received.append(s["url"] + json.dumps(dict(response.headers)))
    received.append(client.get(session_url + "state").content.decode())
    forbidden = [
        *RUNS3,
        "77777",
        "g_00077777",
        "comparison",
        "baseline",
        "reference recording",
        "system",
        "checkpoint",
        "hidden_reference",
        "role",
        "/media/",
    ]
    forbidden += list(Generation.objects.values_list("asset__content_hash", flat=True))
    forbidden += [str(c.label) for c in Condition.objects.all()]
    blob = "\n".join(received).lower()
    assert [word for word in forbidden if word.lower() in blob] == []
    # The answer echoed back is the listener's own: A's token, never the stored +1/-1 encoding.
    assert all(
        list(t["ratings"].values()) in ([2.0], [t["stimuli"][0]["id"]])
        for t in client.get(session_url + "state").json()["trials"]
    )
    assert Participant.objects.get(test=test).ratings.count() == len(state["trials"])


def test_unknown_trials_and_sounds_stay_not_found_for_comparisons(world):
    test = build(world, "ab")
    a, b = services.participant_join(test=test), services.participant_join(test=test)
    mine, theirs = main_assignment(a), main_assignment(b)
    with pytest.raises(NotFoundError):
        services.rating_submit(
            participant=a, trial=mine.token, stimulus=handles(theirs)[1].token, score="none", request_id="x"
        )
    assert not Rating.objects.exists()
