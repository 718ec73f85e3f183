"""Issue 14 finding 2: a run token made the platform read any file the worker could read.

As run: the token registered another user's checkpoint and a directory and read the audio generated
from them; PATCHed checkpoint_dir to ``/`` and to another user's folder, and the watcher registered
their files into its run; the sha256 the API returned disclosed hashes of /etc/passwd, the secret key,
the SQLite database and /proc/self/environ; errors listed the files inside directories; registering
the SQLite database broke it for everyone (the worker's open/close dropped SQLite's locks).
Now every such path gets one message that says nothing about the file, no row is written and the
file is never opened.
"""

import builtins
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from evalsite.jobs.models import Job
from evalsite.jobs.services import job_execute
from evalsite.runs import checkpoint_files
from evalsite.runs.checkpoint_files import (
    CHECKPOINT_DIR_REFUSED,
    CHECKPOINT_PATH_REFUSED,
    CHECKPOINT_SHA256_MISMATCH,
)
from evalsite.runs.generation_services import CHECKPOINT_SHA256_CHANGED, generation_job_work
from evalsite.runs.models import Checkpoint, Run, WatchedFile
from evalsite.runs.services import checkpoint_register, run_create
from evalsite.runs.watcher import checkpoints_watch_all
from tests.factories import EvalSetFactory
from tests.security.conftest import at_most

pytestmark = pytest.mark.django_db

REFUSED_BODY = {"message": CHECKPOINT_PATH_REFUSED, "extra": {"fields": {"uri": [CHECKPOINT_PATH_REFUSED]}}}


class World:
    """alice owns the run; bob is another researcher; each has a folder under the per-user root."""

    def __init__(self, tmp_path: Path, settings) -> None:
        self.var = tmp_path / "var"
        self.var.mkdir()
        settings.VAR_DIR = self.var
        self.secret_key = self.var / "secret_key"
        self.secret_key.write_text("not-to-be-hashed")
        self.database = self.var / "evalsite.sqlite3"
        with sqlite3.connect(self.database) as db:
            db.execute("CREATE TABLE t (x INTEGER)")
            db.execute("INSERT INTO t VALUES (1)")
        db.close()
        settings.EVALSITE_CHECKPOINT_ROOTS = (str(tmp_path / "users" / "{username}"),)
        users = get_user_model().objects
        self.alice, self.bob = (
            users.create_user("alice", password="x"),
            users.create_user("bob", password="x"),
        )
        self.alice_dir, self.bob_dir = tmp_path / "users" / "alice", tmp_path / "users" / "bob"
        self.alice_dir.mkdir(parents=True)
        self.bob_dir.mkdir(parents=True)
        self.own = self.alice_dir / "g_00001000.pt"
        self.own.write_bytes(b"alice's weights")
        self.bobs = self.bob_dir / "g_00001000.pt"
        self.bobs.write_bytes(b"bob's unpublished weights")
        self.run, self.token = run_create(
            name="alice-run",
            kind="vocoder",
            model_family="hifigan",
            eval_set=EvalSetFactory(),
            owner=self.alice,
        )
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")
        self.url = f"/api/v1/runs/{self.run.pk}/checkpoints/"

    def register(self, uri: str, **body):
        return self.client.post(self.url, {"step": 1000, "uri": uri, **body}, format="json")


@pytest.fixture
def world(tmp_path, settings) -> World:
    return World(tmp_path, settings)


