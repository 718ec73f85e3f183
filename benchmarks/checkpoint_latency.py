"""Checkpoint latency: from a checkpoint file appearing in a watched directory to its metrics stored.

A fresh PostgreSQL database (dropped at the end) and a Redis database; one real ``celery worker
-B`` process (queues gpu,cpu, concurrency 1, beat embedded) with the directory watcher scanning
every ``--watch-interval`` s and a ``--settle`` s settle time. An eval set of ``--items`` clips
(eSpeak NG speech, offline) and a tiny HiFi-GAN run that watches a temporary directory. Each
checkpoint file is written under a temporary name and renamed into place (as training code
should); the clock starts at the rename. Reported per checkpoint: registered (the watcher saw it
settle), generated, metrics stored, detectors done — seconds after the rename.

    python benchmarks/checkpoint_latency.py --items 20 --checkpoints 3

Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listening_load import PG, REPO, drop_database, recreate_database  # noqa: E402


def eval_clips(folder: Path, n: int) -> Path:
    from evalsite.demo.speech import write_demo_corpus

    return write_demo_corpus(folder, n_items=n)


def write_checkpoint(folder: Path, step: int) -> float:
    import torch

    import models

    torch.manual_seed(step)
    model = models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny"))
    tmp = folder / f".checkpoint_step_{step}.pth.tmp"
    models.save_checkpoint(model, tmp)
    os.replace(tmp, folder / f"checkpoint_step_{step}.pth")
    return time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--watch-interval", type=int, default=1)
    parser.add_argument("--settle", type=int, default=1)
    parser.add_argument("--database", default="evalsite_bench_latency")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-latency-"))
    env = {
        **os.environ,
        "DATABASE_URL": f"{PG}/{args.database}",
        "EVALSITE_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "evalsite.settings.base",
        "CELERY_BROKER_URL": args.redis,
        "EVALSITE_WATCH_INTERVAL_S": str(args.watch_interval),
        "EVALSITE_WATCH_SETTLE_S": str(args.settle),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("EVALSITE_MEDIA_ROOT", None)
    os.environ.update(env)
    recreate_database(args.database)
    import redis

    redis.Redis.from_url(args.redis).flushdb()
    worker = None
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from evalsite.jobs.models import Job
        from evalsite.runs.evalset_services import evalset_import
        from evalsite.runs.models import Checkpoint, EvalSet, Generation
        from evalsite.runs.services import run_create
        from evalsite.scoring.models import MetricResult

        call_command("migrate", verbosity=0, interactive=False)
        source = eval_clips(var / "clips", args.items)
        eval_set = EvalSet.objects.get(pk=evalset_import(name="latency", source=source).eval_set_id)
        watched = var / "ckpts"
        watched.mkdir()
        run, _ = run_create(
            name="tiny-latency",
            kind="vocoder",
            model_family="hifigan",
            eval_set=eval_set,
            checkpoint_dir=str(watched),
        )
        connections.close_all()
        log = open(var / "worker.log", "wb")
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "evalsite",
                "worker",
                "-B",
                "--schedule",
                str(var / "beat"),
                "-Q",
                "gpu,cpu",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while b" ready." not in (var / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{(var / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.2)
        rows = []
        for k in range(args.checkpoints):
            step = 1000 * (k + 1)
            t0 = write_checkpoint(watched, step)
            marks: dict[str, float] = {}
            deadline = time.monotonic() + 900
            while "done" not in marks and time.monotonic() < deadline:
                now = time.time() - t0
                ckpt = Checkpoint.objects.filter(run=run, step=step).first()
                if ckpt and "registered" not in marks:
                    marks["registered"] = ckpt.created_at.timestamp() - t0
                if (
                    ckpt
                    and "generated" not in marks
                    and Job.objects.filter(checkpoint=ckpt, kind="generation", status="done").exists()
                ):
                    marks["generated"] = now
                if (
                    ckpt
                    and "metrics stored" not in marks
                    and Job.objects.filter(checkpoint=ckpt, kind="metrics", status="done").exists()
                ):
                    marks["metrics stored"] = now
                if ckpt and ckpt.status in ("done", "failed"):
                    marks["done"] = now
                    marks["status"] = ckpt.status
                time.sleep(0.1)
            metrics = MetricResult.objects.filter(
                checkpoint__run=run, checkpoint__step=step, status="done"
            ).count()
            clips = Generation.objects.filter(
                checkpoint__run=run, checkpoint__step=step, status="done"
            ).count()
            print(
                f"step {step}: "
                + ", ".join(
                    f"{k} {v:.1f} s" if isinstance(v, float) else f"{k} {v}" for k, v in marks.items()
                )
                + f" ({clips} clips, {metrics} metrics)"
            )
            rows.append(marks)

        def median(key):
            return float(np.median([r[key] for r in rows if key in r]))

        command = "python benchmarks/checkpoint_latency.py " + shlex.join(sys.argv[1:])
        print(
            f"\n| tiny HiFi-GAN, {args.items} items, watch every {args.watch_interval} s, settle {args.settle} s | "
            f"{median('registered'):.1f} s | {median('generated'):.1f} s | {median('metrics stored'):.1f} s | "
            f"{median('done'):.1f} s | `{command.strip()}` |"
        )
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        from django.db import connections

        connections.close_all()
        drop_database(args.database)
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
