"""Security regression tests run in the unit session (SQLite, eager Celery when asked)."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.security.test_access_matrix import build_access_world


@contextmanager
def at_most(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a FIFO opened for reading waits for a writer forever; a backtracking
    pattern runs for minutes)."""

    def stop(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def world():
    """Run R and S, tests A and B, and a client for each of the seven callers of the access matrix."""
    return build_access_world()