@pytest.fixture
def opened(monkeypatch):
    """The real paths of every file opened while the test runs (os.open, open, io.open)."""
    paths: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def where(path, dir_fd=None) -> str:
        if isinstance(path, int):
            return f"fd:{path}"
        if dir_fd is not None:
            return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path))
        return os.path.realpath(os.fsdecode(path))

    def spy_os_open(path, flags, mode=0o777, *, dir_fd=None):
        paths.append(where(path, dir_fd))
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def spy_open(file, *args, **kwargs):
        paths.append(where(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    return paths


def attacks(world: World, tmp_path: Path) -> dict[str, str]:
    fifo = world.alice_dir / "g_00002000.pt"
    os.mkfifo(fifo)
    (world.alice_dir / "g_00003000.pt").symlink_to(world.bobs)
    (world.alice_dir / "passwd.pt").symlink_to("/etc/passwd")
    return {
        "/etc/passwd": "/etc/passwd",
        "the secret key file": str(world.secret_key),
        "the SQLite database": str(world.database),
        "/proc/self/environ": "/proc/self/environ",
        "another user's checkpoint": str(world.bobs),
        "another user's folder": str(world.bob_dir),
        "a directory under the own root": str(world.alice_dir),
        "a FIFO under the own root": str(fifo),
        "a symlink in the root to another user's file": str(world.alice_dir / "g_00003000.pt"),
        "a symlink in the root to /etc/passwd": str(world.alice_dir / "passwd.pt"),
        "a .. path out of the root": f"{world.alice_dir}/../bob/g_00001000.pt",
        "a file that does not exist, outside the roots": "/etc/no-such-file-here",
        "a relative path": "g_00001000.pt",
        "a URI": "file:///etc/passwd",
    }


def test_every_path_outside_the_roots_or_not_a_regular_file_gets_one_message_and_nothing_happens(
    world, tmp_path, opened
):
    outside = {
        "/etc/passwd",
        str(world.secret_key),
        str(world.database),
        "/proc/self/environ",
        str(world.bobs),
        str(world.bob_dir),
        "/etc/no-such-file-here",
    }
    for what, uri in attacks(world, tmp_path).items():
        with at_most(10):
            response = world.register(uri)
        assert (response.status_code, response.json()) == (400, REFUSED_BODY), what
        assert "sha256" not in response.content.decode() and "size" not in response.content.decode(), what
    assert not Checkpoint.objects.exists() and not Job.objects.exists()
    # The files outside the roots were not even opened: the refusal comes from the resolved path alone.
    assert not outside & {os.path.realpath(p) for p in opened}


def _other_process_can_write(database: Path) -> str:
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
        "try:\n    db.execute('BEGIN IMMEDIATE')\n    print('wrote')\n"
        "except sqlite3.OperationalError:\n    print('locked')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(database)], capture_output=True, text=True, timeout=60
    ).stdout.strip()


def test_registering_the_sqlite_database_leaves_its_locks_and_content_intact(world):
    holder = sqlite3.connect(world.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (2)")

    assert world.register(str(world.database)).json() == REFUSED_BODY

    # Had this process opened and closed the file, its POSIX locks would be gone and a writer in another
    # process would get in beside this one (the attack's "database disk image is malformed"). SQLite
    # arbitrates connections within one process itself: the second writer must be another process.
    assert _other_process_can_write(world.database) == "locked"
    holder.execute("COMMIT")
    other = sqlite3.connect(world.database)
    assert other.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [row[0] for row in other.execute("SELECT x FROM t ORDER BY x")] == [1, 2]


def test_the_platforms_own_files_are_refused_even_under_a_misconfigured_root(world, settings):
    settings.EVALSITE_CHECKPOINT_ROOTS = (str(world.var),)
    assert world.register(str(world.secret_key)).json() == REFUSED_BODY
    assert not Checkpoint.objects.exists()


def test_a_checkpoint_under_the_owners_root_is_registered_and_a_wrong_sha256_is_refused(world):
    import hashlib

    wrong = world.register(str(world.own), sha256="0" * 64)
    assert wrong.status_code == 400 and wrong.json()["extra"]["fields"] == {
        "sha256": [CHECKPOINT_SHA256_MISMATCH]
    }
    assert not Checkpoint.objects.exists()

    right = world.register(
        f"{world.alice_dir}/sub/../g_00001000.pt", sha256=hashlib.sha256(world.own.read_bytes()).hexdigest()
    )
    assert right.status_code == 201, right.json()
    assert Checkpoint.objects.get().size_bytes == len(world.own.read_bytes())


def test_a_run_without_an_owner_has_no_folder_under_a_per_user_root(world):
    run, _ = run_create(name="no-owner", kind="vocoder", model_family="hifigan")
    with pytest.raises(checkpoint_files.CheckpointPathRefused):
        checkpoint_register(run=run, step=1, uri=str(world.own))


def test_the_management_command_refuses_the_same_paths(world):
    with pytest.raises(CommandError, match=r"^this checkpoint path cannot be used"):
        call_command("register_checkpoint", "alice-run", "1000", "/etc/passwd")
    assert not Checkpoint.objects.exists()


@pytest.mark.parametrize("where", ["/", "bob", "bob/..", "symlink-to-bob", "/proc"])
def test_checkpoint_dir_outside_the_owners_root_is_refused_and_the_run_is_unchanged(world, where):
    if where == "symlink-to-bob":
        (world.alice_dir / "link").symlink_to(world.bob_dir)
        path = str(world.alice_dir / "link")
    else:
        path = where if where.startswith("/") else str(world.alice_dir.parent / where)
    response = world.client.patch(f"/api/v1/runs/{world.run.pk}/", {"checkpoint_dir": path}, format="json")
    assert response.status_code == 400
    assert response.json()["extra"]["fields"] == {"checkpoint_dir": [CHECKPOINT_DIR_REFUSED]}
    world.run.refresh_from_db()
    assert world.run.checkpoint_dir == ""

    ok = world.client.patch(
        f"/api/v1/runs/{world.run.pk}/", {"checkpoint_dir": str(world.alice_dir)}, format="json"
    )
    assert ok.status_code == 200, ok.json()


def test_a_researcher_cannot_create_a_run_watching_another_users_folder(world):
    from evalsite.api.services import researcher_token_issue

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {researcher_token_issue(user=world.alice)}")
    response = client.post(
        "/api/v1/runs/",
        {
            "name": "sneaky",
            "kind": "vocoder",
            "model_family": "hifigan",
            "checkpoint_dir": str(world.bob_dir),
        },
        format="json",
    )
    assert response.status_code == 400 and "checkpoint_dir" in response.json()["extra"]["fields"]
    assert not Run.objects.filter(name="sneaky").exists()


def test_the_watcher_reads_nothing_from_a_folder_set_before_the_roots_or_a_symlink_or_fifo_inside(
    world, settings, opened
):
    settings.EVALSITE_WATCH_SETTLE_S = 0
    # A checkpoint_dir stored before this check existed (or the roots changed since).
    Run.objects.filter(pk=world.run.pk).update(checkpoint_dir=str(world.bob_dir))
    with at_most(10):
        assert checkpoints_watch_all() == {} and checkpoints_watch_all() == {}
    assert not WatchedFile.objects.exists() and not Checkpoint.objects.exists()

    os.mkfifo(world.alice_dir / "g_00002000")
    (world.alice_dir / "g_00003000").symlink_to(world.bobs)
    (world.alice_dir / "g_00004000").symlink_to("/etc/passwd")
    old = os.stat(world.own).st_mtime - 60
    os.utime(world.own, (old, old))
    Run.objects.filter(pk=world.run.pk).update(checkpoint_dir=str(world.alice_dir))
    with at_most(10):
        checkpoints_watch_all()
        registered = checkpoints_watch_all()
    assert registered == {"alice-run": [Checkpoint.objects.get().pk]}
    assert list(WatchedFile.objects.values_list("path", flat=True)) == [str(world.own)]
    assert Checkpoint.objects.get().uri == str(world.own)
    assert not {str(world.bobs), "/etc/passwd"} & {os.path.realpath(p) for p in opened}


def _generate(checkpoint) -> Job:
    job = Job.objects.create(kind=Job.Kind.GENERATION, run=checkpoint.run, checkpoint=checkpoint)
    with at_most(20):
        return job_execute(job_id=job.pk, worker="test", work=generation_job_work)


@pytest.mark.parametrize(
    "swap",
    [
        "symlink to another user's file",
        "symlink to /etc/passwd",
        "FIFO",
        "folder above replaced by a symlink",
    ],
)
def test_the_worker_checks_again_and_refuses_a_file_swapped_after_registration(world, swap, opened):
    from evalsite.runs import generation as gen

    gen.model_cache.clear()
    checkpoint, _ = checkpoint_register(
        run=world.run,
        step=1000,
        uri=str(world.alice_dir / "sub" / "g.pt") if swap.startswith("folder") else str(world.own),
        evaluate=False,
    )
    if swap.startswith("folder"):
        world.alice_dir.joinpath("sub").symlink_to(world.bob_dir, target_is_directory=True)
        target = world.bob_dir / "g.pt"
        target.write_bytes(b"bob's")
    else:
        world.own.unlink()
        if swap == "FIFO":
            os.mkfifo(world.own)
        else:
            world.own.symlink_to(world.bobs if "another" in swap else "/etc/passwd")
        target = world.bobs if "another" in swap else Path("/etc/passwd")
    opened.clear()

    job = _generate(checkpoint)

    checkpoint.refresh_from_db()
    assert (job.status, job.error) == ("failed", CHECKPOINT_PATH_REFUSED)
    # Nothing learnt about the swapped-in file: no hash, and the size is still the registered file's.
    assert (checkpoint.status, checkpoint.sha256) == ("failed", "")
    assert checkpoint.size_bytes in (None, len(b"alice's weights"))
    assert gen.model_cache.loads == 0
    if swap != "FIFO":
        assert str(target.resolve()) not in {os.path.realpath(p) for p in opened}
    payload = APIClient()
    payload.credentials(HTTP_AUTHORIZATION=f"Bearer {world.token}")
    body = payload.get(f"{world.url}1000/").json()
    assert body["sha256"] == "" and json.dumps(body).count("bob") == 0


def test_the_worker_refuses_a_file_whose_content_changed_from_the_registered_sha256(world):
    import hashlib

    checkpoint, _ = checkpoint_register(
        run=world.run,
        step=1000,
        uri=str(world.own),
        evaluate=False,
        sha256=hashlib.sha256(world.own.read_bytes()).hexdigest(),
    )
    world.own.write_bytes(b"something else")
    job = _generate(checkpoint)
    assert (job.status, job.error) == ("failed", CHECKPOINT_SHA256_CHANGED)
