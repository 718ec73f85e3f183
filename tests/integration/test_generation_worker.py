"""Generation jobs through a real worker process (on Redis and on RabbitMQ, PostgreSQL)."""

import pytest
import torch

import models
from evalsite.jobs.models import Job
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.models import Checkpoint, EvalSet, Generation
from evalsite.runs.services import checkpoint_register, run_create
from evalsite.scoring.models import MetricResult
from tests.factories import write_tone
from tests.integration.conftest import both_brokers, wait_for

pytestmark = pytest.mark.integration


def ended(job_id):
    job = Job.objects.get(pk=job_id)
    return job if job.status in ("done", "failed") else None


@both_brokers
def test_a_checkpoint_goes_through_generation_and_metrics_on_a_real_worker_after_a_bad_one_failed(
    start_worker, tmp_path
):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(6):
        write_tone(clips / f"u{i}.wav", freq=150 + 40 * i, seconds=0.4 + 0.05 * i, rate=22050, seed=i)
    eval_set = EvalSet.objects.get(pk=evalset_import(name="speech", source=clips).eval_set_id)
    run, _ = run_create(
        name="hifigan-tiny",
        kind="vocoder",
        model_family="hifigan",
        eval_set=eval_set,
        config={"metrics": ["mrstft/auraloss-default", "si_sdr", "fad/vggish-16k"]},
    )
    torch.manual_seed(0)
    good = models.save_checkpoint(
        models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), tmp_path / "g_00002000.pt"
    )
    corrupt = tmp_path / "g_00001000.pt"
    corrupt.write_bytes(open(good, "rb").read()[:1000])

    start_worker("gpu")
    bad_ckpt, _ = checkpoint_register(run=run, step=1000, uri=str(corrupt))
    bad_job = wait_for(
        lambda: ended(Job.objects.get(checkpoint=bad_ckpt, kind="generation").pk),
        timeout=180,
        interval=0.5,
        message="corrupt checkpoint job to end",
    )
    assert bad_job.status == "failed" and "g_00001000.pt" in bad_job.error

    good_ckpt, _ = checkpoint_register(run=run, step=2000, uri=str(good))
    job = wait_for(
        lambda: ended(Job.objects.get(checkpoint=good_ckpt, kind="generation").pk),
        timeout=180,
        interval=0.5,
        message="generation job to end",
    )
    assert job.status == "done", job.error
    gens = Generation.objects.filter(checkpoint=good_ckpt, status="done").select_related(
        "asset", "item__reference"
    )
    assert sorted(g.item.key for g in gens) == [f"u{i}" for i in range(6)]
    assert all(g.asset.frames == g.item.reference.frames and g.asset.sample_rate == 22050 for g in gens)
    metrics_job = wait_for(
        lambda: ended(job.result["metrics_job_id"]), timeout=180, interval=0.5, message="metrics job to end"
    )
    assert metrics_job.status == "done", metrics_job.error
    results = {r.name: r for r in MetricResult.objects.filter(checkpoint=good_ckpt)}
    assert results["mrstft/auraloss-default"].status == "done" and len(results["si_sdr"].per_item) == 6
    # No VGGish weights in the worker's model store: stored as failed with the file to put there.
    assert results["fad/vggish-16k"].status == "failed" and "vggish" in results["fad/vggish-16k"].error
    # Then the detectors, which end the pipeline.
    wait_for(
        lambda: Checkpoint.objects.get(pk=good_ckpt.pk).status == "done",
        timeout=120,
        interval=0.5,
        message="the detection stage to finish the checkpoint",
    )
    assert Checkpoint.objects.get(pk=bad_ckpt.pk).status == "failed"
