"""One checkpoint walked through every stage with eager Celery: the order is the pipeline module's."""

import pytest
import torch
from django.db.models.signals import post_save

import models
from evalsite.jobs.models import Job
from evalsite.listening.models import ListeningTest
from evalsite.runs import generation as gen
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.models import Checkpoint, EvalSet
from evalsite.runs.services import checkpoint_register, run_create
from tests.factories import write_tone

pytestmark = pytest.mark.django_db


@pytest.fixture
def statuses():
    """Every status a checkpoint is saved with, in order, per step."""
    seen: dict[int, list[str]] = {}

    def record(sender, instance, update_fields=None, **kwargs):
        if update_fields and "status" in update_fields:
            seen.setdefault(instance.step, []).append(instance.status)

    post_save.connect(record, sender=Checkpoint, weak=False)
    yield seen
    post_save.disconnect(record, sender=Checkpoint)


@pytest.fixture
def run(tmp_path):
    gen.model_cache.clear()
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):
        write_tone(clips / f"utt{i}.wav", freq=200 + 50 * i, seconds=0.5, rate=22050, seed=i)
    eval_set = EvalSet.objects.get(pk=evalset_import(name="speech", source=clips).eval_set_id)
    run, _ = run_create(
        name="walk",
        kind="vocoder",
        model_family="hifigan",
        eval_set=eval_set,
        config={
            "metrics": ["si_sdr"],
            "auto_listening_test": {"every": 2, "kind": "smos", "votes_target": 2, "publish": False},
        },
    )
    return run


def register(run, tmp_path, step: int, django_capture_on_commit_callbacks) -> Checkpoint:
    torch.manual_seed(step)
    path = tmp_path / f"g_{step:08d}.pt"
    models.save_checkpoint(models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), path)
    with django_capture_on_commit_callbacks(execute=True):
        checkpoint, _ = checkpoint_register(run=run, step=step, uri=str(path))
    checkpoint.refresh_from_db()
    return checkpoint


def test_a_checkpoint_goes_through_generation_metrics_detectors_alerts_and_the_automatic_test_in_order(
    run, tmp_path, eager, statuses, django_capture_on_commit_callbacks
):
    first = register(run, tmp_path, 1000, django_capture_on_commit_callbacks)

    assert first.status == Checkpoint.Status.DONE
    assert statuses[1000] == ["generating", "scoring", "detecting", "done"]
    jobs = list(Job.objects.filter(checkpoint=first).order_by("created_at"))
    assert [(j.kind, j.status) for j in jobs] == [
        ("generation", "done"),
        ("metrics", "done"),
        ("detection", "done"),
    ]
    generation, metrics, detection = jobs
    assert generation.result["metrics_job_id"] == metrics.pk
    assert metrics.result["detection_job_id"] == detection.pk
    assert "alerts" in detection.result and "listening_test" not in detection.result  # no earlier checkpoint

    second = register(run, tmp_path, 2000, django_capture_on_commit_callbacks)

    assert statuses[2000] == ["generating", "scoring", "detecting", "done"]
    detection = Job.objects.get(checkpoint=second, kind="detection")
    test = ListeningTest.objects.get(pk=detection.result["listening_test"])
    assert test.name == "walk: step 2000 vs best step 1000 (smos)"


def test_a_run_without_detectors_finishes_after_its_metrics(
    run, tmp_path, eager, statuses, django_capture_on_commit_callbacks
):
    run.config = {**run.config, "detectors": []}
    run.save()
    checkpoint = register(run, tmp_path, 1000, django_capture_on_commit_callbacks)
    assert statuses[1000] == ["generating", "scoring", "done"]
    assert list(
        Job.objects.filter(checkpoint=checkpoint).values_list("kind", flat=True).order_by("created_at")
    ) == [
        "generation",
        "metrics",
    ]


def test_a_failing_stage_fails_the_checkpoint_and_queues_nothing_after_it(
    run, tmp_path, eager, statuses, django_capture_on_commit_callbacks
):
    run.config = {**run.config, "metrics": ["no-such-metric"]}
    run.save()
    checkpoint = register(run, tmp_path, 1000, django_capture_on_commit_callbacks)
    assert statuses[1000] == ["generating", "scoring", "failed"]
    metrics = Job.objects.get(checkpoint=checkpoint, kind="metrics")
    assert metrics.status == "failed" and "unknown metric 'no-such-metric'" in metrics.error
    assert not Job.objects.filter(checkpoint=checkpoint, kind="detection").exists()
