"""A training job's whole loop on the real services: a checkpoint file appears in a watched directory,
the worker's beat registers it, generation → metrics → detectors run on the worker, the alert rule
fires, and the Python client (over HTTP, against the live server) receives the alert while a signed
webhook reaches the run's receiver."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from django.contrib.auth import get_user_model

import models
from evalsite.alerts.webhooks import webhook_signature_verify
from evalsite.api.services import researcher_token_issue
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.models import Checkpoint, EvalSet
from evalsite.scoring.models import DetectorEvent, MetricResult
from evalsite_client import ApiError, EvalsiteClient
from tests.factories import write_tone
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((body, dict(self.headers)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", _Hook
    server.shutdown()


def _vocoder(path, *, silent: bool):
    torch.manual_seed(0)
    model = models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny"))
    if silent:  # a collapsed generator: the output layer's gain and bias are zero, so it outputs silence
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("head.conv_post.") and not name.endswith("original1"):
                    p.zero_()
    tmp = path.with_suffix(".tmp")
    models.save_checkpoint(model, tmp)
    tmp.rename(path)


def test_a_watched_checkpoint_is_evaluated_and_its_alert_reaches_the_client_and_the_webhook(
    live_server, start_worker, worker_env, tmp_path, hook
):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):
        write_tone(clips / f"u{i}.wav", freq=150 + 40 * i, seconds=0.5, rate=22050, seed=i)
    EvalSet.objects.get(pk=evalset_import(name="speech", source=clips).eval_set_id)
    user = get_user_model().objects.create_user("lab", password="x")
    researcher = EvalsiteClient(live_server.url, researcher_token_issue(user=user), backoff=0.05)
    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    with pytest.raises(ApiError) as info:
        researcher.run_create(name="tiny", kind="vocoder", model_family="hifigan", eval_set="nope")
    assert "eval_set" in info.value.fields
    run = researcher.run_create(
        name="tiny",
        kind="vocoder",
        model_family="hifigan",
        eval_set="speech",
        config={"metrics": ["mrstft/auraloss-default", "si_sdr"]},
        checkpoint_dir=str(ckpt_dir),
    )
    trainer = EvalsiteClient(live_server.url, run["token"], backoff=0.05)
    researcher_only = EvalsiteClient(live_server.url, run["token"])
    with pytest.raises(ApiError):
        researcher_only.run_create(name="x", kind="vocoder", model_family="hifigan", eval_set="speech")
    from evalsite.runs.models import Run

    Run.objects.filter(pk=run["id"]).update(webhook_url=hook[0], webhook_secret="whsec_it")

    # The worker runs beat too: the watcher scans every second.
    worker_env.update({"EVALSITE_WATCH_INTERVAL_S": "1", "EVALSITE_WATCH_SETTLE_S": "1"})
    # The receiver is this machine's loopback over plain http: refused unless the operator allows both.
    worker_env.update(
        {"EVALSITE_WEBHOOK_ALLOW_HTTP": "1", "EVALSITE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}
    )
    start_worker("beat-and-work", beat=True)
    _vocoder(ckpt_dir / "checkpoint_step_100.pth", silent=False)
    _vocoder(ckpt_dir / "checkpoint_step_200.pth", silent=True)
    (ckpt_dir / "checkpoint_step_300.pth.part").write_bytes(b"still being written")

    done = wait_for(
        lambda: Checkpoint.objects.filter(run_id=run["id"], status__in=["done", "failed"]).count() == 2,
        timeout=300,
        interval=1.0,
        message="both watched checkpoints to finish the pipeline",
    )
    assert done
    assert sorted(Checkpoint.objects.filter(run_id=run["id"]).values_list("step", flat=True)) == [100, 200]
    final = trainer.checkpoint_wait(run["id"], 200, timeout=30, poll_interval=0.5)
    assert final["status"] == "done", (final["error"], final["jobs"])
    assert set(final["metrics"]) == {"mrstft/auraloss-default", "si_sdr"}
    assert final["detector_events"].get("nan_or_silence", 0) >= 1
    assert [j["kind"] for j in final["jobs"]] == ["generation", "metrics", "detection"]
    assert MetricResult.objects.filter(checkpoint__step=100, status="done").count() == 2
    # SI-SDR of silence is undefined: stored as failed with its reason; the other metric completed.
    silent = {m.name: m for m in MetricResult.objects.filter(checkpoint__step=200)}
    assert silent["mrstft/auraloss-default"].status == "done" and silent["si_sdr"].error
    assert DetectorEvent.objects.filter(checkpoint__step=200, detector="nan_or_silence").exists()

    alerts, cursor = trainer.alerts(run["id"])
    critical = [a for a in alerts if a["rule"] == "detector_any"]
    assert critical and critical[0]["severity"] == "critical" and critical[0]["checkpoint_step"] == 200
    assert critical[0]["evidence"]["detector"] == "nan_or_silence"
    # Polling again with nothing new is answered 304 and returns nothing.
    assert trainer.alerts(run["id"], after=cursor) == ([], cursor)
    assert trainer.alerts(run["id"], after=cursor) == ([], cursor)

    wait_for(lambda: hook[1].received, timeout=60, interval=0.5, message="the webhook POST")
    body, headers = hook[1].received[0]
    assert webhook_signature_verify("whsec_it", body, headers["X-Evalsite-Signature"])
    assert json.loads(body)["alert"]["run"] == run["id"]
