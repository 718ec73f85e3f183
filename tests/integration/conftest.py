"""Integration fixtures: the real PostgreSQL, Redis and RabbitMQ on this machine and real worker processes.

Run with ``--ds=evalsite.settings.integration`` (``make test-integration``). With ``CI=true`` a
missing service fails the session loudly; elsewhere the tests are skipped with the reason.
RabbitMQ is needed only by the tests marked ``@both_brokers`` (their ``[amqp]`` variant).
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.integration.browser import browser_fixture, shots_fixture

REPO = Path(__file__).resolve().parents[2]
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"
VHOST_PREFIX = "evalsite-test-"

logger = logging.getLogger(__name__)

# Runs a test once per broker the README offers at scale: ``[redis]`` and ``[amqp]`` in its name.
both_brokers = pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)


def _missing_service(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.exit(message, returncode=1)
    pytest.skip(message)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def real_services():
    missing = [
        name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable("127.0.0.1", port)
    ]
    if missing:
        _missing_service(
            f"{' and '.join(missing)} not reachable on 127.0.0.1; integration tests need the real services"
        )
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
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "evalsite",
                "worker",
                "-Q",
                "gpu,cpu",
                "--concurrency",
                "1",
                "-n",
                f"{self.name}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                *(["-B", "--schedule", str(self.log_path.with_suffix(".beat"))] if self.beat else []),
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "--quiet", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def rabbitmq() -> bool:
    """RabbitMQ on 127.0.0.1:5672; True when ``rabbitmqctl`` may create vhosts here.

    Vhosts left by earlier sessions that were interrupted (their pytest process is gone) are deleted,
    which also drops any worker they left behind.
    """
    if not _reachable("127.0.0.1", 5672):
        _missing_service(
            "RabbitMQ not reachable on 127.0.0.1:5672; the [amqp] tests need it "
            "(start it with `rabbitmq-server -detached`)"
        )
    try:
        vhosts = _rabbitmqctl("list_vhosts", "name").split()
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning(
            "rabbitmqctl unusable (%s): the [amqp] tests share vhost / and purge its job queues", exc
        )
        return False
    for vhost in vhosts:
        pid = vhost.removeprefix(VHOST_PREFIX).split("-")[0]
        if vhost.startswith(VHOST_PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
            _rabbitmqctl("delete_vhost", vhost)
    return True


def _purge_job_queues(url: str) -> None:
    from kombu import Connection
    from kombu.exceptions import ChannelError

    with Connection(url) as conn:
        for queue in settings.CELERY_TASK_QUEUES:
            channel = conn.channel()
            try:
                channel.queue_purge(queue.name)
            except ChannelError:
                pass  # not declared yet: nothing to purge (and the broker closed this channel)
            finally:
                channel.close()


@pytest.fixture
def rabbitmq_vhost(rabbitmq):
    """An ``amqp://`` URL to a vhost of this test's own, deleted after it: no message of another test,
    of an earlier run or of a worker one left behind can reach this test's workers, whatever queue
    or exchange it sits in. Without ``rabbitmqctl``: vhost ``/``, with the job queues purged first."""
    if not rabbitmq:
        url = f"{RABBITMQ}//"
        _purge_job_queues(url)
        yield url
        return
    vhost = f"{VHOST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "--vhost", vhost, "guest", ".*", ".*", ".*")
        yield f"{RABBITMQ}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)  # closes the connections still open to it


def queue_depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (not those a consumer holds unacknowledged); AMQP only."""
    from kombu import Connection

    with Connection(url) as conn:
        return conn.default_channel.queue_declare(queue=queue, passive=True).message_count


@pytest.fixture
def broker(request, settings) -> str:
    """The broker URL of this test's workers and of ``job_create`` here: the integration settings'
    Redis, or per ``@both_brokers`` variant RabbitMQ in a private vhost."""
    if getattr(request, "param", "redis") == "redis":
        return settings.CELERY_BROKER_URL
    assert request.param == "amqp", request.param
    url = request.getfixturevalue("rabbitmq_vhost")
    request.getfixturevalue("broker_at")(url)
    return url


@pytest.fixture
def worker_env(transactional_db, broker, settings, tmp_path):
    """Environment for workers that share this test's database, broker and media folder."""
    from django.db import connection

    db = connection.settings_dict
    media = tmp_path / "media"
    settings.MEDIA_ROOT = media
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evalsite.settings.integration",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": broker,
        "EVALSITE_MEDIA_ROOT": str(media),
        "EVALSITE_VAR_DIR": str(tmp_path / "var"),
        "EVALSITE_CHECKPOINT_ROOTS": os.pathsep.join(settings.EVALSITE_CHECKPOINT_ROOTS),
        # Short enough that a killed worker's task comes back within seconds in the tests (Redis;
        # RabbitMQ gives it back as soon as the worker's connection closes).
        "CELERY_VISIBILITY_TIMEOUT": "6",
        "CELERY_UNACKED_RESTORE_INTERVAL": "1",
        "EVALSITE_JOB_STALE_AFTER_S": "3",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def start_worker(worker_env, tmp_path):
    workers: list[WorkerProcess] = []

    def start(name: str = "w", *, beat: bool = False, env: dict[str, str] | None = None) -> WorkerProcess:
        """A worker on both queues; ``beat`` also runs the periodic tasks (watcher, alert rules) in it;
        ``env`` adds to or overrides ``worker_env`` (another broker, shorter intervals)."""
        worker = WorkerProcess(
            {**worker_env, **(env or {})}, tmp_path / f"worker-{name}.log", f"{name}{len(workers)}", beat
        ).start()
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` for tests that kill and restart the broker; the machine's shared
    Redis is never touched. ``persistent`` runs it as a deployment should (append-only file, fsync
    on every write), so a restart on the same folder keeps its queues; without it a restart loses them."""

    def __init__(self, folder: Path, *, persistent: bool) -> None:
        self.folder, self.persistent = folder, persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 20.0) -> "RedisServer":
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.folder),
                    "--save",
                    "",
                    *persistence,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} not answering after {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients, as when its machine dies."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def private_redis(tmp_path):
    servers: list[RedisServer] = []

    def start(*, persistent: bool) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", persistent=persistent).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def broker_at():
    """Point this process's Celery app (what ``job_create`` publishes with) at another broker."""
    from evalsite.celery import app

    original = app.conf.broker_url

    def switch(url: str) -> None:
        # broker_url itself is read from Django's CELERY_BROKER_URL; the read and write URLs win over it.
        app.conf.broker_write_url = app.conf.broker_read_url = url
        # The connection and producer pools are bound to the URL they were made for (and kombu
        # shares them between equal URLs, so they are dropped rather than closed).
        app._pool = None
        app.amqp._producer_pool = None

    yield switch
    switch(original)


# The listener-page tests share one Chromium per module and a screenshot folder per test.
browser = pytest.fixture(scope="module")(browser_fixture)
shots = pytest.fixture(shots_fixture)
