"""Listening-test load: simulated listeners over real HTTP against gunicorn + PostgreSQL on loopback.

Creates a fresh database on the local PostgreSQL (dropped again at the end), migrates it, builds
and publishes a MUSHRA test (``--items`` items x 2 checkpoints, so 5 sounds per trial: two systems,
the hidden reference and two anchors) and starts gunicorn on a free 127.0.0.1 port with DEBUG off
(``--workers 2 --threads 8``: gthread, one process per core; see ``main`` for why 8 threads).
Then ``--listeners`` simulated listeners arrive over ``--ramp`` seconds and, until ``--seconds``
have passed, do what a browser does: GET the invite (consent form and CSRF cookie), POST consent,
GET the session page and the state JSON, and for each trial POST one rating per sound after a
seeded think time (sometimes moving a slider again, retrying a request with the same request id,
double-submitting it concurrently, or replaying an older request late), then POST complete.

Afterwards every rating a client got a 200 for is checked in the database: stored exactly once,
with the score and request id of the last new request sent for it. Queries per request are counted
in-process with ``CaptureQueriesContext``. Only 127.0.0.1 is contacted.

    python benchmarks/listening_load.py --listeners 200 --seconds 60

Prints the figures, a markdown table row and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PG = "postgres://postgres@127.0.0.1:5432"


@dataclass
class Stats:
    """Everything the clients saw, keyed by operation name."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    latency_after_ramp: list[float] = field(
        default_factory=list
    )  # ratings sent once every listener had arrived
    status: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    network_errors: Counter = field(default_factory=Counter)
    # (participant token, stimulus token) -> (score, request id) of the last new request acknowledged
    acked: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    unacked: set[tuple[str, str]] = field(default_factory=set)
    participants: set[str] = field(default_factory=set)
    retries: Counter = field(default_factory=Counter)
    audio_bytes: int = 0
    joined: int = 0
    trials_completed: int = 0


# ---------------------------------------------------------------------------------------------
# Setup and teardown


def recreate_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def build_test(items: int, votes_target: int, seed: int):
    """Migrate, then build and publish a MUSHRA test of ``items`` items x 2 checkpoints."""
    from django.core.management import call_command

    from evalsite.listening import services

    # tests/ is a namespace package, and a site-packages "tests" package shadows it: load by path.
    spec = importlib.util.spec_from_file_location("evalsite_test_factories", REPO / "tests" / "factories.py")
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    listening_world = factories.listening_world

    call_command("migrate", verbosity=0, interactive=False)
    world = listening_world(n_items=items, seconds=1.0)
    test = services.listening_test_build(
        design=services.TestDesign(
            name="load-test",
            kind="mushra",
            checkpoints=world["checkpoints"],
            seed=seed,
            votes_target=votes_target,
            completion_code="LOAD-OK",
        )
    )
    return services.listening_test_publish(test=test)


