"""The pipeline's optional automatic listening test: every N-th finished checkpoint against the best earlier one."""

import numpy as np
import pytest

from evalsite.audio.decoding import decoded_from_array
from evalsite.audio.services import audio_asset_store
from evalsite.core.exceptions import ApplicationError
from evalsite.listening.models import Condition, ListeningTest
from evalsite.pipeline.auto_test import auto_listening_test_maybe, auto_test_config
from evalsite.runs.models import Checkpoint, EvalItem, Generation
from evalsite.scoring.models import MetricResult
from tests.factories import band_limit_references, listening_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def run_with_three_steps():
    world = listening_world(runs=("auto",), n_items=3, step=1000)
    first = world["checkpoints"][0]
    run = first.run
    checkpoints = [first]
    for step in (2000, 3000):
        ckpt = Checkpoint.objects.create(run=run, step=step, uri=f"/ckpt/auto/{step}")
        for i, item in enumerate(world["items"]):
            audio = (0.2 * np.random.default_rng(step + i).standard_normal(22050)).astype(np.float32)
            asset, _ = audio_asset_store(decoded=decoded_from_array(audio, 22050))
            Generation.objects.create(checkpoint=ckpt, item=item, params_hash="p", asset=asset)
        checkpoints.append(ckpt)
    # mel distance (lower is better): step 2000 is the best of the first two.
    for ckpt, value in zip(checkpoints, (0.9, 0.5, 0.7)):
        MetricResult.objects.create(
            checkpoint=ckpt,
            params_hash="p",
            name="mel",
            status="done",
            value=value,
            higher_is_better=False,
            n=3,
            spec_key="s",
        )
    run.config = {"auto_listening_test": {"every": 3, "kind": "smos", "votes_target": 4}}
    run.save()
    return checkpoints


def test_every_nth_finished_checkpoint_gets_a_published_test_against_the_best_earlier_one(
    run_with_three_steps,
):
    first, second, third = run_with_three_steps
    for ckpt in (first, second):
        Checkpoint.objects.filter(pk=ckpt.pk).update(status="done")
        assert auto_listening_test_maybe(checkpoint=Checkpoint.objects.get(pk=ckpt.pk)) is None
    Checkpoint.objects.filter(pk=third.pk).update(status="done")
    test = auto_listening_test_maybe(checkpoint=Checkpoint.objects.get(pk=third.pk))
    assert test.status == ListeningTest.Status.PUBLISHED and test.kind == "smos" and test.votes_target == 4
    rated = set(Condition.objects.filter(test=test, role="system").values_list("checkpoint__step", flat=True))
    assert rated == {2000, 3000}
    # Idempotent: the same checkpoint again finds the same test.
    assert auto_listening_test_maybe(checkpoint=Checkpoint.objects.get(pk=third.pk)) == test
    assert ListeningTest.objects.count() == 1


def test_a_bad_automatic_test_config_is_an_error_naming_the_setting(run_with_three_steps):
    run = run_with_three_steps[0].run
    run.config = {"auto_listening_test": {"every": 0}}
    with pytest.raises(ApplicationError, match="auto_listening_test.every"):
        auto_test_config(run)
    run.config = {"auto_listening_test": {"every": 2, "kind": "karaoke"}}
    with pytest.raises(ApplicationError, match="auto_listening_test.kind"):
        auto_test_config(run)


def test_an_automatic_test_with_design_warnings_waits_as_a_draft_for_a_researcher(
    run_with_three_steps, caplog
):
    first, second, third = run_with_three_steps
    band_limit_references({"items": list(EvalItem.objects.filter(eval_set=third.run.eval_set))}, {"utt1"})
    for ckpt in (first, second, third):
        Checkpoint.objects.filter(pk=ckpt.pk).update(status="done")
    test = auto_listening_test_maybe(checkpoint=Checkpoint.objects.get(pk=third.pk))
    assert test.status == ListeningTest.Status.DRAFT
    assert [w["kind"] for w in test.design_warnings] == ["reference_band_limited"]
    assert "left as a draft: reference band-limited on 1 item(s)" in caplog.text
