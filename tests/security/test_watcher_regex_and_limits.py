"""Issue 14 finding 3: regex DoS and unbounded tasks.

As run: a run token set checkpoint_pattern to ``^(?P<step>(.*)*)*X$`` and the watcher spent over 60 s
on one 25-character file name; a FIFO as a checkpoint uri blocked a worker; no Celery task had a time
limit, and beat queued another scan every 10 s whether or not the last one had finished.
Now run patterns run on RE2 (linear time; what RE2 cannot run is refused with a 400 naming the field),
paths that are not regular files are refused without blocking, every task has soft and hard time
limits (a job stopped by one fails with the reason), and a scan never overlaps another.
"""

import os
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from evalsite.celery import app
from evalsite.jobs.models import Job
from evalsite.jobs.services import JOB_TIME_LIMIT
from evalsite.runs import tasks
from evalsite.runs.checkpoint_files import CHECKPOINT_PATH_REFUSED
from evalsite.runs.locks import exclusive
from evalsite.runs.models import Checkpoint, WatchedFile
from evalsite.runs.services import checkpoint_register, run_create
from evalsite.runs.tasks import checkpoints_watch_task, generation_run_task
from evalsite.runs.watcher import WATCH_LOCK, checkpoints_watch, compile_pattern, step_from_name
from tests.factories import EvalSetFactory
from tests.security.conftest import at_most

pytestmark = pytest.mark.django_db

EVIL = r"^(?P<step>(.*)*)*X$"


