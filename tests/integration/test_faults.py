"""Faults injected into the real services (issue #8): the broker dies with jobs queued and running,
a generation worker is SIGKILLed again and again, and PostgreSQL drops connections under a rating
burst from the listener page. Each test asserts that every piece of work ends exactly once and
counts the faults it injected, so it cannot pass without them having happened.

The broker tests use a private ``redis-server`` on a free port (the machine's Redis is shared).
"""

import logging
import re
import threading
import time

import numpy as np
import psycopg
import pytest
import soundfile as sf
import torch
from django.db import connection, connections

import models
from evalsite.audio.models import AudioAsset
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_create
from evalsite.listening.models import Participant, Rating, StimulusHandle
from evalsite.listening.services import listening_test_publish
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation
from evalsite.runs.services import checkpoint_register, run_create
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, wait_ready
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)  # each test logs what it injected and counted (--log-cli-level=INFO)


def make_clips(folder, n: int, *, seed: int, seconds: float = 1.0, rate: int = 22050):
    """``n`` clips of noise; every seed gives different audio, so no two jobs share an asset."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        sf.write(
            str(folder / f"clip_{i:04d}.wav"),
            (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32),
            rate,
            subtype="FLOAT",
        )
    return folder


def job(job_id) -> Job:
    return Job.objects.get(pk=job_id)


def all_ended(ids):
    jobs = list(Job.objects.filter(pk__in=ids))
    return jobs if all(j.status in ("done", "failed") for j in jobs) else None


def under_way(job_id, per_job: int) -> None:
    """Wait until the import has stored a tenth of its files (rows, not the throttled progress)."""
    name = job(job_id).params["name"]
    wait_for(
        lambda: EvalItem.objects.filter(eval_set__name=name).count() >= per_job // 10,
        timeout=120,
        interval=0.02,
        message=f"import {name} under way",
    )


def media_files(settings):
    return sorted(p for p in (settings.MEDIA_ROOT / "audio").rglob("*") if p.is_file())


def assert_each_import_ran_once(jobs, per_job: int, settings):
    """Done, claimed once, and the work of one pass: every file created, none found already there."""
    for j in jobs:
        assert (j.status, j.error) == ("done", "") and j.attempts == 1, (j.pk, j.status, j.attempts, j.error)
        assert (j.result["created"], j.result["unchanged"], j.result["errors"]) == (per_job, 0, []), (
            j.pk,
            j.result,
        )
        assert EvalItem.objects.filter(eval_set__name=j.params["name"]).count() == per_job
    assert AudioAsset.objects.count() == len(jobs) * per_job
    assert len(media_files(settings)) == len(jobs) * per_job


# ---------------------------------------------------------------------------------------------
# 1. The broker dies


def test_jobs_queued_and_running_when_redis_is_killed_each_end_done_once_after_it_comes_back(
    start_worker, private_redis, broker_at, tmp_path, settings
):
    """Redis as deployed (append-only file, fsync always): SIGKILLed with one import running and
    three queued, down for 3 s, restarted on the same port. No beat runs here, so nothing but the
    broker's own persistence brings the queued messages back."""
    redis_server = private_redis(persistent=True)
    broker_at(redis_server.url)
    worker = start_worker("w", env={"CELERY_BROKER_URL": redis_server.url})
    per_job = 150
    ids = [
        job_create(
            kind=Job.Kind.IMPORT_EVALSET,
            params={"name": f"set{n}", "source": str(make_clips(tmp_path / f"clips{n}", per_job, seed=n))},
        ).pk
        for n in range(4)
    ]

    under_way(ids[0], per_job)
    redis_server.kill()
    running, queued = job(ids[0]), [job(i).status for i in ids[1:]]
    assert running.status == "running" and running.progress < 1.0 and queued == ["queued"] * 3
    time.sleep(3)  # the outage itself, not a wait for anything
    redis_server.start()

    jobs = wait_for(lambda: all_ended(ids), timeout=150, interval=0.5, message="every job to end")
    assert_each_import_ran_once(jobs, per_job, settings)
    assert worker.proc.poll() is None, "the worker died instead of reconnecting"
    assert "Connection to broker lost" in worker.log_path.read_text(errors="replace")
    logger.info(
        "redis_persistent: %s",
        {"jobs": len(ids), "redis_kills": redis_server.kills, "attempts": [j.attempts for j in jobs]},
    )


