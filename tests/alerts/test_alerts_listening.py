"""Alert rules fed by listening tests: flags above the false-flag rate and score drops with disjoint CIs."""

import uuid

import numpy as np
import pytest

from evalsite.alerts.listening import alerts_evaluate_listening_all, alerts_evaluate_test
from evalsite.alerts.models import Alert
from evalsite.alerts.services import alert_rules_set
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


def listen(test, scores: dict[int, float], *, flag_steps=(), listeners=6):
    """Listeners rate each stimulus by its checkpoint's step and flag every stimulus of ``flag_steps``."""
    for _n in range(listeners):
        participant = services.participant_join(test=test)
        for trial in listener_state(participant)["trials"]:
            for stim in trial["stimuli"]:
                step = (
                    StimulusHandle.objects.select_related("stimulus__condition__checkpoint")
                    .get(token=stim["id"])
                    .stimulus.condition.checkpoint.step
                )
                score = scores[step]
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
    assert "assumed 5%" in flags.evidence["false_flag_source"]
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
