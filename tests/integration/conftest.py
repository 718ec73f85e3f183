"""Integration fixtures: the real PostgreSQL and Redis on this machine and real worker processes.

Run with ``--ds=evalsite.settings.integration`` (``make test-integration``). With ``CI=true`` a
missing service fails the session loudly; elsewhere the tests are skipped with the reason.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

REPO = Path(__file__).resolve().parents[2]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def real_services():
    missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable("127.0.0.1", port)]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1; integration tests need the real services"
        if os.environ.get("CI", "").lower() == "true":
            pytest.exit(message, returncode=1)
        pytest.skip(message)
    # Stale messages from an earlier, interrupted run would be delivered to our workers.
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


class WorkerProcess:
    """A real ``celery worker`` subprocess in its own process group (so SIGKILL reaches every child)."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, beat: bool = False) -> None:
        self.env, self.log_path, self.name, self.beat = env, log_path, name, beat
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "WorkerProcess":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "evalsite", "worker", "-Q", "gpu,cpu", "--concurrency", "1",
             "-n", f"{self.name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             *(["-B", "--schedule", str(self.log_path.with_suffix(".beat"))] if self.beat else [])],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                if b" ready." in fh.read():
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture
def worker_env(transactional_db, settings, tmp_path):
    """Environment for workers that share this test's database, broker and media folder."""
    from django.db import connection

    db = connection.settings_dict
    media = tmp_path / "media"
    settings.MEDIA_ROOT = media
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evalsite.settings.integration",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "EVALSITE_MEDIA_ROOT": str(media),
        "EVALSITE_VAR_DIR": str(tmp_path / "var"),
        # Short enough that a killed worker's task comes back within seconds in the tests.
        "CELERY_VISIBILITY_TIMEOUT": "6",
        "CELERY_UNACKED_RESTORE_INTERVAL": "1",
        "EVALSITE_JOB_STALE_AFTER_S": "3",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def start_worker(worker_env, tmp_path):
    workers: list[WorkerProcess] = []

    def start(name: str = "w", *, beat: bool = False) -> WorkerProcess:
        """A worker on both queues; ``beat`` also runs the periodic tasks (watcher, alert rules) in it."""
        worker = WorkerProcess(worker_env, tmp_path / f"worker-{name}.log", f"{name}{len(workers)}", beat).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def wait_for(predicate, *, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