def test_jobs_whose_messages_a_redis_restart_lost_are_sent_again_from_their_rows(
    start_worker, private_redis, broker_at, tmp_path, settings
):
    """Redis without persistence loses every message when it dies; one more job is created while
    it is down (its message is never sent). The rows in PostgreSQL are the truth: the beat sweep
    sends the queued ones again and each still runs exactly once."""
    redis_server = private_redis(persistent=False)
    broker_at(redis_server.url)
    worker = start_worker(
        "w",
        beat=True,
        env={
            "CELERY_BROKER_URL": redis_server.url,
            "EVALSITE_JOB_SWEEP_INTERVAL_S": "1",
            "EVALSITE_JOB_REDISPATCH_AFTER_S": "3",
        },
    )
    per_job = 150
    sources = [make_clips(tmp_path / f"clips{n}", per_job, seed=100 + n) for n in range(4)]
    ids = [
        job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": f"lost{n}", "source": str(sources[n])}).pk
        for n in range(3)
    ]

    under_way(ids[0], per_job)
    redis_server.kill()
    assert job(ids[0]).status == "running" and [job(i).status for i in ids[1:]] == ["queued"] * 2
    # Created while the broker is down: the row commits, the caller is not failed, no message exists.
    ids.append(
        job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": "lost3", "source": str(sources[3])}).pk
    )
    assert job(ids[3]).status == "queued"
    time.sleep(3)
    redis_server.start()

    jobs = wait_for(lambda: all_ended(ids), timeout=150, interval=0.5, message="every job to end")
    assert_each_import_ran_once(jobs, per_job, settings)
    assert worker.proc.poll() is None, "the worker died instead of reconnecting"
    resent = {
        int(i)
        for found in re.findall(r"whose message was lost: \[([\d, ]+)\]", worker.log_path.read_text())
        for i in found.split(",")
    }
    assert resent == set(ids[1:]), "the sweep sent other jobs than the three that had lost their message"
    logger.info(
        "redis_volatile: %s",
        {
            "jobs": len(ids),
            "redis_kills": redis_server.kills,
            "resent_by_sweep": sorted(resent),
            "attempts": [j.attempts for j in jobs],
        },
    )


# ---------------------------------------------------------------------------------------------
# 2. A generation worker killed again and again


