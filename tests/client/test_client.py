"""evalsite_client against an in-thread HTTP double of the REST API that can inject faults.

The double (``FakeApi``) keeps runs, checkpoints (by step, as the server does) and alerts in memory,
records every request, and answers the next matching requests with injected faults: a dropped
connection (before or after acting), a status with headers, or a delay past the read timeout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evalsite_client import (
    ApiError,
    CheckpointReporter,
    ConflictError,
    EvaluationTimeout,
    ServiceError,
)
from tests.client.fake_api import REPO, Sleeps, closed_port_url, make_client
from tests.client.tiny_training import fit_tiny_model, lightning_warnings

CHECKPOINTS = r"/api/v1/runs/1/checkpoints/"


def test_registration_retried_through_two_503s_and_a_dropped_connection_registers_once(server, client):
    server.inject("POST", CHECKPOINTS, "status", "status", status=503)
    server.inject("POST", CHECKPOINTS, "drop_after")  # the server registers it, the answer is lost

    checkpoint = client.checkpoint_register(1, step=100, uri="/ckpt/step100.ckpt")

    assert [s.outcome for s in server.requests("POST", CHECKPOINTS)] == [503, 503, "dropped", 200]
    assert checkpoint["step"] == 100 and checkpoint["uri"] == "/ckpt/step100.ckpt"
    assert list(server.checkpoints) == [(1, 100)]


def test_a_read_timeout_is_retried(server):
    server.inject("GET", r"/api/v1/runs/1/", "slow", seconds=0.6)
    with make_client(server.url, timeout=(1.0, 0.2)) as client:
        assert client.run_get(1)["name"] == "voc-a"
    assert len(server.requests("GET", r"/api/v1/runs/1/")) == 2


def test_429_waits_as_long_as_retry_after_says(server):
    server.inject("POST", CHECKPOINTS, "status", status=429, headers={"Retry-After": "7"})
    sleeps = Sleeps()
    with make_client(server.url, sleep=sleeps) as client:
        client.checkpoint_register(1, step=1, uri="/ckpt/1.ckpt")
    assert sleeps == [7.0]
    assert [s.outcome for s in server.requests("POST", CHECKPOINTS)] == [429, 201]


def test_field_errors_raise_api_error_naming_field_and_reason_without_retry(server, client):
    with pytest.raises(ApiError) as info:
        client.run_create(name="voc-b", kind="bogus", model_family="vocos", eval_set="ljs-mini")

    assert info.value.status == 400
    assert info.value.fields == {"kind": ['"bogus" is not a valid choice.']}
    assert 'kind: "bogus" is not a valid choice.' in str(info.value)
    assert len(server.requests("POST", r"/api/v1/runs/")) == 1


def test_409_raises_conflict_error(server, client):
    client.checkpoint_register(1, step=5, uri="/ckpt/a.ckpt")
    with pytest.raises(ConflictError, match="already registered as /ckpt/a.ckpt"):
        client.checkpoint_register(1, step=5, uri="/ckpt/b.ckpt")
    with pytest.raises(ConflictError, match="already exists") as info:
        client.run_create(name="voc-a", kind="vocoder", model_family="vocos", eval_set="ljs-mini")
    assert info.value.status == 409


def test_run_create_returns_the_token_and_the_run_token_reaches_only_its_run(server, client):
    run = client.run_create(
        name="voc-b", kind="vocoder", model_family="vocos", eval_set="ljs-mini", config={"lr": 1}
    )
    assert run["token"] and run["config"] == {"lr": 1}
    assert [r["name"] for r in client.runs()] == ["voc-a", "voc-b"]
    with make_client(server.url, token=run["token"]) as own:
        assert own.run_get(run["id"])["name"] == "voc-b"
        with pytest.raises(ApiError) as info:
            own.run_get(1)
    assert info.value.status == 404


def test_500_is_retried_at_most_twice(server, client):
    server.inject(
        "GET",
        r"/api/v1/runs/1/",
        "status",
        "status",
        "status",
        "status",
        status=500,
        body={"message": "Server Error", "extra": {}},
    )
    with pytest.raises(ServiceError, match="answered 500: Server Error") as info:
        client.run_get(1)
    assert info.value.status == 500 and info.value.attempts == 3
    assert len(server.requests("GET", r"/api/v1/runs/1/")) == 3


def test_run_create_is_repeated_after_503_but_not_after_a_dropped_connection(server, client):
    server.inject("POST", r"/api/v1/runs/", "status", status=503)
    assert client.run_create(name="voc-b", kind="vocoder", model_family="vocos", eval_set="ljs-mini")["token"]
    server.inject("POST", r"/api/v1/runs/", "drop_after")
    with pytest.raises(ServiceError):
        client.run_create(name="voc-c", kind="vocoder", model_family="vocos", eval_set="ljs-mini")
    assert [s.outcome for s in server.requests("POST", r"/api/v1/runs/")] == [503, 201, "dropped"]


def test_an_unreachable_server_raises_service_error_after_max_retries():
    sleeps = Sleeps()
    with make_client(closed_port_url(), max_retries=3, sleep=sleeps) as client:
        with pytest.raises(ServiceError) as info:
            client.checkpoint_register(1, step=1, uri="/ckpt/1.ckpt")
    assert info.value.status is None and info.value.attempts == 4
    assert len(sleeps) == 3 and all(0 < s <= 0.004 for s in sleeps)


def test_run_create_is_repeated_when_the_connection_was_never_made():
    with make_client(closed_port_url(), max_retries=2, sleep=Sleeps()) as client:
        with pytest.raises(ServiceError) as info:
            client.run_create(name="voc-b", kind="vocoder", model_family="vocos", eval_set="ljs-mini")
    assert info.value.attempts == 3


def test_alerts_send_if_none_match_and_a_304_returns_nothing_and_the_same_cursor(server, client):
    server.add_alert(1, "mel L1 regressed")
    server.add_alert(1, "FAD regressed", severity="critical")
    alerts, cursor = client.alerts(1)
    assert [a["title"] for a in alerts] == ["mel L1 regressed", "FAD regressed"] and cursor == 2

    assert client.alerts(1, after=cursor) == ([], 2)
    assert client.alerts(1, after=cursor) == ([], 2)
    first, second = server.requests("GET", r"/api/v1/runs/1/alerts/")[-2:]
    assert "if-none-match" not in first.headers and first.outcome == 200
    assert second.headers["if-none-match"] == first.answer_headers["ETag"] and second.outcome == 304

    server.add_alert(1, "speaker similarity dropped")
    alerts, cursor = client.alerts(1, after=2)
    assert [a["title"] for a in alerts] == ["speaker similarity dropped"] and cursor == 3
    assert server.seen[-1].outcome == 200 and "if-none-match" in server.seen[-1].headers


def test_alerts_follow_backs_off_while_empty_and_resets_after_an_alert(server, client):
    stop = threading.Event()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 4:
            server.add_alert(1, "mel L1 regressed")
        if len(sleeps) == 6:
            stop.set()

    follow = client.alerts_follow(1, stop=stop, min_interval=0.01, max_interval=0.04, sleep=sleep)
    titles = [alert["title"] for alert in follow]

    assert titles == ["mel L1 regressed"]
    assert sleeps == [0.01, 0.02, 0.04, 0.04, 0.01, 0.02]


def test_checkpoint_wait_returns_the_final_checkpoint(server, client):
    client.checkpoint_register(1, step=10, uri="/ckpt/10.ckpt")
    assert [job["kind"] for job in client.checkpoint_evaluate(1, 10)] == ["generation"]

    final = client.checkpoint_wait(1, 10, timeout=10, poll_interval=0.001)

    assert final["status"] == "done" and final["metrics"] == {"mel_l1": 0.25}
    assert len(server.requests("GET", r"/api/v1/runs/1/checkpoints/10/")) == 4


def test_checkpoint_wait_raises_evaluation_timeout(server, client):
    client.checkpoint_register(1, step=10, uri="/ckpt/10.ckpt")
    with pytest.raises(EvaluationTimeout, match="still 'registered'") as info:
        client.checkpoint_wait(1, 10, timeout=0.05, poll_interval=0.01)
    assert info.value.checkpoint["step"] == 10


def test_compute_sha256_sends_the_hash_of_the_file(server, client, tmp_path):
    data = os.urandom(2 * (1 << 20) + 12345)  # spans three read chunks
    path = tmp_path / "step7.ckpt"
    path.write_bytes(data)

    client.checkpoint_register(1, step=7, uri=str(path), compute_sha256=True)

    assert server.requests("POST", CHECKPOINTS)[0].body == {
        "step": 7,
        "uri": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    with pytest.raises(ValueError, match="remote URI"):
        client.checkpoint_register(1, step=8, uri="s3://bucket/step8.ckpt", compute_sha256=True)


def test_importing_the_client_imports_no_django_celery_or_torch():
    check = (
        "import sys, evalsite_client; "
        "assert 'django' not in sys.modules and 'celery' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], cwd=REPO, check=True, timeout=60)


def test_the_callback_module_names_the_missing_package():
    code = (
        "import sys; sys.modules['lightning'] = sys.modules['pytorch_lightning'] = None\n"
        "try:\n    import evalsite_client.lightning\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "needs the `lightning` package" in out.stdout


def test_reporter_registers_steps_in_order_and_close_flushes(server, tmp_path):
    server.add_alert(1, "mel L1 regressed")
    server.inject("POST", CHECKPOINTS, "status", status=503)
    server.inject("POST", CHECKPOINTS, "slow", "slow", "slow", seconds=0.1)
    paths = []
    for step in (1, 2, 3):
        paths.append(tmp_path / f"{step}.pt")
        paths[-1].write_bytes(b"weights %d" % step)

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = CheckpointReporter(client, 1, alert_interval=0.01)
        started = time.monotonic()
        for step, path in zip((1, 2, 3), paths):
            reporter.checkpoint_saved(step, path)
        assert time.monotonic() - started < 0.25  # registering them takes > 0.3 s: the loop did not wait
        reporter.close(timeout=10)

    posted = [s.body["step"] for s in server.requests("POST", CHECKPOINTS)]
    assert posted == [1, 1, 2, 3]  # the 503 retried, then in order
    assert [server.checkpoints[(1, step)]["uri"] for step in (1, 2, 3)] == [str(p) for p in paths]
    assert [c["step"] for c in reporter.registered] == [1, 2, 3] and reporter.failed == []
    assert [a["title"] for a in reporter.new_alerts()] == ["mel L1 regressed"]
    assert reporter.new_alerts() == []


def test_reporter_gives_up_at_close_when_the_server_is_down(caplog):
    with make_client(closed_port_url(), max_retries=1) as client:
        reporter = CheckpointReporter(client, 1, alert_interval=None)
        reporter.checkpoint_saved(1, "/ckpt/1.pt")
        reporter.checkpoint_saved(2, "/ckpt/2.pt")
        reporter.close(timeout=10)
    assert [step for step, _, _ in reporter.failed] == [1, 2]
    assert "server unreachable at close; steps [1, 2] not registered" in caplog.text


# --- Lightning -------------------------------------------------------------------------------


@lightning_warnings
def test_lightning_callback_registers_each_saved_checkpoint_once_with_its_path_and_step(server, tmp_path):
    pytest.importorskip("lightning")
    from evalsite_client.lightning import EvalsiteCallback

    server.add_alert(1, "FAD regressed", severity="critical")
    with make_client(server.url, token=server.run["token"]) as client:
        callback = EvalsiteCallback(client, 1, alert_interval=0.01)
        trainer = fit_tiny_model(tmp_path, callback, save_last=True)

    assert trainer.global_step == 6
    posted = [s.body for s in server.requests("POST", CHECKPOINTS)]
    assert [p["step"] for p in posted] == [2, 4, 6]
    for body in posted:
        assert Path(body["uri"]).is_file() and body["uri"].endswith(f"step={body['step']}.ckpt")
    saved = {str(p) for p in (tmp_path / "ckpt").glob("*.ckpt") if p.name != "last.ckpt"}
    assert {p["uri"] for p in posted} == saved  # every file but the overwritten last.ckpt
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert [a["title"] for a in callback.alerts] == ["FAD regressed"]
    assert "save_checkpoint" not in vars(trainer)  # the Trainer is left as it was


@lightning_warnings
def test_lightning_training_finishes_when_the_server_is_down(tmp_path, caplog):
    pytest.importorskip("lightning")
    from evalsite_client.lightning import EvalsiteCallback

    caplog.set_level(logging.WARNING, logger="evalsite")
    with make_client(closed_port_url(), max_retries=1) as client:
        callback = EvalsiteCallback(client, 1, alert_interval=0.01, close_timeout=10)
        trainer = fit_tiny_model(tmp_path, callback)

    assert trainer.global_step == 6
    assert len(list((tmp_path / "ckpt").glob("*.ckpt"))) == 3
    assert [step for step, _, _ in callback.reporter.failed] == [2, 4, 6]
    assert "could not register step 2" in caplog.text


@lightning_warnings
def test_lightning_callback_every_n_steps_and_uri_for_choose_what_is_registered(server, tmp_path):
    pytest.importorskip("lightning")
    from evalsite_client.lightning import EvalsiteCallback

    with make_client(server.url, token=server.run["token"]) as client:
        callback = EvalsiteCallback(
            client,
            1,
            every_n_steps=4,
            uri_for=lambda path: "s3://bucket/" + Path(path).name,
            alert_interval=None,
        )
        fit_tiny_model(tmp_path, callback)

    [posted] = [s.body for s in server.requests("POST", CHECKPOINTS)]
    assert posted["step"] == 4 and re.fullmatch(r"s3://bucket/epoch=\d+-step=4\.ckpt", posted["uri"])
