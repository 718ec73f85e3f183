"""evalsite_client against an in-thread HTTP double of the REST API that can inject faults.

The double (``FakeApi``) keeps runs, checkpoints (by step, as the server does) and alerts in memory,
records every request, and answers the next matching requests with injected faults: a dropped
connection (before or after acting), a status with headers, or a delay past the read timeout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from evalsite_client import (
    ApiError,
    CheckpointReporter,
    ConflictError,
    EvalsiteClient,
    EvaluationTimeout,
    ServiceError,
)

REPO = Path(__file__).resolve().parents[2]
RESEARCHER = "researcher-token"
KINDS = ("vocoder", "tokenizer", "generator")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    outcome: int | str = "pending"
    answer_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    method: str
    pattern: str
    kind: str  # "drop" (before acting), "drop_after" (act, then drop), "status", "slow"
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 0.0


class FakeApi:
    """The server contract in memory; ``inject`` queues faults, ``seen`` records every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self.runs: dict[int, dict[str, Any]] = {}
        self.tokens: dict[str, int] = {}
        self.checkpoints: dict[tuple[int, int], dict[str, Any]] = {}
        self.alerts: dict[int, list[dict[str, Any]]] = {}
        self.progress: dict[tuple[int, int], list[str]] = {}

    def inject(self, method: str, pattern: str, *kinds: str, **options: Any) -> None:
        with self.lock:
            self.faults.extend(Fault(method, pattern, kind, **options) for kind in kinds)

    def add_run(self, name: str = "voc-a") -> dict[str, Any]:
        run_id = len(self.runs) + 1
        run = {
            "id": run_id,
            "name": name,
            "kind": "vocoder",
            "model_family": "vocos",
            "eval_set": "ljs-mini",
            "config": {},
            "checkpoint_dir": "",
            "checkpoint_pattern": "",
            "created_at": "2025-01-01T00:00:00Z",
        }
        self.runs[run_id] = run
        self.tokens[f"run-token-{run_id}"] = run_id
        self.alerts[run_id] = []
        return {**run, "token": f"run-token-{run_id}"}

    def add_alert(self, run_id: int, title: str, severity: str = "warning", step: int = 2) -> dict[str, Any]:
        cursor = sum(len(a) for a in self.alerts.values()) + 1
        alert = {
            "cursor": cursor,
            "id": cursor,
            "rule": "metric_regressed",
            "severity": severity,
            "checkpoint_step": step,
            "title": title,
            "evidence": {"metric": "mel_l1"},
            "links": [{"label": "checkpoint", "url": f"/runs/{run_id}/checkpoints/{step}/"}],
            "created_at": "2025-01-01T00:00:00Z",
        }
        self.alerts[run_id].append(alert)
        return alert

    def requests(self, method: str, pattern: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and re.fullmatch(pattern, s.path)]

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for i, fault in enumerate(self.faults):
                if fault.method == method and re.fullmatch(fault.pattern, path):
                    return self.faults.pop(i)
        return None

    # --- the contract -------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any):
        """(status, payload, extra headers) for one request."""
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token != RESEARCHER and token not in self.tokens:
            return 401, {"message": "Invalid token.", "extra": {}}, {}
        m = re.fullmatch(r"/api/v1/runs/(?:(\d+)/(?:(checkpoints|alerts)/(?:(\d+)/(evaluate/)?)?)?)?", path)
        if not m:
            return 404, {"message": "Not found.", "extra": {}}, {}
        run_id, sub, step, evaluate = m.groups()
        if run_id is None:
            if token != RESEARCHER:
                return 403, {"message": "A researcher token is needed.", "extra": {}}, {}
            if method == "GET":
                return 200, {"results": list(self.runs.values())}, {}
            return self.run_create(body)
        run_id = int(run_id)
        if run_id not in self.runs or (token != RESEARCHER and self.tokens[token] != run_id):
            return 404, {"message": "Not found.", "extra": {}}, {}
        if sub is None:
            return 200, self.runs[run_id], {}
        if sub == "alerts":
            return self.alerts_page(run_id, query, headers)
        if step is None:
            if method == "GET":
                found = [c for (r, _), c in sorted(self.checkpoints.items()) if r == run_id]
                return 200, {"results": found}, {}
            return self.checkpoint_register(run_id, body)
        key = (run_id, int(step))
        if key not in self.checkpoints:
            return 404, {"message": "Not found.", "extra": {}}, {}
        checkpoint = self.checkpoints[key]
        if evaluate:
            self.progress.setdefault(key, ["generating", "scoring", "detecting", "done"])
            return (
                202,
                {"jobs": [{"id": 1, "kind": "generation", "status": "queued", "error": "", "progress": 0}]},
                {},
            )
        if self.progress.get(key):
            checkpoint["status"] = self.progress[key].pop(0)
            if checkpoint["status"] == "done":
                checkpoint["metrics"] = {"mel_l1": 0.25}
        return 200, checkpoint, {}

    def run_create(self, body: dict[str, Any]):
        if body.get("kind") not in KINDS:
            reason = f'"{body.get("kind")}" is not a valid choice.'
            return 400, {"message": "Invalid input.", "extra": {"fields": {"kind": [reason]}}}, {}
        if any(run["name"] == body["name"] for run in self.runs.values()):
            return 409, {"message": f"a run named {body['name']!r} already exists", "extra": {}}, {}
        created = self.add_run(body["name"])
        self.runs[created["id"]].update({k: v for k, v in body.items() if k != "name"})
        return 201, {**self.runs[created["id"]], "token": created["token"]}, {}

    def checkpoint_register(self, run_id: int, body: dict[str, Any]):
        step, uri, sha256 = body.get("step"), body.get("uri"), body.get("sha256") or ""
        if not isinstance(step, int) or step < 0 or not uri:
            fields = {"step": ["Ensure this value is >= 0."]} if not isinstance(step, int) or step < 0 else {}
            fields.update({} if uri else {"uri": ["This field may not be blank."]})
            return 400, {"message": "Invalid input.", "extra": {"fields": fields}}, {}
        existing = self.checkpoints.get((run_id, step))
        if existing is not None:
            if existing["uri"] != uri or (sha256 and existing["sha256"] and existing["sha256"] != sha256):
                return (
                    409,
                    {"message": f"step {step} is already registered as {existing['uri']}", "extra": {}},
                    {},
                )
            return 200, existing, {}
        checkpoint = {
            "id": len(self.checkpoints) + 1,
            "step": step,
            "uri": uri,
            "sha256": sha256,
            "status": "registered",
            "error": "",
            "jobs": [],
            "metrics": {},
            "created_at": "2025-01-01T00:00:00Z",
        }
        self.checkpoints[(run_id, step)] = checkpoint
        return 201, checkpoint, {}

    def alerts_page(self, run_id: int, query: dict[str, str], headers: dict[str, str]):
        after, limit = int(query.get("after", 0)), int(query.get("limit", 100))
        results = [a for a in self.alerts[run_id] if a["cursor"] > after][:limit]
        cursor = results[-1]["cursor"] if results else after
        etag = '"{}"'.format(
            hashlib.sha1(json.dumps([after, limit, [a["id"] for a in results]]).encode()).hexdigest()
        )
        if headers.get("if-none-match") == etag:
            return 304, None, {"ETag": etag}
        return 200, {"results": results, "cursor": cursor}, {"ETag": etag}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def dispatch(self, method: str) -> None:
        api = self.server.api
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        seen = Seen(
            method,
            parts.path,
            {k: v[-1] for k, v in parse_qs(parts.query).items()},
            {k.lower(): v for k, v in self.headers.items()},
            json.loads(raw) if raw else None,
        )
        with api.lock:
            api.seen.append(seen)
        fault = api.take_fault(method, parts.path)
        if fault is not None and fault.kind == "drop":
            seen.outcome, self.close_connection = "dropped", True
            return
        if fault is not None and fault.kind == "status":
            body = fault.body if fault.body is not None else {"message": "unavailable", "extra": {}}
            seen.outcome = fault.status
            self.answer(fault.status, body, fault.headers)
            return
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        with api.lock:
            status, payload, headers = api.handle(method, parts.path, seen.query, seen.headers, seen.body)
        if fault is not None and fault.kind == "drop_after":
            seen.outcome, self.close_connection = "dropped", True
            return
        seen.outcome, seen.answer_headers = status, headers
        self.answer(status, payload, headers)

    def answer(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = b"" if status == 304 or payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if status != 304:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (read timeout) before the answer
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, api: FakeApi) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.api = api

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def server():
    api = FakeApi()
    httpd = Server(api)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    api.run = api.add_run()
    yield api
    httpd.shutdown()
    httpd.server_close()


class Sleeps(list):
    """A ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(url: str, token: str = RESEARCHER, **options: Any) -> EvalsiteClient:
    settings = {"timeout": (1.0, 1.0), "max_retries": 4, "backoff": 0.001, "max_backoff": 0.004, **options}
    return EvalsiteClient(url, token, **settings)


@pytest.fixture
def client(server):
    with make_client(server.url) as c:
        yield c


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


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


def fit_tiny_model(tmp_path: Path, callback: Any, **checkpoint_options: Any):
    import torch
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=4)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, **checkpoint_options
    )
    trainer = Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        callbacks=[checkpoint, callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), loader)
    return trainer


lightning_warnings = pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\):FutureWarning")


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