def collect_static(env: dict[str, str]) -> None:
    """collectstatic into $EVALSITE_VAR_DIR/staticfiles, as a deployment runs it: with the hashed storage a
    page that names a static file answers 500 without the manifest (about 25 CPU seconds)."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(args, env: dict[str, str], port: int, var: Path) -> subprocess.Popen:
    cmd = [
        str(Path(sys.executable).with_name("gunicorn")),
        "evalsite.wsgi",
        "-w",
        str(args.workers),
        "--threads",
        str(args.threads),
        "-b",
        f"127.0.0.1:{port}",
        "--keep-alive",
        str(args.keep_alive),
        "--access-logfile",
        str(var / "access.log"),
        "--access-logformat",
        "%(m)s %(U)s %(s)s %(D)s",
        "--error-logfile",
        str(var / "gunicorn.log"),
    ]
    if args.profile:
        cmd = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--subprocesses",
            "--nonblocking",
            "--format",
            "raw",
            "--rate",
            "200",
            "-o",
            str(Path(args.profile).resolve()),
            "--",
            *cmd,
        ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(var / "stderr.log", "wb"),
        start_new_session=True,
    )
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}; see {var / 'stderr.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise SystemExit("gunicorn did not answer /healthz within 60 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        # Gunicorn alone: SIGTERM, its graceful stop (each worker gets it twice, from us and from the
        # master, which is harmless; a second SIGINT/SIGQUIT could land in a worker's interpreter
        # shutdown and hang it until the master's 30 s graceful timeout and SIGKILL). Under py-spy:
        # SIGINT, on which py-spy writes its profile.
        profiling = Path(proc.args[0]).name == "py-spy"
        os.killpg(proc.pid, signal.SIGINT if profiling else signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------------------------------------
# CPU and PostgreSQL sampling


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def gunicorn_pids(master: int) -> list[int]:
    """The gunicorn master and its workers (the master may sit under py-spy when profiling)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True
    ).stdout.split()
    pids = [master] + [int(p) for p in out]
    for p in list(pids[1:]):
        pids += [
            int(c)
            for c in subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True
            ).stdout.split()
        ]
    return pids


def postgres_ticks() -> int:
    """CPU ticks of the PostgreSQL server (all databases): live processes plus the postmaster's reaped backends."""
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().split(" (", 1)[1].split(")", 1)
        except (OSError, IndexError):
            continue
        if name == "postgres":
            fields = rest.split()
            procs[stat.parent.name] = (
                fields[1],
                int(fields[11]) + int(fields[12]),
                int(fields[13]) + int(fields[14]),
            )
    return sum(own + (reaped if ppid not in procs else 0) for ppid, own, reaped in procs.values())


def background_cpu(seconds: float = 3.0) -> float:
    """Share of one core the machine spends busy while the server is idle (other users' work)."""
    busy0, all0 = machine_ticks()
    time.sleep(seconds)
    busy1, all1 = machine_ticks()
    return (busy1 - busy0) / (all1 - all0) * (os.cpu_count() or 1)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def statement_shape(sql: str) -> str:
    """A short, parameter-free name for a statement: verb, first table, FOR UPDATE."""
    words = sql.split()
    tables = [w.strip('"(,').split('"."')[0] for w in words if w.lstrip("(").startswith('"listening_')]
    shape = " ".join(words[:1] + tables[:1]) + (
        " ... FOR UPDATE" if sql.rstrip().endswith("FOR UPDATE") else ""
    )
    return shape.replace('"', "")


class PgSampler(threading.Thread):
    """Samples pg_stat_activity of the bench database twice a second: active backends, lock waits."""

    def __init__(self, dbname: str):
        super().__init__(daemon=True)
        self.dbname, self.samples, self.halt = dbname, [], threading.Event()
        self.waiting: Counter = Counter()  # statement shape of backends seen waiting on a lock

    def run(self) -> None:
        import psycopg

        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            while not self.halt.wait(0.5):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event, query, pg_blocking_pids(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.dbname,),
                ).fetchall()
                self.samples.append(rows)
                for row in rows:
                    if row[1] == "Lock":
                        self.waiting[statement_shape(row[3])] += 1

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        n = len(self.samples)
        return {
            "backends (mean)": sum(len(s) for s in self.samples) / n,
            "active (mean)": sum(sum(r[0] == "active" for r in s) for s in self.samples) / n,
            "waiting on a lock (mean)": sum(sum(r[1] == "Lock" for r in s) for s in self.samples) / n,
            "waiting on a lock (max)": max(sum(r[1] == "Lock" for r in s) for s in self.samples),
        }


# ---------------------------------------------------------------------------------------------
# The simulated listener


