"""Issue 14 finding 3 on PostgreSQL: a checkpoint scan started while another worker's scan runs returns at
once without scanning (an advisory lock, which the server releases with its holder's connection)."""

import os
import time

import psycopg
import pytest
from django.db import connection

from evalsite.runs.locks import advisory_key
from evalsite.runs.models import WatchedFile
from evalsite.runs.watcher import WATCH_LOCK, checkpoints_watch_all
from tests.factories import RunFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def test_a_scan_while_another_connection_holds_the_lock_scans_nothing_until_it_is_gone(tmp_path, settings):
    settings.EVALSITE_WATCH_SETTLE_S = 0
    RunFactory(checkpoint_dir=str(tmp_path))
    (tmp_path / "g_00001000").write_bytes(b"weights")
    old = time.time() - 60
    os.utime(tmp_path / "g_00001000", (old, old))
    db = connection.settings_dict
    other_worker = psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or 5432,
        user=db["USER"] or "postgres",
        dbname=db["NAME"],
        autocommit=True,
    )
    try:
        assert other_worker.execute("SELECT pg_try_advisory_lock(%s)", [advisory_key(WATCH_LOCK)]).fetchone()[
            0
        ]
        started = time.perf_counter()
        assert checkpoints_watch_all() == {}
        assert time.perf_counter() - started < 1 and not WatchedFile.objects.exists()
    finally:
        other_worker.close()  # a worker that dies loses its connection, and the lock with it
    checkpoints_watch_all()
    assert WatchedFile.objects.count() == 1
