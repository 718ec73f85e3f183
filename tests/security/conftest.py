"""Security regression tests run in the unit session (SQLite, eager Celery when asked) with the unit fixtures."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from tests.unit.conftest import eager, empty_cache, media  # noqa: F401  (pytest finds fixtures by name here)


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
