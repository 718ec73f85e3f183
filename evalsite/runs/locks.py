"""A lock that keeps a periodic task from overlapping itself, on every database evalsite supports.

PostgreSQL: a session-level advisory lock, shared by every worker machine using the database and
released by the server if the worker dies. SQLite (one machine by nature): ``flock`` on a file next to
the database, released by the kernel if the process dies; an in-memory database is private to its
process, so its lock is too.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)


def _lock_file(name: str) -> str:
    database = str(connection.settings_dict.get("NAME") or "")
    if os.path.isabs(database):
        return f"{database}.{name}.lock"
    digest = hashlib.sha256(f"{database}:{os.getpid()}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"evalsite-{name}-{digest}.lock")


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit integer) of the lock ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def _advisory_lock(name: str) -> Iterator[bool]:
    key = advisory_key(name)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        held = bool(cursor.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except DatabaseError as exc:  # the connection is gone, and the lock with it
                logger.warning("could not release lock %s: %s", name, exc)


@contextmanager
def _file_lock(name: str) -> Iterator[bool]:
    fd = os.open(_lock_file(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def exclusive(name: str):
    """``with exclusive(name) as held:`` — ``held`` is False at once when another process holds ``name``."""
    return _advisory_lock(name) if connection.vendor == "postgresql" else _file_lock(name)
