"""Jobs through a real Celery worker on Redis and on RabbitMQ (``[redis]``/``[amqp]``), with Django on PostgreSQL."""

import numpy as np
import pytest
import soundfile as sf

from evalsite.audio.models import AudioAsset
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_create
from evalsite.runs.models import EvalItem
from tests.integration.conftest import both_brokers, queue_depth, wait_for

pytestmark = pytest.mark.integration


def make_clips(folder, n: int, seconds: float = 1.0, rate: int = 22050):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(
            str(folder / f"clip_{i:04d}.wav"),
            (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32),
            rate,
            subtype="FLOAT",
        )
    return folder


def job_state(job_id):
    return Job.objects.get(pk=job_id)


@both_brokers
def test_an_import_job_is_done_by_a_real_worker_with_progress_recorded(start_worker, tmp_path, settings):
    start_worker()
    clips = make_clips(tmp_path / "clips", 8)
    (clips / "broken.wav").write_bytes(b"RIFF\x00\x00")
    job = job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": "it", "source": str(clips)})
    done = wait_for(
        lambda: (j := job_state(job.pk)).status in ("done", "failed") and j, timeout=120, message="job end"
    )
    assert done.status == "done", done.error
    assert done.progress == 1.0 and done.attempts == 1 and ":" in done.worker
    assert done.result["created"] == 8
    assert [e["reason"] for e in done.result["errors"]] == ["undecodable"]
    assert EvalItem.objects.filter(eval_set__name="it").count() == 8
    assert len(list((settings.MEDIA_ROOT / "audio").rglob("*.wav"))) == 8


@both_brokers
def test_a_task_delivered_twice_creates_no_duplicate_rows(start_worker, tmp_path):
    from evalsite.runs.tasks import evalset_import_task

    start_worker()
    clips = make_clips(tmp_path / "clips", 5)
    job = job_create(
        kind=Job.Kind.IMPORT_EVALSET, params={"name": "twice", "source": str(clips)}, enqueue=False
    )
    evalset_import_task.apply_async(args=[job.pk], queue="cpu")
    evalset_import_task.apply_async(args=[job.pk], queue="cpu")
    wait_for(lambda: job_state(job.pk).status == "done", timeout=120, message="job done")
    # Let the second delivery run (it finds the job ended) before counting.
    wait_for(lambda: job_state(job.pk).status == "done", timeout=5)
    import time

    time.sleep(3)
    final = job_state(job.pk)
    assert final.attempts == 1
    assert EvalItem.objects.count() == 5 and AudioAsset.objects.count() == 5


@both_brokers
def test_a_worker_killed_mid_task_has_its_task_redelivered_after_restart_and_the_result_exists_once(
    start_worker, broker, tmp_path, settings
):
    n = 400
    clips = make_clips(tmp_path / "clips", n, seconds=2.0)
    first = start_worker("first")
    job = job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": "killed", "source": str(clips)})

    wait_for(
        lambda: job_state(job.pk).progress >= 0.1, timeout=120, interval=0.05, message="import under way"
    )
    first.kill()
    at_kill = job_state(job.pk)
    imported_at_kill = EvalItem.objects.count()
    assert at_kill.status == "running" and 0 < imported_at_kill < n, (at_kill.status, imported_at_kill)
    if broker.startswith("amqp://"):
        # RabbitMQ requeues the unacknowledged message as soon as the killed worker's connection
        # closes (Redis waits for the visibility timeout), so it is waiting before a worker is back.
        wait_for(lambda: queue_depth(broker, "cpu") == 1, timeout=10, message="the message back in the queue")

    start_worker("second")
    final = wait_for(
        lambda: (j := job_state(job.pk)).status in ("done", "failed") and j,
        timeout=180,
        interval=0.5,
        message="redelivered job to end",
    )
    assert final.status == "done", final.error
    # Claimed by the second worker (a JobBusy retry while the dead attempt's heartbeat was fresh claims nothing).
    assert final.attempts == 2 and final.worker != at_kill.worker
    assert (
        final.result["unchanged"] >= imported_at_kill - 1
    )  # the item in flight at the kill may have rolled back
    assert final.result["created"] + final.result["unchanged"] == n
    assert EvalItem.objects.count() == n
    assert AudioAsset.objects.count() == n
    assert len(list((settings.MEDIA_ROOT / "audio").rglob("*.wav"))) == n
