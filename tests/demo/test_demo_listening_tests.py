"""The demo's listening tests: built with the quality controls on, from items that pass the design checks."""

import numpy as np
import pytest

from evalsite.audio.decoding import decoded_from_array
from evalsite.audio.services import audio_asset_store
from evalsite.demo.management.commands.demo import DEMO_TESTS, demo_test_designs
from evalsite.demo.speech import DEMO_SENTENCES, DEMO_SPEAKERS, synthesize
from evalsite.listening import services
from evalsite.listening.models import Condition
from evalsite.listening.selectors import listening_test_progress
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run

pytestmark = pytest.mark.django_db

N_ITEMS = 8  # the demo has 24; 8 of its sentences and voices keep the build quick


@pytest.fixture
def demo_world():
    """The demo's eSpeak items and three vocoder checkpoints whose outputs are the speech with a little
    noise (a stand-in for the trained tiny HiFi-GAN, which needs the worker)."""
    eval_set = EvalSet.objects.create(name="demo-espeak-speech")
    run = Run.objects.create(
        name="demo-hifigan-tiny", kind="vocoder", model_family="hifigan", eval_set=eval_set
    )
    checkpoints = [Checkpoint.objects.create(run=run, step=s, uri=f"/ckpt/{s}") for s in (120, 240, 360)]
    rng = np.random.default_rng(0)
    for i in range(N_ITEMS):
        voice = DEMO_SPEAKERS[i % len(DEMO_SPEAKERS)]
        speech, rate = synthesize(DEMO_SENTENCES[i], voice=voice)
        reference, _ = audio_asset_store(decoded=decoded_from_array(speech, rate))
        item = EvalItem.objects.create(
            eval_set=eval_set, key=f"item_{i:03d}", reference=reference, speaker=voice
        )
        for n, checkpoint in enumerate(checkpoints):
            noisy = speech + (0.02 / (n + 1)) * rng.standard_normal(len(speech)).astype(np.float32)
            output, _ = audio_asset_store(decoded=decoded_from_array(noisy.astype(np.float32), rate))
            Generation.objects.create(checkpoint=checkpoint, item=item, params_hash="p", asset=output)
    return checkpoints


def test_the_demo_tests_have_every_quality_control_on_and_no_design_warning(demo_world):
    designs = demo_test_designs(demo_world)
    assert [d.name for d in designs] == [name for name, _, _ in DEMO_TESTS]
    for design in designs:
        assert design.headphone_check and design.require_play_all
        assert design.gold_items >= 1 and design.trapping_items >= 1

        # Published without a confirmation: the design checks pass (the 7 kHz anchor among them).
        test = services.listening_test_create(design=design, publish=True)

        assert test.status == "published" and test.design_warnings == []
        assert not any("anchor" in w for w in test.build_warnings)
        counts = listening_test_progress(test)["trial_counts"]
        per_item = 1 if design.kind == "mushra" else 3
        assert counts == {
            "main": per_item * (N_ITEMS - 1),
            "training": per_item,
            "control": 4,
            "total": per_item * N_ITEMS + 4,
        }
        training = set(test.trials.filter(is_training=True).values_list("item_id", flat=True))
        assert not test.trials.exclude(control="").filter(item_id__in=training).exists()


def test_two_demo_smos_listeners_each_rate_every_checkpoint_twice(demo_world):
    smos = next(d for d in demo_test_designs(demo_world) if d.kind == "smos")
    test = services.listening_test_create(design=smos, publish=True)
    systems = dict(Condition.objects.filter(test=test, role="system").values_list("pk", "label"))
    for _ in range(2):
        participant = services.participant_join(test=test)
        main = participant.assignments.filter(trial__is_training=False, trial__control="")
        labels = [systems[s.condition_id] for a in main for s in a.trial.stimuli.all()]
        assert sorted(labels.count(label) for label in systems.values()) == [2, 2, 2]
        # plus one gold and one trapping trial, and the training trials
        assert participant.assignments.exclude(trial__control="").count() == 2
