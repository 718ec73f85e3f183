"""Resident memory of a web process that has served every kind of page (issue 13, item 6).

Creates a fresh database on the local PostgreSQL (``--database``, dropped at the end), migrates it and
writes the demo-like data of ``tests/web_tier.py`` (a run and its rival with outputs, metrics and detector
events, a published MUSHRA test). Starts ``gunicorn evalsite.wsgi`` with one sync worker, DEBUG off, and
plays ``tests.web_tier.walk`` against it ``--rounds`` times over HTTP: a listener (consent, sounds, ratings,
flags), a researcher (run, eval-set, chart, comparison, test and analysis pages; a MUSHRA test built and
published from the form, joined up to the headphone check) and a run token on the API. Reads the worker's
``VmRSS`` (resident now) and ``VmHWM`` (peak resident) from ``/proc/<pid>/status`` after start-up and after
the walks, and which model-stack modules the worker had loaded (a gunicorn hook).

``--import-model-stack`` makes the worker import modules before serving, to measure the old web process:

* ``metrics``: what the code before this change loaded on the run-charts page (``import metrics.detectors``
  ran the package's eager ``__init__``: torch through ``metrics._common``, and the Fréchet/Gaussian/preprocess
  modules);
* ``all``: the whole model stack (torch, torchaudio, laion_clap, ``models``, every metric of
  ``metrics.registry``), what a web process holds that imports the worker's code at start-up.

    python benchmarks/web_memory.py
    python benchmarks/web_memory.py --import-model-stack metrics
    python benchmarks/web_memory.py --import-model-stack all

Only 127.0.0.1 is contacted. Prints a table row per measurement and the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listening_load import PG, REPO, drop_database, free_port, recreate_database, stop  # noqa: E402

MODEL_STACK = {
    "none": "",
    "metrics": "metrics._common,metrics.distribution,metrics.gaussian,metrics.preprocess",
    "all": "torch,torchaudio,laion_clap,models,metrics,metrics.registry",
}


def _load(name: str, path: Path):
    # tests/ is a namespace package, and a site-packages "tests" package shadows it: load by path.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--import-model-stack",
        choices=sorted(MODEL_STACK),
        default="none",
        help="modules the worker imports before serving (the old web process); default none",
    )
    parser.add_argument("--rounds", type=int, default=3, help="walks over every page (default 3)")
    parser.add_argument("--database", default="evalsite_bench_web")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-web-memory-"))
    os.environ.update(
        {
            "DATABASE_URL": f"{PG}/{args.database}",
            "EVALSITE_VAR_DIR": str(var),
            "DJANGO_SETTINGS_MODULE": "evalsite.settings.base",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "ALLOWED_HOSTS": "127.0.0.1",
        }
    )
    for key in ("CELERY_BROKER_URL", "EVALSITE_MEDIA_ROOT"):
        os.environ.pop(key, None)  # the embedded broker and media folder under var/
    recreate_database(args.database)
    try:
        import django

        django.setup()
        from django.core.management import call_command

        web_tier = _load("evalsite_web_tier", REPO / "tests" / "web_tier.py")
        factories = _load("evalsite_test_factories", REPO / "tests" / "factories.py")
        call_command("migrate", verbosity=0, interactive=False)
        site = web_tier.site_build(listening_world=factories.listening_world, password=secrets.token_hex(8))
        from django.db import connections

        connections.close_all()
        call_command("collectstatic", interactive=False, verbosity=0)  # the pages name hashed static files
        measure(args, var, site, web_tier)
    finally:
        drop_database(args.database)


def measure(args, var: Path, site: dict, web_tier) -> None:
    hooks, modules = var / "gunicorn_hooks.py", var / "modules.json"
    hooks.write_text(web_tier.GUNICORN_HOOKS)
    env = {
        **os.environ,
        "WEB_TIER_MODULES": str(modules),
        "WEB_TIER_IMPORT_MODEL_STACK": MODEL_STACK[args.import_model_stack],
    }
    port = free_port()
    started = time.monotonic()
    with open(var / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "evalsite.wsgi",
                "-w",
                "1",
                "-b",
                f"127.0.0.1:{port}",
                "-c",
                str(hooks),
                "--timeout",
                "300",
                "--error-logfile",
                str(var / "gunicorn.log"),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    # The worker has loaded the app (and, for "before", the model stack) when the hook has written its file.
    while not modules.exists():
        if proc.poll() is not None or time.monotonic() - started > 300:
            stop(proc)
            raise SystemExit(f"gunicorn's worker did not start; see {var / 'gunicorn.log'}")
        time.sleep(0.1)
    try:
        ready_s = time.monotonic() - started
        worker = json.loads(modules.read_text())["pid"]
        at_start = proc_status(worker)
        base = f"http://127.0.0.1:{port}"
        walked = time.monotonic()
        for _ in range(args.rounds):
            web_tier.walk(base, site)
        walk_s = (time.monotonic() - walked) / args.rounds
        after = proc_status(worker)
        # gunicorn's post_request hook runs after the response has gone out: give it a moment.
        last, deadline = web_tier.LAST_REQUEST.format(run=site["run"]), time.monotonic() + 30
        while (seen := json.loads(modules.read_text()))["last"] != last and time.monotonic() < deadline:
            time.sleep(0.1)
        if seen["pid"] != worker or seen["last"] != last:
            raise SystemExit(f"the worker changed or missed requests: {seen}")
    finally:
        stop(proc)

    loaded = ", ".join(f"{m} ({when})" for m, when in seen["first_seen"].items()) or "none"
    command = "python benchmarks/web_memory.py" + (
        f" --import-model-stack {args.import_model_stack}" if args.import_model_stack != "none" else ""
    )
    print(f"gunicorn worker {worker}, --import-model-stack {args.import_model_stack}, {args.rounds} walks")
    print(f"model-stack modules in the worker: {loaded}")
    print(
        "| worker | VmRSS after start-up | VmRSS after the walks | VmHWM (peak) | ready after | one walk | command |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.import_model_stack} | {mib(at_start['VmRSS'])} | {mib(after['VmRSS'])} | {mib(after['VmHWM'])} "
        f"| {ready_s:.1f} s | {walk_s:.2f} s | `{command}` |"
    )


if __name__ == "__main__":
    main()
