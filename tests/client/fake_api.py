"""An in-thread HTTP double of the evalsite REST API that can inject faults.

``FakeApi`` keeps runs, checkpoints (by step, as the server does), alerts and listening test results
in memory, records every request, and answers the next matching requests with injected faults: a
dropped connection (before or after acting), a status with headers and any body, or a delay past
the read timeout. A checkpoint's pipeline advances one status per read once evaluation is queued
(``checkpoint_evaluate``) or, for steps given to ``pipeline``, at registration.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from evalsite_client import EvalsiteClient

REPO = Path(__file__).resolve().parents[2]
RESEARCHER = "researcher-token"
KINDS = ("vocoder", "tokenizer", "generator")
ALERT_LAG = 0.05  # below results_interval where it matters: a reporter that waits a round sees the alerts


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
    body: Any = None  # JSON-encoded, unless bytes (sent as they are)
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
        self.pipelines: dict[tuple[int, int], list[str]] = {}
        self.outcomes: dict[tuple[int, int], dict[str, Any]] = {}
        self.listening_results: dict[int, Any] = {}
        self.late_alerts: list[tuple[float, int, str, int, str]] = []

    def pipeline(self, step: int, statuses: list[str], run_id: int = 1, **outcome: Any) -> None:
        """Once ``step`` is registered, each read of it moves to the next of ``statuses``; at the
        last one the checkpoint takes ``outcome`` (e.g. ``metrics``, ``error``). The server
        evaluates alert rules just after a pipeline ends, so ``outcome["alerts"]`` (title, rule)
        are raised :data:`ALERT_LAG` seconds after the read that saw the pipeline end."""
        self.pipelines[(run_id, step)] = list(statuses)
        self.outcomes[(run_id, step)] = outcome

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

    def add_alert(
        self,
        run_id: int,
        title: str,
        severity: str = "warning",
        step: int = 2,
        rule: str = "metric_regressed",
    ) -> dict[str, Any]:
        cursor = sum(len(a) for a in self.alerts.values()) + 1
        alert = {
            "cursor": cursor,
            "id": cursor,
            "rule": rule,
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
        test = re.fullmatch(r"/api/v1/listening-tests/(\d+)/results/", path)
        if test:
            found = self.listening_results.get(int(test.group(1)))
            return (
                (200, found, {}) if found is not None else (404, {"message": "Not found.", "extra": {}}, {})
            )
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
            if not self.progress[key]:
                outcome = dict(self.outcomes.get(key, {"metrics": {"mel_l1": 0.25}}))
                raised = outcome.pop("alerts", [])
                checkpoint.update(outcome)
                due = time.monotonic() + ALERT_LAG
                self.late_alerts.extend((due, run_id, title, key[1], rule) for title, rule in raised)
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
        if (run_id, step) in self.pipelines:
            self.progress[(run_id, step)] = self.pipelines[(run_id, step)]
        return 201, checkpoint, {}

    def alerts_page(self, run_id: int, query: dict[str, str], headers: dict[str, str]):
        now = time.monotonic()
        for late in [late for late in self.late_alerts if late[0] <= now]:
            self.late_alerts.remove(late)
            self.add_alert(late[1], late[2], step=late[3], rule=late[4])
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
        if isinstance(payload, bytes):
            data = payload
        else:
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


class Sleeps(list):
    """A ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(url: str, token: str = RESEARCHER, **options: Any) -> EvalsiteClient:
    settings = {"timeout": (1.0, 1.0), "max_retries": 4, "backoff": 0.001, "max_backoff": 0.004, **options}
    return EvalsiteClient(url, token, **settings)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
