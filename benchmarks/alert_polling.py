"""Alert polling: many training jobs polling ``GET /api/v1/runs/{id}/alerts/`` with ETags, against
gunicorn + PostgreSQL on loopback.

Creates a fresh database on the local PostgreSQL (dropped at the end), migrates it, creates
``--runs`` runs with a token each, and starts gunicorn (DEBUG off). ``--pollers`` concurrent
pollers (aiohttp, one keep-alive connection each, spread over the runs) poll in a closed loop for
``--seconds``: each sends the ETag of its last answer, so an unchanged answer is a 304. Meanwhile
one alert is created every ``--alert-every`` seconds on a random run, so some polls get 200s with
new alerts. Afterwards it checks that every poller saw every alert of its run exactly once, in
cursor order. Only 127.0.0.1 is contacted.

    python benchmarks/alert_polling.py --pollers 500 --seconds 30

Prints requests/s, latency percentiles, the share of 304s, CPU per request and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listening_load import (  # noqa: E402
    PG,
    background_cpu,
    cpu_ticks,
    drop_database,
    free_port,
    gunicorn_pids,
    machine_ticks,
    recreate_database,
    start_gunicorn,
    stop,
)


def setup(runs: int) -> list[tuple[int, str]]:
    from django.core.management import call_command

    from evalsite.runs.services import run_create

    call_command("migrate", verbosity=0, interactive=False)
    return [
        (run.pk, token)
        for run, token in (
            run_create(name=f"poll-{i}", kind="vocoder", model_family="hifigan") for i in range(runs)
        )
    ]


def produce_alerts(run_ids: list[int], every: float, halt: threading.Event, made: Counter) -> None:
    """Create alerts while the pollers run (in this process, through the same service a worker uses)."""
    import django.db

    from evalsite.alerts.services import alert_create
    from evalsite.runs.models import Run

    rng = random.Random(1)
    while not halt.wait(every):
        run = Run.objects.get(pk=rng.choice(run_ids))
        made[run.pk] += 1
        alert_create(
            run=run,
            dedupe_key=f"bench-{run.pk}-{made[run.pk]}",
            kind="detector_any",
            severity="warning",
            title=f"benchmark alert {made[run.pk]}",
        )
    django.db.connections.close_all()


async def poll(
    base: str,
    run_id: int,
    token: str,
    deadline: float,
    latencies: list[float],
    codes: Counter,
    seen: list[int],
) -> None:
    import aiohttp

    url = f"{base}/api/v1/runs/{run_id}/alerts/"
    headers = {"Authorization": f"Bearer {token}"}
    after, etag = 0, None
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        while time.monotonic() < deadline:
            send = {"If-None-Match": etag} if etag else {}
            t0 = time.perf_counter()
            try:
                async with session.get(url, params={"after": str(after)}, headers=send) as response:
                    body = await response.json() if response.status == 200 else None
                    status = response.status
                    etag = response.headers.get("ETag", etag)
            except aiohttp.ClientError as exc:
                codes[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            latencies.append(time.perf_counter() - t0)
            codes[status] += 1
            if body is not None:
                seen.extend(a["cursor"] for a in body["results"])
                after = body["cursor"]


async def drive(args, base: str, runs: list[tuple[int, str]]) -> tuple[float, list[float], Counter, dict]:
    latencies: list[float] = []
    codes: Counter = Counter()
    seen: dict[int, list[list[int]]] = {run_id: [] for run_id, _ in runs}
    deadline = time.monotonic() + args.seconds
    tasks = []
    for i in range(args.pollers):
        run_id, token = runs[i % len(runs)]
        mine: list[int] = []
        seen[run_id].append(mine)
        tasks.append(poll(base, run_id, token, deadline, latencies, codes, mine))
    t0 = time.monotonic()
    await asyncio.gather(*tasks)
    return time.monotonic() - t0, latencies, codes, seen


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=500)
    parser.add_argument("--runs", type=int, default=50, help="pollers are spread over this many runs")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--alert-every", type=float, default=1.0, help="seconds between new alerts (one run each)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--keep-alive", type=int, default=30)
    parser.add_argument("--profile", help="record the server with py-spy to this file")
    parser.add_argument("--database", default="evalsite_bench_poll")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-poll-"))
    env = {
        **os.environ,
        "DATABASE_URL": f"{PG}/{args.database}",
        "EVALSITE_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "evalsite.settings.base",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Ten closed-loop pollers per token are far over the per-token rate limit of a real job; the
        # limit stays on (each poll still pays its counter) but never refuses here.
        "EVALSITE_API_RATE": "1000000/s",
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

        runs = setup(args.runs)
        connections.close_all()
        port = free_port()
        proc = start_gunicorn(args, env, port, var)
        pids = gunicorn_pids(proc.pid)
        background = background_cpu()
        print(
            f"gunicorn on 127.0.0.1:{port}: {args.workers} workers x {args.threads} threads; "
            f"other processes used {background:.0%} of one core before the run"
        )
        made: Counter = Counter()
        halt = threading.Event()
        producer = threading.Thread(
            target=produce_alerts, args=([r for r, _ in runs], args.alert_every, halt, made)
        )
        producer.start()
        server0 = {p: cpu_ticks(p) for p in pids}
        busy0, all0 = machine_ticks()
        client0 = time.process_time()
        wall, latencies, codes, seen = asyncio.run(drive(args, f"http://127.0.0.1:{port}", runs))
        client_cpu = time.process_time() - client0
        busy1, all1 = machine_ticks()
        server_cpu = sum(cpu_ticks(p) - t for p, t in server0.items() if Path(f"/proc/{p}").exists())
        halt.set()
        producer.join()
        stop(proc)
        proc = None

        requests = len(latencies)
        hz = os.sysconf("SC_CLK_TCK")
        # Every poller must have received each alert of its run created before its last poll, once, in order.
        duplicates = sum(len(s) - len(set(s)) for lists in seen.values() for s in lists)
        out_of_order = sum(1 for lists in seen.values() for s in lists if s != sorted(s))
        missed = sum(
            1 for run_id, lists in seen.items() for s in lists if s and s != list(range(1, max(s) + 1))
        )
        print(
            f"\n{requests} polls in {wall:.1f} s by {args.pollers} pollers over {args.runs} runs: "
            f"{requests / wall:.0f} requests/s"
        )
        print("answers:", dict(codes), f"({codes[304] / max(requests, 1):.1%} were 304)")
        print(
            f"latency p50 {pct(latencies, 0.5):.1f} ms, p90 {pct(latencies, 0.9):.1f} ms, "
            f"p99 {pct(latencies, 0.99):.1f} ms"
        )
        print(
            f"alerts created {sum(made.values())}; duplicates seen {duplicates}, out of order {out_of_order}, "
            f"gaps {missed}"
        )
        print(
            f"CPU: gunicorn {server_cpu / hz / wall:.2f} cores ({server_cpu / hz / max(requests, 1) * 1e3:.2f} ms "
            f"per request), client {client_cpu / wall:.2f} cores, machine "
            f"{(busy1 - busy0) / (all1 - all0) * (os.cpu_count() or 1):.2f} of {os.cpu_count()} cores"
        )
        command = "python benchmarks/alert_polling.py " + shlex.join(sys.argv[1:])
        print(
            f"\n| {args.pollers} pollers, {args.runs} runs, {args.seconds:.0f} s | {requests / wall:.0f} | "
            f"{codes[304] / max(requests, 1):.0%} | {pct(latencies, 0.5):.1f} / {pct(latencies, 0.99):.1f} ms | "
            f"{duplicates + out_of_order + missed} | `{command.strip()}` |"
        )
    finally:
        if proc is not None:
            stop(proc)
        from django.db import connections

        connections.close_all()
        drop_database(args.database)
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
