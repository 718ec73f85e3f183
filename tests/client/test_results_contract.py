"""The client reads results from what the real server writes, not only from the fake's idea of it.

A MOS test rated and closed through the listening services, and a scored checkpoint, are serialized
by the server's own code; the client's parsers must find the scores and metrics in that JSON.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.core.cache import cache

from evalsite.analysis.results import listening_test_results
from evalsite.api.runs import CheckpointOutputSerializer
from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.scoring.models import MetricResult
from evalsite_client.results import clean_metrics, human_scores
from tests.factories import listening_world

pytestmark = pytest.mark.django_db

SCORES = {0: 4, 1: 2}  # by the index of the checkpoint in the world


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


def rate_everything(participant, score_of_checkpoint: dict[int, int]) -> None:
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            stimulus = (
                StimulusHandle.objects.select_related("stimulus__condition").get(token=stim["id"]).stimulus
            )
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score_of_checkpoint[stimulus.condition.checkpoint_id],
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def test_human_scores_are_found_in_the_servers_results_of_a_closed_test():
    world = listening_world(n_items=2)
    first, second = world["checkpoints"]
    test = services.listening_test_build(name="MOS contract", kind="mos", checkpoints=[first, second], seed=3)
    test = services.listening_test_publish(test=test)
    for k in range(3):
        participant = services.participant_join(test=test, external_id=f"worker-{k}")
        rate_everything(participant, {first.pk: SCORES[0], second.pk: SCORES[1]})

    published = json.loads(json.dumps(listening_test_results(test, n_boot=50), default=str))
    assert human_scores(published, run_id=first.run_id, steps={first.step}) == ("MOS contract", {})

    test = services.listening_test_close(test=test)
    cache.clear()
    closed = json.loads(json.dumps(listening_test_results(test, n_boot=50), default=str))
    assert human_scores(closed, run_id=first.run_id, steps={first.step}) == (
        "MOS contract",
        {first.step: 4.0},
    )
    assert human_scores(closed, run_id=str(second.run_id), steps={second.step}) == (
        "MOS contract",
        {second.step: 2.0},
    )
    assert human_scores(closed, run_id=first.run_id, steps={first.step + 1}) == ("MOS contract", {})


def test_metrics_are_found_in_the_servers_checkpoint_answer():
    checkpoint = listening_world(n_items=1, runs=("only-run",))["checkpoints"][0]
    for name, value in (("pesq", 3.25), ("mel_l1", 0.5)):
        MetricResult.objects.create(
            checkpoint=checkpoint,
            params_hash="p",
            name=name,
            status="done",
            value=value,
            higher_is_better=name == "pesq",
            spec_key="k",
        )

    answer = json.loads(json.dumps(CheckpointOutputSerializer(checkpoint).data, default=str))

    assert answer["status"] in ("registered", "done")
    assert clean_metrics(answer["metrics"], step=checkpoint.step) == {"pesq": 3.25, "mel_l1": 0.5}
