"""Alert rules, the per-run cursor, exactly-once alerts and signed webhooks with retries."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evalsite.alerts.models import Alert, AlertRule, WebhookDelivery
from evalsite.alerts.services import (
    alert_create,
    alert_rules_set,
    alerts_evaluate_checkpoint,
    webhook_deliver,
)
from evalsite.alerts.webhooks import webhook_signature_verify
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Run
from evalsite.scoring.models import MetricResult
from tests.factories import (
    CheckpointFactory,
    DetectorEventFactory,
    DetectorPassFactory,
    GenerationFactory,
    MetricResultFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def run():
    return Run.objects.create(name="voc", kind="vocoder", model_family="hifigan")


def checkpoint_with(run, step, metrics=None, events=None, minutes=1.0):
    """A checkpoint with stored metric values ({name: (value, higher_is_better)}) and detector events."""
    ckpt = CheckpointFactory(run=run, step=step, uri=f"/c/{step}", status="done")
    for name, (value, higher) in (metrics or {}).items():
        MetricResultFactory(checkpoint=ckpt, name=name, value=value, higher_is_better=higher)
    eval_set, _ = EvalSet.objects.get_or_create(name="alerts-set")
    item, _ = EvalItem.objects.get_or_create(eval_set=eval_set, key="utt0")
    generation = GenerationFactory(checkpoint=ckpt, item=item, status="failed")
    DetectorPassFactory(generation=generation, duration_s=60.0 * minutes, events=sum((events or {}).values()))
    for name, n in (events or {}).items():
        for i in range(n):
            DetectorEventFactory(generation=generation, detector=name, start_s=i)
    return ckpt


def test_a_metric_worse_than_the_best_earlier_checkpoint_raises_one_alert_with_evidence(run):
    alert_rules_set(run=run, rules=[{"kind": "metric_regression", "params": {"relative": 0.1}}])
    checkpoint_with(run, 1000, {"mel": (0.50, False), "pesq": (3.0, True)})
    checkpoint_with(run, 2000, {"mel": (0.40, False), "pesq": (3.2, True)})  # the best so far
    third = checkpoint_with(
        run, 3000, {"mel": (0.46, False), "pesq": (3.1, True)}
    )  # mel 15 % worse, pesq 3 %
    alerts = alerts_evaluate_checkpoint(checkpoint=third)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.evidence["metric"] == "mel" and alert.evidence["baseline_step"] == 2000
    assert alert.evidence["relative_change"] == pytest.approx(0.15)
    assert "mel" in alert.title and "2000" in alert.title and alert.checkpoint == third
    assert alert.links[0]["url"].endswith("#step-3000")
    # Evaluating the same evidence again creates nothing.
    assert alerts_evaluate_checkpoint(checkpoint=third) == []
    assert Alert.objects.count() == 1


def test_against_previous_compares_with_the_last_checkpoint_and_values_computed_differently_are_not_compared(
    run,
):
    alert_rules_set(
        run=run, rules=[{"kind": "metric_regression", "params": {"against": "previous", "relative": 0.05}}]
    )
    checkpoint_with(run, 1000, {"pesq": (3.0, True)})
    checkpoint_with(run, 2000, {"pesq": (2.0, True)})
    third = checkpoint_with(run, 3000, {"pesq": (2.05, True)})  # worse than best, better than previous
    assert alerts_evaluate_checkpoint(checkpoint=third) == []
    fourth = checkpoint_with(run, 4000, {"pesq": (1.0, True)})
    MetricResult.objects.filter(checkpoint=fourth).update(spec_key="another-spec")
    assert alerts_evaluate_checkpoint(checkpoint=fourth) == []


def test_a_detector_rate_up_by_the_factor_raises_an_alert_and_any_nan_output_is_critical(run):
    alert_rules_set(
        run=run,
        rules=[
            {"kind": "detector_rate", "params": {"factor": 2.0, "min_per_minute": 2.0}},
            {"kind": "detector_any", "params": {"detectors": ["nan_or_silence"]}, "severity": "critical"},
        ],
    )
    checkpoint_with(run, 1000, events={"clicks": 2})
    calm = checkpoint_with(run, 2000, events={"clicks": 3})  # 1.5× — below the factor
    assert alerts_evaluate_checkpoint(checkpoint=calm) == []
    clicky = checkpoint_with(run, 3000, events={"clicks": 9, "nan_or_silence": 1})
    alerts = {a.kind: a for a in alerts_evaluate_checkpoint(checkpoint=clicky)}
    assert set(alerts) == {"detector_rate", "detector_any"}
    assert (
        alerts["detector_rate"].evidence["per_minute"] == 9
        and alerts["detector_rate"].evidence["previous_per_minute"] == 3
    )
    assert alerts["detector_rate"].evidence["examples"][0]["item"] == "utt0"
    assert alerts["detector_any"].severity == "critical" and alerts["detector_any"].evidence["events"] == 1


def test_disabled_rules_are_skipped_and_a_run_without_rules_gets_the_defaults(run):
    ckpt = checkpoint_with(run, 1000)
    alerts_evaluate_checkpoint(checkpoint=ckpt)
    assert AlertRule.objects.filter(run=run).count() == 5
    AlertRule.objects.filter(run=run).update(enabled=False)
    ckpt2 = checkpoint_with(run, 2000, events={"nan_or_silence": 4})
    assert alerts_evaluate_checkpoint(checkpoint=ckpt2) == []


def test_cursors_count_up_per_run_and_the_run_row_carries_the_newest(run):
    other = Run.objects.create(name="other", kind="vocoder", model_family="hifigan")
    cursors = [
        alert_create(run=run, dedupe_key=f"a{i}", kind="detector_any", severity="info", title="x")[0].cursor
        for i in range(4)
    ]
    assert cursors == [1, 2, 3, 4]
    assert (
        alert_create(run=other, dedupe_key="a0", kind="detector_any", severity="info", title="x")[0].cursor
        == 1
    )
    again, created = alert_create(run=run, dedupe_key="a2", kind="detector_any", severity="info", title="x")
    assert not created and again.cursor == 3
    run.refresh_from_db()
    assert run.alert_cursor == 4


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[tuple[bytes, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((body, dict(self.headers)))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver(settings):
    # A receiver on this machine is reachable only because the operator allows plain http and loopback.
    settings.EVALSITE_WEBHOOK_ALLOW_HTTP, settings.EVALSITE_WEBHOOK_ALLOWED_NETWORKS = True, ["127.0.0.0/8"]
    _Receiver.answers, _Receiver.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver
    server.shutdown()


def test_a_webhook_is_signed_retried_with_backoff_on_5xx_and_delivered_once(
    run, receiver, settings, django_capture_on_commit_callbacks
):
    settings.EVALSITE_WEBHOOK_BACKOFF_S = 5
    url, handler = receiver
    run.webhook_url, run.webhook_secret = url, "whsec_test"
    run.save()
    handler.answers = [503, 500]
    with django_capture_on_commit_callbacks(execute=False):
        alert, _ = alert_create(
            run=run, dedupe_key="k", kind="detector_any", severity="critical", title="NaN output"
        )
    delivery = WebhookDelivery.objects.get(alert=alert)
    assert webhook_deliver(delivery_id=delivery.pk) == ("retrying", 5)
    assert webhook_deliver(delivery_id=delivery.pk) == ("retrying", 10)
    assert webhook_deliver(delivery_id=delivery.pk) == ("delivered", None)
    assert webhook_deliver(delivery_id=delivery.pk) == ("delivered", None)  # a duplicate task sends nothing
    assert len(handler.received) == 3
    body, headers = handler.received[-1]
    assert webhook_signature_verify("whsec_test", body, headers["X-Evalsite-Signature"])
    assert not webhook_signature_verify("whsec_wrong", body, headers["X-Evalsite-Signature"])
    assert not webhook_signature_verify("whsec_test", body + b" ", headers["X-Evalsite-Signature"])
    assert headers["X-Evalsite-Delivery"] == str(delivery.pk)
    assert json.loads(body)["alert"]["title"] == "NaN output"
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 3 and delivery.last_status_code == 200


def test_a_webhook_answered_404_or_out_of_attempts_is_failed_with_the_reason(
    run, receiver, settings, django_capture_on_commit_callbacks
):
    settings.EVALSITE_WEBHOOK_MAX_ATTEMPTS = 2
    url, handler = receiver
    run.webhook_url, run.webhook_secret = url, "s"
    run.save()
    with django_capture_on_commit_callbacks(execute=False):
        gone, _ = alert_create(run=run, dedupe_key="a", kind="detector_any", severity="info", title="a")
        busy, _ = alert_create(run=run, dedupe_key="b", kind="detector_any", severity="info", title="b")
    handler.answers = [404]
    assert webhook_deliver(delivery_id=gone.deliveries.get().pk)[0] == "failed"
    handler.answers = [503, 503]
    delivery = busy.deliveries.get()
    assert webhook_deliver(delivery_id=delivery.pk)[0] == "retrying"
    assert webhook_deliver(delivery_id=delivery.pk)[0] == "failed"
    delivery.refresh_from_db()
    assert delivery.last_status_code == 503 and "503" in delivery.last_error
    # An unreachable receiver is retried, never raised into the caller.
    run.webhook_url = "http://127.0.0.1:9/nothing-listens"
    run.save()
    with django_capture_on_commit_callbacks(execute=False):
        lost, _ = alert_create(run=run, dedupe_key="c", kind="detector_any", severity="info", title="c")
    outcome, retry_in = webhook_deliver(delivery_id=lost.deliveries.get().pk)
    assert outcome == "retrying" and retry_in > 0
    assert "ConnectionError" in lost.deliveries.get().last_error


def test_the_run_page_shows_each_checkpoints_pipeline_stages_and_the_alerts(run, client, django_user_model):
    from evalsite.jobs.models import Job

    ckpt = checkpoint_with(run, 1000)
    Job.objects.create(kind="generation", run=run, checkpoint=ckpt, status="done")
    Job.objects.create(
        kind="metrics", run=run, checkpoint=ckpt, status="failed", error="every metric failed; first: x"
    )
    Checkpoint.objects.filter(pk=ckpt.pk).update(status="failed")
    alert_create(
        run=run,
        checkpoint=ckpt,
        dedupe_key="k",
        kind="detector_any",
        severity="critical",
        title="nan_or_silence: 3 events in the outputs of step 1000",
    )
    client.force_login(django_user_model.objects.create_user("r", password="x", is_superuser=True))
    html = client.get(f"/runs/{run.pk}/").content.decode()
    row = html[html.index('id="step-1000"') :]
    row = row[: row.index("</tr>")]
    assert row.count("status-done") == 1 and row.count("status-failed") == 2  # checkpoint + metrics stage
    assert "every metric failed" in row
    assert "nan_or_silence: 3 events" in html and "severity-critical" in html
