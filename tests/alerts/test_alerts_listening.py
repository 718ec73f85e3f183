"""Alert rules fed by listening tests: flags above the false-flag rate and score drops with disjoint CIs."""

import uuid

import numpy as np
import pytest
from django.core.cache import cache

from evalsite.alerts.listening import alerts_evaluate_listening_all, alerts_evaluate_test
from evalsite.alerts.models import Alert
from evalsite.alerts.services import alert_rules_set
from evalsite.analysis.models import AnalysisSnapshot
from evalsite.audio.decoding import decoded_from_array
from evalsite.audio.services import audio_asset_store
from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.runs.models import Checkpoint, Generation
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_steps():
    """One run with checkpoints at steps 1000 and 2000, each with an output per item."""
    world = listening_world(runs=("alpha",), n_items=4, step=1000)
    old = world["checkpoints"][0]
    new = Checkpoint.objects.create(run=old.run, step=2000, uri="/ckpt/alpha/g_00002000")
    for i, item in enumerate(world["items"]):
        audio = (0.2 * np.random.default_rng(5000 + i).standard_normal(22050)).astype(np.float32)
        asset, _ = audio_asset_store(decoded=decoded_from_array(audio, 22050))
        Generation.objects.create(checkpoint=new, item=item, params_hash="p", asset=asset)
    return old, new


def listen(test, scores: dict[int, float | list[float]], *, flag_steps=(), listeners=6):
    """Listeners rate each stimulus by its checkpoint's step (a list: listener n gives its n-th score, cyclically)
    and flag every stimulus of ``flag_steps``."""
    for n in range(listeners):
        participant = services.participant_join(test=test)
        for trial in listener_state(participant)["trials"]:
            for stim in trial["stimuli"]:
                step = (
                    StimulusHandle.objects.select_related("stimulus__condition__checkpoint")
                    .get(token=stim["id"])
                    .stimulus.condition.checkpoint.step
                )
                score = (
                    scores[step]
                    if not isinstance(scores[step], list)
                    else scores[step][n % len(scores[step])]
                )
                services.rating_submit(
                    participant=participant,
                    trial=trial["id"],
                    stimulus=stim["id"],
                    score=score,
                    request_id=uuid.uuid4().hex,
                )
                if step in flag_steps:
                    services.flag_submit(
                        participant=participant,
                        trial=trial["id"],
                        stimulus=stim["id"],
                        start=0.2,
                        end=0.4,
                        category="buzz",
                        note="",
                        request_id=uuid.uuid4().hex,
                    )
            services.trial_complete(participant=participant, trial=trial["id"])


def test_a_rated_drop_and_flagged_outputs_raise_alerts_on_the_new_checkpoint_once(two_steps):
    old, new = two_steps
    run = old.run
    alert_rules_set(
        run=run,
        rules=[
            {"kind": "listener_flags", "params": {"min_listeners": 3}},
            {"kind": "score_drop", "params": {"kinds": ["smos"]}, "severity": "critical"},
        ],
    )
    test = services.listening_test_publish(
        test=make_listening_test(
            name="smos-auto", kind="smos", checkpoints=[old, new], seed=3, training_items=0
        )
    )
    listen(test, {1000: 4, 2000: 2}, flag_steps=(2000,))
    created = {a.kind: a for a in alerts_evaluate_test(test=test)}
    assert set(created) == {"listener_flags", "score_drop"}
    drop = created["score_drop"]
    assert drop.checkpoint == new and drop.severity == "critical"
    assert drop.evidence["baseline_step"] == 1000 and drop.evidence["mean"] == pytest.approx(2)
    assert drop.evidence["ci"][1] < drop.evidence["baseline_ci"][0]
    flags = created["listener_flags"]
    assert flags.checkpoint == new and flags.evidence["share"] == 1.0 and flags.evidence["p"] < 0.05
    assert flags.evidence["regions"] and flags.evidence["regions"][0]["start_s"] == pytest.approx(
        0.2, abs=0.02
    )
    assert "assumed 0.05" in flags.evidence["false_flag_source"]
    assert alerts_evaluate_test(test=test) == []
    assert Alert.objects.filter(run=run).count() == 2


def test_equal_scores_and_unflagged_outputs_raise_nothing_and_the_beat_pass_skips_unchanged_tests(
    two_steps, django_assert_max_num_queries
):
    old, new = two_steps
    test = services.listening_test_publish(
        test=make_listening_test(
            name="smos-fine", kind="smos", checkpoints=[old, new], seed=4, training_items=0
        )
    )
    listen(test, {1000: 4, 2000: 4})
    assert alerts_evaluate_listening_all() == []
    with django_assert_max_num_queries(3):  # the fingerprint only: nothing changed since the last pass
        assert alerts_evaluate_listening_all() == []
    assert not Alert.objects.exists()


def test_the_alerts_state_the_numbers_the_results_page_shows_for_the_same_answers(two_steps, admin_client):
    old, new = two_steps
    alert_rules_set(
        run=old.run,
        rules=[
            {"kind": "listener_flags", "params": {"min_listeners": 3}},
            {"kind": "score_drop", "params": {"kinds": ["smos"]}},
        ],
    )
    test = services.listening_test_publish(
        test=make_listening_test(
            name="smos-same", kind="smos", checkpoints=[old, new], seed=5, training_items=0
        )
    )
    listen(test, {1000: [4, 5, 4], 2000: [2, 1, 2, 2]}, flag_steps=(2000,), listeners=8)
    page = admin_client.get(f"/analysis/tests/{test.pk}/")
    assert page.status_code == 200
    shown = page.context["r"]
    label = {c["checkpoint"]["id"]: c["label"] for c in shown["design"]["conditions"] if c["checkpoint"]}
    cache.clear()  # the alerts compute the results again rather than reuse the page's
    AnalysisSnapshot.objects.all().delete()

    created = {a.kind: a for a in alerts_evaluate_test(test=test)}

    assert set(created) == {"listener_flags", "score_drop"}
    scores = {row["system"]: row for row in shown["scores"]["kept"]}
    now, then = scores[label[new.pk]], scores[label[old.pk]]
    drop = created["score_drop"].evidence
    assert (drop["mean"], drop["ci"], drop["n"]) == (
        now["mean"],
        [now["boot_low"], now["boot_high"]],
        now["n"],
    )
    assert (drop["baseline_mean"], drop["baseline_ci"], drop["baseline_n"]) == (
        then["mean"],
        [then["boot_low"], then["boot_high"]],
        then["n"],
    )
    (row,) = [r for r in shown["flags"]["systems"] if r["system"] == label[new.pk]]
    flags = created["listener_flags"].evidence
    assert {
        k: flags[k] for k in ("flagged_presentations", "presentations", "flagging_listeners", "share", "p")
    } == {k: row[k] for k in ("flagged_presentations", "presentations", "flagging_listeners", "share", "p")}
    assert (flags["false_flag_rate"], flags["false_flag_source"]) == (
        shown["flags"]["baseline"]["rate"],
        shown["flags"]["baseline"]["source"],
    )
    regions = [r for r in shown["flags"]["regions"] if r["system"] == label[new.pk]]
    assert [(r["item"], r["start_s"], r["end_s"]) for r in flags["regions"]] == [
        (r["item"], round(r["start_s"], 3), round(r["end_s"], 3)) for r in regions[:5]
    ]