class Listener:
    def __init__(self, n: int, args, base: str, invite: str, stats: Stats, start: float, ssl_context):
        self.rng = random.Random(args.seed * 1_000_003 + n)
        self.args, self.base, self.invite, self.stats = args, base, invite, stats
        self.start, self.deadline, self.ssl_context = start, start + args.seconds, ssl_context

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def think(self, low: float, high: float) -> bool:
        """Sleep a seeded think time; False once the run is over."""
        wait = self.rng.uniform(low, high)
        if wait >= self.left():
            return False
        await asyncio.sleep(wait)
        return True

    async def call(self, client, op: str, method: str, url: str, **kw):
        """One request, timed; None on a network error (counted)."""
        t0 = time.perf_counter()
        try:
            response = await client.request(method, url, **kw)
        except Exception as exc:  # noqa: BLE001 - httpx transport errors and timeouts alike are counted
            self.stats.network_errors[f"{op}: {type(exc).__name__}"] += 1
            return None
        self.stats.latency[op].append(time.perf_counter() - t0)
        self.stats.status[op][response.status_code] += 1
        if op == "rate" and time.monotonic() - self.start > self.args.ramp:
            self.stats.latency_after_ramp.append(time.perf_counter() - t0)
        return response

    async def rate(
        self, client, csrf: str, ptoken: str, trial: str, stim: str, score: float, rid: str, op: str = "rate"
    ) -> bool:
        """POST one rating; a network error is retried with the same request id, as the page does."""
        body = {"trial": trial, "stimulus": stim, "score": score, "request_id": rid}
        for _attempt in range(3):
            response = await self.call(
                client, op, "POST", f"/l/p/{ptoken}/rate", json=body, headers={"X-CSRFToken": csrf}
            )
            if response is not None:
                return response.status_code == 200 and response.json() == {"score": score}
            self.stats.retries["after network error"] += 1
        return False

    async def run(self, arrival: float) -> None:
        import httpx

        await asyncio.sleep(arrival)
        if self.left() <= 0:
            return
        # One cookie jar per listener, as one browser each; the TLS context (unused on http://) is shared
        # because httpx would otherwise build one per client and load the CA bundle into it.
        async with httpx.AsyncClient(
            base_url=self.base, timeout=30, follow_redirects=False, verify=self.ssl_context
        ) as client:
            await self.session(client)

    async def session(self, client) -> None:
        args, stats, rng = self.args, self.stats, self.rng
        page = await self.call(client, "GET invite", "GET", f"/l/i/{self.invite}/")
        if page is None or page.status_code != 200 or not await self.think(1.0, 4.0):
            return
        csrf = client.cookies["csrftoken"]
        joined = await self.call(
            client,
            "POST consent",
            "POST",
            f"/l/i/{self.invite}/",
            data={"csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{self.base}/l/i/{self.invite}/"},
        )
        if joined is None or joined.status_code != 302:
            return
        stats.joined += 1
        session_url = joined.headers["location"]
        ptoken = session_url.rstrip("/").rsplit("/", 1)[1]
        stats.participants.add(ptoken)
        page = await self.call(client, "GET session", "GET", session_url)
        state = await self.call(
            client, "GET state", "GET", session_url + "state", headers={"Accept": "application/json"}
        )
        if page is None or state is None or state.status_code != 200:
            return
        csrf = client.cookies["csrftoken"]
        for trial in state.json()["trials"]:
            if args.audio and trial["reference"]:
                await self.fetch_audio(client, trial["reference"]["url"])
            sent: list[tuple[str, float, str]] = []
            for stim in rng.sample(trial["stimuli"], len(trial["stimuli"])):
                if args.audio:
                    await self.fetch_audio(client, stim["url"])
                if not await self.think(args.think_min, args.think_max):
                    return
                key = (ptoken, stim["id"])
                score = float(rng.randint(0, 100))
                rid = uuid.UUID(int=rng.getrandbits(128)).hex
                roll = rng.random()
                if roll < args.p_double:
                    # A double click: the same request twice at once; both must succeed, one row kept.
                    oks = await asyncio.gather(
                        *(
                            self.rate(client, csrf, ptoken, trial["id"], stim["id"], score, rid)
                            for _ in range(2)
                        )
                    )
                    stats.retries["concurrent duplicate"] += 1
                    ok = all(oks)
                else:
                    ok = await self.rate(client, csrf, ptoken, trial["id"], stim["id"], score, rid)
                    if ok and roll < args.p_double + args.p_retry:
                        # The answer was lost on the way back: the page sends the same request again.
                        stats.retries["same request id"] += 1
                        ok = await self.rate(client, csrf, ptoken, trial["id"], stim["id"], score, rid)
                self.record(key, ok, score, rid)
                sent.append((stim["id"], score, rid))
                if rng.random() < args.p_change and await self.think(args.think_min, args.think_max):
                    # The listener moves the slider again: a new request id must win.
                    score2, rid2 = float(rng.randint(0, 100)), uuid.UUID(int=rng.getrandbits(128)).hex
                    self.record(
                        key,
                        await self.rate(client, csrf, ptoken, trial["id"], stim["id"], score2, rid2),
                        score2,
                        rid2,
                    )
                    if rng.random() < args.p_late:
                        # A late retry of the older request arrives after the newer one: must change nothing.
                        stats.retries["late replay of older request"] += 1
                        await self.rate(
                            client, csrf, ptoken, trial["id"], stim["id"], score, rid, op="rate (late replay)"
                        )
            done = await self.call(
                client,
                "POST complete",
                "POST",
                session_url + "complete",
                json={"trial": trial["id"]},
                headers={"X-CSRFToken": csrf},
            )
            if done is None or done.status_code != 200:
                return
            stats.trials_completed += 1

    def record(self, key: tuple[str, str], ok: bool, score: float, rid: str) -> None:
        if ok:
            self.stats.acked[key] = (score, rid)
            self.stats.unacked.discard(key)
        elif key not in self.stats.acked:
            self.stats.unacked.add(key)

    async def fetch_audio(self, client, url: str) -> None:
        response = await self.call(client, "GET audio", "GET", url)
        if response is not None:
            self.stats.audio_bytes += len(response.content)