def test_a_generation_job_whose_worker_is_killed_three_times_completes_with_every_output_once(
    start_worker, tmp_path, settings
):
    n_items = 40
    clips = tmp_path / "clips"
    make_clips(clips, n_items, seed=7, seconds=1.5)
    eval_set = EvalSet.objects.get(pk=evalset_import(name="speech", source=clips).eval_set_id)
    run, _ = run_create(
        name="hifigan-killed",
        kind="vocoder",
        model_family="hifigan",
        eval_set=eval_set,
        config={"metrics": []},
    )
    torch.manual_seed(0)
    weights = models.save_checkpoint(
        models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), tmp_path / "g_00001000.pt"
    )

    # Redis's visibility timeout as deployed (an hour): the killed worker's message does not come
    # back during the test, so only the beat sweep in the restarted worker can resume the job.
    env = {"CELERY_VISIBILITY_TIMEOUT": "3600", "EVALSITE_JOB_SWEEP_INTERVAL_S": "1"}
    worker = start_worker("gen", beat=True, env=env)
    # One item per batch: an item's output is the same whichever attempt makes it.
    ckpt, _ = checkpoint_register(run=run, step=1000, uri=str(weights), params={"batch_size": 1})
    job_id = Job.objects.get(checkpoint=ckpt, kind="generation").pk
    kills, stored = [], 0

    def outputs():
        return Generation.objects.filter(checkpoint=ckpt).count()

    for attempt in (1, 2, 3):
        # Each kill comes once this attempt has claimed the job and stored a few more outputs.
        wait_for(
            lambda: job(job_id).attempts == attempt and outputs() >= stored + 3,
            timeout=180,
            interval=0.02,
            message=f"attempt {attempt} under way",
        )
        worker.kill()
        at_kill, stored = job(job_id), outputs()
        assert at_kill.status == "running" and at_kill.attempts == attempt, (at_kill.status, at_kill.error)
        kills.append({"progress": round(at_kill.progress, 3), "stored": stored})
        worker = start_worker(f"gen{attempt}", beat=True, env=env)

    final = wait_for(
        lambda: all_ended([job_id]), timeout=180, interval=0.5, message="the generation job to end"
    )[0]
    assert final.status == "done", final.error
    # One attempt per worker it ran on; each killed one had moved the job forward, so none counts
    # against EVALSITE_JOB_MAX_ATTEMPTS (3).
    assert final.attempts == 4
    assert 0 < kills[0]["stored"] < kills[1]["stored"] < kills[2]["stored"] < n_items, kills
    assert 0 < final.result["skipped_already_done"] < n_items and final.result["done"] == n_items
    gens = list(Generation.objects.filter(checkpoint=ckpt).select_related("asset", "item__reference"))
    assert len(gens) == n_items and {g.item.key for g in gens} == {f"clip_{i:04d}" for i in range(n_items)}
    assert all(g.status == "done" and g.asset.frames == g.item.reference.frames for g in gens)
    # No asset or file without its row: references + one output each, nothing from a killed attempt.
    assert AudioAsset.objects.count() == 2 * n_items
    on_disk = {p.relative_to(settings.MEDIA_ROOT).as_posix() for p in media_files(settings)}
    assert on_disk == {a.file.name for a in AudioAsset.objects.all()}
    for g in gens:
        data, rate = sf.read(settings.MEDIA_ROOT / g.asset.file.name)
        assert rate == 22050 and len(data) == g.asset.frames
    assert Checkpoint.objects.get(pk=ckpt.pk).status == "done"
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-gen*.log"))
    assert logs.count(f"running job(s) whose worker stopped answering: [{job_id}]") >= 3
    logger.info(
        "worker_kills: %s",
        {
            "items": n_items,
            "worker_kills": len(kills),
            "kills": kills,
            "attempts": final.attempts,
            "skipped": final.result["skipped_already_done"],
        },
    )


# ---------------------------------------------------------------------------------------------
# 3. PostgreSQL drops connections during a rating burst


