"""The client reads results from what the real server writes, not only from the fake's idea of it.

A MOS test rated and closed through the listening services, and a scored checkpoint, are served by
the real API (pytest-django's live server); the reporter must find the scores and metrics there.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache

from evalsite.analysis.snapshots import listening_test_results
from evalsite.api.services import researcher_token_issue
from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.scoring.models import MetricResult
from evalsite_client import CheckpointReporter, EvalsiteClient
from evalsite_client.results import human_scores
from tests.factories import listening_world, make_listening_test

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
    test = make_listening_test(name="MOS contract", kind="mos", checkpoints=[first, second], seed=3)
    test = services.listening_test_publish(test=test)
    for k in range(3):
        participant = services.participant_join(test=test, external_id=f"worker-{k}")
        rate_everything(participant, {first.pk: SCORES[0], second.pk: SCORES[1]})

    published = json.loads(json.dumps(listening_test_results(test, n_boot=50), default=str))
    assert human_scores(published, run_id=first.run_id, steps={first.step}) == ("MOS contract", None)

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


def test_the_reporter_reports_metrics_and_human_scores_from_the_real_api(live_server, transactional_db):
    user = get_user_model().objects.create_user("ada", password="x")
    world = listening_world(n_items=2)
    first, second = world["checkpoints"]
    run = first.run
    run.owner = user
    run.save()
    second.run.owner = user
    second.run.save()
    for name, value in (("pesq", 3.25), ("mel_l1", 0.5)):
        MetricResult.objects.create(
            checkpoint=first,
            params_hash="p",
            name=name,
            status="done",
            value=value,
            higher_is_better=name == "pesq",
            spec_key="k",
        )
    first.status = "done"
    first.save()
    test = make_listening_test(name="MOS live", kind="mos", checkpoints=[first, second], seed=3)
    test = services.listening_test_publish(test=test)
    participant = services.participant_join(test=test, external_id="worker-0")
    rate_everything(participant, {first.pk: 5, second.pk: 1})
    services.listening_test_close(test=test)
    got: list = []

    with EvalsiteClient(live_server.url, researcher_token_issue(user=user), max_retries=0) as client:
        reporter = CheckpointReporter(
            client,
            run.pk,
            alert_interval=None,
            results_interval=0.05,
            listening_tests=[test.pk],
            on_results=lambda step, results: got.append((step, results)),
        )
        reporter.checkpoint_saved(first.step, first.uri)  # already evaluated: answered with its state
        reporter.close(timeout=30, results_wait=20)

    assert reporter.failed == [] and [step for step, _ in got] == [first.step]
    assert got[0][1].scalars() == {
        "evalsite/pesq": 3.25,
        "evalsite/mel_l1": 0.5,
        "evalsite/human/MOS live": 5.0,
    }