async def drive(args, base: str, invite: str, stats: Stats) -> float:
    import ssl

    start = time.monotonic()
    context = ssl.create_default_context()
    listeners = [Listener(n, args, base, invite, stats, start, context) for n in range(args.listeners)]
    await asyncio.gather(*(lst.run(args.ramp * n / args.listeners) for n, lst in enumerate(listeners)))
    return time.monotonic() - start


# ---------------------------------------------------------------------------------------------
# Checks and reporting


def verify(test, stats: Stats) -> dict[str, int]:
    """Compare what the clients were told with what the database holds."""
    from evalsite.listening.models import Rating, StimulusHandle

    stimulus_of = dict(
        ((p, h), s)
        for p, h, s in StimulusHandle.objects.filter(assignment__participant__test=test).values_list(
            "assignment__participant__token", "token", "stimulus_id"
        )
    )
    rows: dict[tuple[str, int], list] = defaultdict(list)
    for p, s, score, rid, history in Rating.objects.filter(participant__test=test).values_list(
        "participant__token", "stimulus_id", "score", "request_id", "history"
    ):
        rows[(p, s)].append((score, rid, history))
    lost = wrong = doubled = 0
    for (ptoken, htoken), (score, rid) in stats.acked.items():
        stored = rows.get((ptoken, stimulus_of[(ptoken, htoken)]), [])
        if not stored:
            lost += 1
        elif stored[0][0] != score or stored[0][1] != rid or rid not in stored[0][2]:
            wrong += 1
    doubled = sum(len(v) - 1 for v in rows.values() if len(v) > 1)
    known = {(p, stimulus_of[(p, h)]) for p, h in list(stats.acked) + list(stats.unacked)}
    unexpected = sum(1 for k in rows if k not in known)
    return {
        "acknowledged": len(stats.acked),
        "stored": sum(len(v) for v in rows.values()),
        "lost": lost,
        "wrong value": wrong,
        "doubled": doubled,
        "stored but never sent": unexpected,
        "sent, never acknowledged": len(stats.unacked),
    }