class BackendTerminator(threading.Thread):
    """Terminates every other backend of the test database, over and over, from its own connection."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        db = connection.settings_dict
        self.dsn = dict(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"])
        self.halt = threading.Event()
        self.terminated = 0

    def run(self) -> None:
        with psycopg.connect(**self.dsn, autocommit=True) as conn:
            while not self.halt.is_set():
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
                self.terminated += sum(1 for (ok,) in rows if ok)
                self.halt.wait(0.1)

    def stop(self) -> int:
        self.halt.set()
        self.join(timeout=10)
        return self.terminated


# One round of the burst: select each signal and move its slider, as a listener does, without
# waiting for any save (the page's outbox sends, retries and supersedes on its own).
RATE_ROUND_JS = """async ({labels, values}) => {
  for (let i = 0; i < labels.length; i++) {
    document.querySelector(`[data-testid=stim-${labels[i]}]`).click();
    const slider = document.querySelector(`[data-testid=slider-${labels[i]}]`);
    for (let n = 0; slider.disabled && n < 400; n++) await new Promise((r) => setTimeout(r, 5));
    slider.value = String(values[i]);
    slider.dispatchEvent(new Event("input", {bubbles: true}));
    slider.dispatchEvent(new Event("change", {bubbles: true}));
  }
}"""


def test_a_rating_burst_while_postgresql_drops_connections_stores_every_rating_once_with_its_last_value(
    live_server,
    transactional_db,
    browser,
    settings,
    tmp_path,  # noqa: F811
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=2)
    test = listening_test_publish(
        test=make_listening_test(
            name="faults-burst", kind="mushra", checkpoints=world["checkpoints"], training_items=0, seed=5
        )
    )
    page = new_page(browser, [])
    sent, answered = [], []  # (request_id, stimulus, score) per request; (request_id, status) per answer

    def on_request(request):
        if request.method == "POST" and request.url.endswith("/rate"):
            body = request.post_data_json
            sent.append((body["request_id"], body["stimulus"], body["score"]))

    def on_response(response):
        if response.request.method == "POST" and response.url.endswith("/rate"):
            retry_after = response.headers.get("retry-after")
            answered.append((response.request.post_data_json["request_id"], response.status, retry_after))

    page.on("request", on_request)
    page.on("response", on_response)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    page.click("[data-testid=consent-agree]")
    wait_ready(page)
    labels = [el.get_attribute("data-testid")[5:] for el in page.query_selector_all("[data-testid^=stim-]")]
    assert len(labels) == 5
    participant = Participant.objects.get(test=test)

    def failed():
        return [a for a in answered if a[1] >= 500]

    def resent():
        ids = [s[0] for s in sent]
        return len(ids) - len(set(ids))

    given: dict[str, int] = {}
    rounds, deadline = 0, time.monotonic() + 60
    terminator = BackendTerminator()
    terminator.start()
    try:
        # Two quick passes over the signals per round (the second supersedes the first while it is
        # in flight), then a pause past the client's first retry (1 s, the 503's Retry-After). Until
        # the fault has shown: requests refused with 503 and at least one resent with its own id.
        while rounds < 8 or len(failed()) < 5 or resent() < 2:
            assert time.monotonic() < deadline, f"no fault seen: {len(failed())} failed, {resent()} resent"
            for _ in range(2):
                values = [(13 * rounds + 7 * i + 5) % 101 for i in range(len(labels))]
                page.evaluate(RATE_ROUND_JS, {"labels": labels, "values": values})
                given.update(zip(labels, values))
                rounds += 1
            page.wait_for_timeout(1500)  # playwright delivers the request and response events meanwhile
    finally:
        terminated = terminator.stop()
        connections.close_all()  # this thread's connection was terminated too
    page.wait_for_selector("[data-testid=save-status][data-state=saved]", timeout=90000)
    page.wait_for_timeout(200)

    handles = {
        (h.assignment_id, h.stimulus_id): h
        for h in StimulusHandle.objects.filter(assignment__participant=participant)
    }
    by_label, token_of = {}, {}
    for rating in Rating.objects.filter(participant=participant):
        handle = handles[(rating.assignment_id, rating.stimulus_id)]
        label = "ABCDEFGHIJKL"[handle.position]
        by_label.setdefault(label, []).append(rating)
        token_of[label] = handle.token
    assert sorted(by_label) == sorted(labels), "a signal's rating is missing"
    ok_ids = {rid for rid, status, _ in answered if status == 200}
    for label, ratings in by_label.items():
        assert len(ratings) == 1, f"{label} stored {len(ratings)} times"
        rating = ratings[0]
        mine = [s for s in sent if s[1] == token_of[label]]
        ids_sent = list(dict.fromkeys(rid for rid, _, _ in mine))
        last_id, _, last_score = mine[-1]
        assert (rating.score, rating.request_id) == (float(given[label]), last_id) and last_score == given[
            label
        ]
        # Every request the server answered 200 is remembered once, in the order the client sent them.
        assert len(rating.history) == len(set(rating.history)), rating.history
        assert set(rating.history) <= set(ids_sent) and (ok_ids & set(ids_sent)) <= set(rating.history)
        assert rating.history == [rid for rid in ids_sent if rid in set(rating.history)]
    answers_503 = [a for a in failed() if a[1] == 503]
    assert answers_503 == failed() and all(retry_after == "1" for _, _, retry_after in answers_503)
    assert terminated >= len(answers_503) > 0
    logger.info(
        "rating_burst: %s",
        {
            "ratings_given": rounds * len(labels),
            "requests_sent": len(sent),
            "requests_resent": resent(),
            "answered_503": len(answers_503),
            "answered_200": len(ok_ids),
            "pg_backends_terminated": terminated,
            "request_ids_in_history": sum(len(r.history) for rs in by_label.values() for r in rs),
            "stored": sum(map(len, by_label.values())),
            "lost": len(set(labels) - set(by_label)),
            "doubled": sum(len(r) - 1 for r in by_label.values()),
        },
    )