@pytest.fixture
def run_and_client(tmp_path, settings):
    settings.EVALSITE_CHECKPOINT_ROOTS = (str(tmp_path),)
    settings.EVALSITE_WATCH_SETTLE_S = 0
    owner = get_user_model().objects.create_user("alice", password="x")
    run, token = run_create(
        name="r",
        kind="vocoder",
        model_family="hifigan",
        eval_set=EvalSetFactory(),
        owner=owner,
        checkpoint_dir=str(tmp_path),
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return run, client


def _settled(path, data=b"weights"):
    path.write_bytes(data)
    old = time.time() - 60
    os.utime(path, (old, old))


def test_the_evil_pattern_runs_in_linear_time_on_the_names_that_took_a_minute(run_and_client, tmp_path):
    run, client = run_and_client
    started = time.perf_counter()
    response = client.patch(f"/api/v1/runs/{run.pk}/", {"checkpoint_pattern": EVIL}, format="json")
    # RE2 has no catastrophic patterns, so this one is harmless rather than refused.
    assert response.status_code == 200, response.json()
    for name in ("a" * 25, "a" * 255, "g_" + "0" * 250):
        _settled(tmp_path / name)
    run.refresh_from_db()
    with at_most(10):
        assert checkpoints_watch(run=run) == [] and checkpoints_watch(run=run) == []
        assert step_from_name("a" * 25, compile_pattern(EVIL)) is None
    assert time.perf_counter() - started < 5
    assert not Checkpoint.objects.exists()


@pytest.mark.parametrize(
    "pattern, reason",
    [
        (r"^(?P<step>(.*)*)\2X$", "invalid escape sequence"),  # backreference
        (r"^(?=(?P<step>\d+))\d+\.pt$", "invalid perl operator"),  # lookahead
        (r"(?<!x)(?P<step>\d+)", "invalid perl operator"),  # lookbehind
        (r"(?P<step>\d+", "missing )"),
    ],
)
def test_what_re2_cannot_run_is_refused_with_a_400_naming_the_field_and_the_reason(
    run_and_client, pattern, reason
):
    run, client = run_and_client
    response = client.patch(f"/api/v1/runs/{run.pk}/", {"checkpoint_pattern": pattern}, format="json")
    assert response.status_code == 400
    [message] = response.json()["extra"]["fields"]["checkpoint_pattern"]
    assert "checkpoint_pattern" in message and reason in message and "RE2" in message
    run.refresh_from_db()
    assert run.checkpoint_pattern == ""


def test_a_pattern_without_the_step_group_is_refused(run_and_client):
    run, client = run_and_client
    response = client.patch(f"/api/v1/runs/{run.pk}/", {"checkpoint_pattern": r"model-(\d+)"}, format="json")
    assert (
        response.status_code == 400
        and "(?P<step>" in response.json()["extra"]["fields"]["checkpoint_pattern"][0]
    )


def test_a_valid_pattern_on_re2_finds_the_step_as_before(run_and_client, tmp_path):
    run, client = run_and_client
    assert (
        client.patch(
            f"/api/v1/runs/{run.pk}/",
            {"checkpoint_pattern": r"^model-(?P<step>\d+)k\.safetensors$"},
            format="json",
        ).status_code
        == 200
    )
    _settled(tmp_path / "model-12k.safetensors")
    _settled(tmp_path / "g_00001000")
    run.refresh_from_db()
    checkpoints_watch(run=run)
    [registered] = checkpoints_watch(run=run)
    assert Checkpoint.objects.get(pk=registered).step == 12


def test_a_fifo_as_uri_is_refused_at_once_at_registration_and_on_the_worker(run_and_client, tmp_path):
    run, client = run_and_client
    fifo = tmp_path / "g_00001000.pt"
    os.mkfifo(fifo)
    with at_most(10):
        response = client.post(
            f"/api/v1/runs/{run.pk}/checkpoints/", {"step": 1000, "uri": str(fifo)}, format="json"
        )
    assert response.status_code == 400 and response.json()["message"] == CHECKPOINT_PATH_REFUSED
    assert not Checkpoint.objects.exists()

    # Registered as a file, turned into a FIFO before the worker reads it.
    fifo.unlink()
    fifo.write_bytes(b"weights")
    checkpoint, _ = checkpoint_register(run=run, step=1000, uri=str(fifo), evaluate=False)
    fifo.unlink()
    os.mkfifo(fifo)
    job = Job.objects.create(kind=Job.Kind.GENERATION, run=run, checkpoint=checkpoint)
    with at_most(20):
        generation_run_task.apply(args=[job.pk])
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", CHECKPOINT_PATH_REFUSED)


def test_every_registered_task_has_soft_and_hard_time_limits_from_the_settings(settings):
    app.loader.import_default_modules()
    tasks = dict(app.tasks)
    ours = {name for name in tasks if name.startswith("evalsite.")}
    assert ours and ours <= set(settings.EVALSITE_TASK_LIMIT_KINDS), "give every evalsite task a limit kind"
    for name, task in tasks.items():
        kind = settings.EVALSITE_TASK_LIMIT_KINDS.get(name, "periodic")
        soft = settings.EVALSITE_TASK_TIME_LIMITS[kind]
        assert (task.soft_time_limit, task.time_limit) == (
            soft,
            soft + settings.EVALSITE_TASK_HARD_LIMIT_GRACE_S,
        ), name
    limits = settings.EVALSITE_TASK_TIME_LIMITS
    assert limits["watch"] < limits["periodic"] < limits["metrics"] <= limits["generation"]
    assert limits["webhook"] < limits["metrics"]
    # A scan waiting longer than one interval is dropped rather than piling up behind a slow one.
    watch = settings.CELERY_BEAT_SCHEDULE["checkpoints-watch"]
    assert watch["options"]["expires"] == watch["schedule"]


def test_a_job_stopped_by_its_soft_time_limit_fails_with_the_reason_instead_of_staying_running(
    run_and_client, monkeypatch, tmp_path
):
    run, _ = run_and_client
    _settled(tmp_path / "g.pt")
    checkpoint, _ = checkpoint_register(run=run, step=1, uri=str(tmp_path / "g.pt"), evaluate=False)
    job = Job.objects.create(kind=Job.Kind.GENERATION, run=run, checkpoint=checkpoint)

    def slow(job, progress):
        raise SoftTimeLimitExceeded()  # what Celery raises in the task at its soft limit

    monkeypatch.setattr(tasks, "generation_job_work", slow)
    generation_run_task.apply(args=[job.pk])

    job.refresh_from_db()
    assert job.status == "failed" and job.finished_at is not None
    assert job.error == JOB_TIME_LIMIT.format(
        limit=f"{generation_run_task.soft_time_limit:.0f} s", setting="EVALSITE_TASK_TIME_LIMIT_GENERATION_S"
    )


def test_a_scan_started_while_another_runs_returns_at_once_without_scanning(run_and_client, tmp_path):
    _settled(tmp_path / "g_00001000")
    with exclusive(WATCH_LOCK) as held:
        assert held
        started = time.perf_counter()
        assert checkpoints_watch_task.apply().get() == {}
        assert time.perf_counter() - started < 1
        assert not WatchedFile.objects.exists()
        with exclusive(WATCH_LOCK) as again:  # a second taker, as another worker process would be
            assert not again
    checkpoints_watch_task.apply()
    assert WatchedFile.objects.count() == 1