def queries_per_request(test) -> dict[str, int]:
    """Count SQL statements per listener request, in-process through the same views and middleware."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(enforce_csrf_checks=True, HTTP_HOST="127.0.0.1")
    counts: dict[str, int] = {}

    def count(name: str, fn):
        with CaptureQueriesContext(connection) as ctx:
            response = fn()
        counts[name] = len(ctx.captured_queries)
        return response

    invite = f"/l/i/{test.invite_token}/"
    count("GET invite", lambda: client.get(invite))
    joined = count(
        "POST consent (join)",
        lambda: client.post(invite, {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}),
    )
    session_url = joined["Location"]
    count("GET session", lambda: client.get(session_url))
    state = count("GET state", lambda: client.get(session_url + "state")).json()
    csrf = client.cookies["csrftoken"].value
    trial = state["trials"][0]

    def post(path: str, body: dict):
        return client.post(
            session_url + path, json.dumps(body), content_type="application/json", HTTP_X_CSRFTOKEN=csrf
        )

    first = {
        "trial": trial["id"],
        "stimulus": trial["stimuli"][0]["id"],
        "score": 50,
        "request_id": "probe-1",
    }
    count("POST rate (new rating)", lambda: post("rate", first))
    count("POST rate (same request id again)", lambda: post("rate", first))
    count("POST rate (changed score)", lambda: post("rate", {**first, "score": 60, "request_id": "probe-2"}))
    for i, stim in enumerate(trial["stimuli"][1:]):
        post("rate", {"trial": trial["id"], "stimulus": stim["id"], "score": 70, "request_id": f"probe-x{i}"})
    count("POST complete (trial)", lambda: post("complete", {"trial": trial["id"]}))
    return counts


def server_latency(path: Path) -> dict[str, list[float]]:
    """Server-side request times (gunicorn %(D)s, microseconds) by operation, for comparison."""
    out: dict[str, list[float]] = defaultdict(list)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        method, url, _, micros = parts
        op = (
            "POST rate"
            if url.endswith("/rate")
            else "POST complete"
            if url.endswith("/complete")
            else f"{method} other"
        )
        out[op].append(int(micros) / 1e6)
    return out


def pct(values: list[float]) -> str:
    if not values:
        return "–"
    p = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return f"{p[0]:.0f} / {p[1]:.0f} / {p[2]:.0f}"


def report(
    args,
    stats: Stats,
    wall: float,
    checks: dict[str, int],
    queries: dict[str, int],
    cpu: dict[str, float],
    pg: dict[str, float],
    waiting: Counter,
    server: dict[str, list[float]],
) -> None:
    total = sum(len(v) for v in stats.latency.values())
    errors_5xx = sum(n for c in stats.status.values() for code, n in c.items() if code >= 500)
    other = sum(
        n
        for op, c in stats.status.items()
        for code, n in c.items()
        if code < 500 and not (200 <= code < 300 or (op == "POST consent" and code == 302))
    )
    rates = stats.latency.get("rate", []) + stats.latency.get("rate (late replay)", [])
    print(
        f"\nwall {wall:.1f} s, {stats.joined} listeners joined, {total} requests, {total / wall:.1f} req/s, "
        f"{stats.trials_completed} trials completed"
    )
    print("\n| operation | n | p50 / p95 / p99 ms | max ms | status codes |\n|---|---|---|---|---|")
    for op in sorted(op for op, values in stats.latency.items() if values):
        values = stats.latency[op]
        print(
            f"| {op} | {len(values)} | {pct(values)} | {max(values) * 1000:.0f} | "
            f"{dict(sorted(stats.status[op].items()))} |"
        )
    print(
        f"\nrate, sent after the last arrival (t > {args.ramp:g} s): n={len(stats.latency_after_ramp)} "
        f"p50/p95/p99 ms {pct(stats.latency_after_ramp)}"
    )
    print("\nserver-side (gunicorn access log, request start to response written):")
    for op, values in sorted(server.items()):
        print(f"  {op}: n={len(values)} p50/p95/p99 ms {pct(values)}")
    print(f"\nretries: {dict(stats.retries)}; network errors: {dict(stats.network_errors) or 0}")
    if args.audio:
        print(f"audio: {stats.audio_bytes / 2**20:.1f} MiB fetched")
    print(f"database check: {checks}")
    print(f"PostgreSQL activity: { {k: round(v, 2) for k, v in pg.items()} }")
    if waiting:
        print("statements seen waiting on a lock (samples):", dict(waiting.most_common(6)))
    print(f"CPU (share of one core over the load phase): { {k: f'{v:.0%}' for k, v in cpu.items()} }")
    print(f"SQL statements per request (in-process, CaptureQueriesContext): {queries}")
    goal = (
        checks["lost"] + checks["wrong value"] + checks["doubled"] == 0
        and errors_5xx == 0
        and rates
        and np.percentile(rates, 99) < 0.150
    )
    print(f"\ngoal (0 lost, 0 doubled, 0 5xx, rating p99 < 150 ms): {'MET' if goal else 'MISSED'}")
    command = "python benchmarks/listening_load.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(
        "\n| listeners | s | gunicorn | CONN_MAX_AGE | req/s | rate p50/p95/p99 ms | complete p50/p95/p99 ms "
        "| 5xx | other non-2xx | network errors | lost / doubled | client CPU | other processes' CPU | command |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.listeners} | {args.seconds:g} | {args.workers} w × {args.threads} t | {args.conn_max_age} "
        f"| {total / wall:.0f} | {pct(rates)} | {pct(stats.latency.get('POST complete', []))} "
        f"| {errors_5xx} | {other} "
        f"| {sum(stats.network_errors.values())} | {checks['lost'] + checks['wrong value']} / {checks['doubled']} "
        f"| {cpu['client']:.0%} | {cpu['other processes']:.0%} | `{command}` |"
    )


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="load duration; no request starts after it"
    )
    parser.add_argument(
        "--ramp", type=float, default=10.0, help="arrivals spread evenly over this many seconds"
    )
    parser.add_argument("--items", type=int, default=20, help="MUSHRA items (trials), 5 sounds each")
    # One gunicorn process per core: the work is CPU-bound Python, one GIL per process. gthread with
    # 8 threads each: joins wait in turn for the test's row lock (the assignment engine balances on
    # earlier joins), and a thread waiting there must not leave rating requests queued behind it.
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--keep-alive", type=int, default=5, help="gunicorn --keep-alive seconds")
    parser.add_argument(
        "--conn-max-age", type=int, default=60, help="DATABASE_CONN_MAX_AGE for the server (the site default)"
    )
    parser.add_argument("--think-min", type=float, default=0.5)
    parser.add_argument("--think-max", type=float, default=3.0)
    parser.add_argument(
        "--p-retry", type=float, default=0.05, help="share of ratings re-sent with the same id"
    )
    parser.add_argument("--p-double", type=float, default=0.02, help="share sent twice concurrently")
    parser.add_argument("--p-change", type=float, default=0.10, help="share changed again with a new id")
    parser.add_argument(
        "--p-late", type=float, default=0.3, help="share of changes followed by a late replay"
    )
    parser.add_argument(
        "--audio", action="store_true", help="also GET every sound once (measured separately)"
    )
    parser.add_argument("--profile", help="record the server with py-spy (raw collapsed stacks) to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="evalsite_bench")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-load-"))
    env = {
        **os.environ,
        "DATABASE_URL": f"{PG}/{args.database}",
        "EVALSITE_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "evalsite.settings.base",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_CONN_MAX_AGE": str(args.conn_max_age),
        # Every simulated listener joins from 127.0.0.1: the per-IP join limit (300/hour) would cap
        # --listeners; the per-listener limit stays on, as in production.
        "EVALSITE_JOIN_RATE": "off",
    }
    for key in ("CELERY_BROKER_URL", "EVALSITE_MEDIA_ROOT", "SECRET_KEY"):
        env.pop(key, None)
    os.environ.clear()
    os.environ.update(env)
    recreate_database(args.database)
    proc = None
    try:
        import django

        django.setup()
        from django.db import connections

        t0 = time.monotonic()
        test = build_test(args.items, votes_target=10 * args.listeners + 100, seed=args.seed)
        print(
            f"built and published a MUSHRA test of {test.trials.count()} trials in {time.monotonic() - t0:.1f} s "
            f"(database {args.database}, var {var})"
        )
        connections.close_all()
        collect_static(env)
        port = free_port()
        proc = start_gunicorn(args, env, port, var)
        master = (
            proc.pid
            if not args.profile
            else int(
                subprocess.run(
                    ["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True
                ).stdout.split()[0]
            )
        )
        pids = gunicorn_pids(master)
        print(f"gunicorn on 127.0.0.1:{port}: {args.workers} workers x {args.threads} threads (pids {pids})")
        (var / "access.log").write_text("")  # drop the readiness probes
        background = background_cpu()
        print(
            f"CPU used by other processes on the machine before the run: {background:.0%} of one core"
            + (
                "  (WARNING: the machine is not idle; latencies include that contention)"
                if background > 0.2
                else ""
            )
        )

        stats = Stats()
        sampler = PgSampler(args.database)
        sampler.start()
        server_before = {p: cpu_ticks(p) for p in pids}
        busy0, all0 = machine_ticks()
        pg0 = postgres_ticks()
        client0 = time.process_time()
        wall = asyncio.run(drive(args, f"http://127.0.0.1:{port}", test.invite_token, stats))
        client_cpu = time.process_time() - client0
        busy1, all1 = machine_ticks()
        pg1 = postgres_ticks()
        server_cpu = sum(cpu_ticks(p) - t for p, t in server_before.items() if Path(f"/proc/{p}").exists())
        sampler.halt.set()
        sampler.join()
        hz = os.sysconf("SC_CLK_TCK")
        ncpu = os.cpu_count() or 1
        cpu = {
            "client": client_cpu / wall,
            "gunicorn": server_cpu / hz / wall,
            "machine (all cores)": (busy1 - busy0) / (all1 - all0) * ncpu,
        }
        cpu["postgres (all databases)"] = (pg1 - pg0) / hz / wall
        cpu["other processes"] = max(
            0.0,
            cpu["machine (all cores)"] - cpu["client"] - cpu["gunicorn"] - cpu["postgres (all databases)"],
        )
        cpu["other processes, before the run"] = background

        t_stop = time.monotonic()
        stop(proc)
        print(f"gunicorn stopped in {time.monotonic() - t_stop:.1f} s")
        problems = [
            line
            for line in (var / "gunicorn.log").read_text().splitlines()
            if any(word in line for word in ("ERROR", "CRITICAL", "WARNING", "Traceback"))
        ]
        if problems:
            print(
                f"gunicorn log: {len(problems)} warning/error lines, first ones:", *problems[:8], sep="\n  "
            )
        checks = verify(test, stats)
        queries = queries_per_request(test)
        report(
            args,
            stats,
            wall,
            checks,
            queries,
            cpu,
            sampler.summary(),
            sampler.waiting,
            server_latency(var / "access.log"),
        )
        if args.profile:
            print(f"py-spy profile (collapsed stacks): {args.profile}")
    finally:
        if proc is not None:
            stop(proc)
        from django.db import connections

        connections.close_all()
        drop_database(args.database)
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
