"""The malformed-input corpus through one real worker process (Redis broker, PostgreSQL).

The worker imports a folder of 12 bad and 3 good audio files, then tries 7 bad checkpoints and a
good one. It must come out alive, in the same process that took the first job, with every bad
input failed by name and every good one done.
"""

import os
from pathlib import Path

import pytest
import torch

import models
from evalsite.audio.models import AudioAsset
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_create
from evalsite.runs.models import Checkpoint, EvalSet, Generation
from evalsite.runs.services import checkpoint_register, run_create
from evalsite.scoring.models import MetricResult
from tests.integration.conftest import wait_for
from tests.malformed import (
    BAD_AUDIO,
    BAD_CHECKPOINTS,
    write_bad_audio,
    write_bad_checkpoints,
    write_good_audio,
)

pytestmark = pytest.mark.integration

METRICS = ["si_sdr", "mrstft/auraloss-default"]


def ended(job_id: int) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.status in (Job.Status.DONE, Job.Status.FAILED) else None


def test_a_real_worker_survives_the_malformed_corpus_and_processes_the_good_inputs_beside_it(
    start_worker, tmp_path, settings
):
    folder = tmp_path / "corpus"
    bad_audio = write_bad_audio(folder)
    write_good_audio(folder, n=3)
    torch.manual_seed(0)
    good = models.save_checkpoint(
        models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), tmp_path / "ckpt" / "good.pt"
    )
    marker = tmp_path / "code-ran"
    bad_checkpoints = write_bad_checkpoints(tmp_path / "ckpt", good, marker=marker)
    worker = start_worker("malformed")

    imported = job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": "corpus", "source": str(folder)})
    imported = wait_for(lambda: ended(imported.pk), timeout=60, interval=0.2, message="the import job to end")
    assert imported.status == Job.Status.DONE, imported.error
    errors = {Path(e["where"]).name: e for e in imported.result["errors"]}
    assert set(errors) == {bad.name for bad in BAD_AUDIO}
    for bad in BAD_AUDIO:
        message = errors[bad.name]["message"]
        assert errors[bad.name]["reason"] == bad.reason, message
        assert message.startswith(f"{bad_audio[bad.name]}: ") and bad.says in message, message
    eval_set = EvalSet.objects.get(pk=imported.result["eval_set_id"])
    assert sorted(eval_set.items.values_list("key", flat=True)) == ["good0", "good1", "good2"]

    run, _ = run_create(
        name="hifigan-tiny",
        kind="vocoder",
        model_family="hifigan",
        eval_set=eval_set,
        config={"metrics": METRICS},
    )
    bad = {
        name: checkpoint_register(run=run, step=step, uri=str(path))[0]
        for step, (name, path) in enumerate(bad_checkpoints.items(), start=1)
    }
    good_ckpt, _ = checkpoint_register(run=run, step=100, uri=str(good))
    for entry in BAD_CHECKPOINTS:
        job_id = Job.objects.get(checkpoint=bad[entry.name], kind=Job.Kind.GENERATION).pk
        job = wait_for(
            lambda: ended(job_id), timeout=60, interval=0.2, message=f"the job of {entry.name} to end"
        )
        assert job.status == Job.Status.FAILED, f"{entry.name} was accepted"
        assert job.error.startswith(f"cannot load checkpoint {bad_checkpoints[entry.name]}: "), job.error
        assert entry.says in job.error, job.error
        assert Checkpoint.objects.get(pk=bad[entry.name].pk).status == Checkpoint.Status.FAILED
    wait_for(
        lambda: Checkpoint.objects.get(pk=good_ckpt.pk).status in ("done", "failed"),
        timeout=90,
        interval=0.3,
        message="the good checkpoint through generation, metrics and detection",
    )

    assert Checkpoint.objects.get(pk=good_ckpt.pk).status == Checkpoint.Status.DONE
    outputs = Generation.objects.filter(checkpoint=good_ckpt, status="done")
    assert sorted(outputs.values_list("item__key", flat=True)) == ["good0", "good1", "good2"]
    assert {
        r.name: (r.status, len(r.per_item)) for r in MetricResult.objects.filter(checkpoint=good_ckpt)
    } == {name: ("done", 3) for name in METRICS}
    # Nothing of the bad inputs remains: three references and three outputs, in rows and on disk.
    assert not Generation.objects.filter(checkpoint__in=bad.values()).exists()
    assert not MetricResult.objects.filter(checkpoint__in=bad.values()).exists()
    media = Path(settings.MEDIA_ROOT)
    assert AudioAsset.objects.count() == 6 and len([p for p in media.rglob("*") if p.is_file()]) == 6
    assert not marker.exists(), "unpickling a checkpoint ran its code"

    # No worker died: every job ran once, in one and the same pool process, which is still alive.
    jobs = Job.objects.all()
    assert {job.attempts for job in jobs} == {1}
    (executor,) = {job.worker for job in jobs}
    os.kill(int(executor.rsplit(":", 1)[1]), 0)
    assert worker.proc.poll() is None
    log = worker.log_path.read_text(errors="replace")
    assert "WorkerLostError" not in log and "exited with signal" not in log
