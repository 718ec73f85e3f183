"""Which checkpoint files and directories the platform may read, and how a worker opens one.

A run token chooses paths, and the worker reads them: a path is allowed only when, resolved
(symlinks and ``..`` followed), it lies under one of the operator's ``EVALSITE_CHECKPOINT_ROOTS``.
A root containing ``{username}`` stands for the run owner's own folder: another user's folder, or
any folder of a run without an owner, is outside it. The platform's own secrets (the secret key
file, the SQLite database and its journals) and ``/proc``, ``/sys``, ``/dev`` are refused even
under a root. Every refusal is the same message, raised before the file is touched, so it tells
nothing about the file (whether it exists, its type, size or hash).

Opening re-checks the path and walks it one component at a time with ``O_NOFOLLOW`` from ``/``, so
a file swapped for a symlink after the check is refused too; the descriptor is ``fstat``-ed to
confirm a regular file before a byte is read (a FIFO is opened non-blocking, so it never blocks).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from evalsite.core.exceptions import ApplicationError

CHECKPOINT_PATH_REFUSED = (
    "this checkpoint path cannot be used: a checkpoint must be a regular file under one of the operator's "
    "checkpoint roots (EVALSITE_CHECKPOINT_ROOTS)."
)
CHECKPOINT_DIR_REFUSED = "checkpoint_dir must be a folder under one of the operator's checkpoint roots (EVALSITE_CHECKPOINT_ROOTS)."
CHECKPOINT_SHA256_MISMATCH = "the file's sha256 is not the sha256 given; not registered."
USERNAME_PLACEHOLDER = "{username}"
# Pseudo-filesystems: their files pass for regular files (``/proc/self/environ``) or block when read.
_NEVER_UNDER = ("/proc", "/sys", "/dev")
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


class CheckpointPathRefused(ApplicationError):
    """The path is outside the checkpoint roots, or not a regular file; the message never says which."""

    def __init__(self, field: str = "uri", message: str = CHECKPOINT_PATH_REFUSED) -> None:
        super().__init__(message, extra={"fields": {field: [message]}})


def _owner_name(owner) -> str | None:
    name = getattr(owner, "username", None) or None
    # A username such as ".." would turn the owner's folder into its parent.
    if name is None or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        return None
    return name


def checkpoint_roots(owner=None) -> list[str]:
    """The resolved roots a run of ``owner`` may read from (``{username}`` roots only with an owner)."""
    roots = []
    name = _owner_name(owner)
    for root in settings.EVALSITE_CHECKPOINT_ROOTS:
        root = str(root)
        if USERNAME_PLACEHOLDER in root:
            if name is None:
                continue
            root = root.replace(USERNAME_PLACEHOLDER, name)
        roots.append(os.path.realpath(root))
    return roots


def _protected_paths() -> set[str]:
    paths = {os.path.realpath(Path(settings.VAR_DIR) / "secret_key")}
    for db in settings.DATABASES.values():
        name = str(db.get("NAME") or "")
        if db.get("ENGINE", "").endswith("sqlite3") and os.path.isabs(name):
            paths |= {os.path.realpath(name + suffix) for suffix in _SQLITE_COMPANIONS}
    return paths


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve(raw: str) -> str | None:
    """The absolute, symlink-free form of ``raw``; None for a relative path, a URI or an unusable string."""
    if not raw or "\0" in raw or not os.path.isabs(raw):
        return None
    try:
        return os.path.realpath(raw)
    except (OSError, ValueError):
        return None


def checkpoint_path_resolve(*, uri: str, owner=None) -> str:
    """The resolved path of a checkpoint file a run of ``owner`` may read; ``CheckpointPathRefused`` otherwise.

    Only the path is examined (its symlinks resolved), never the file's content or type: that is
    ``checkpoint_file_open``'s job, on a path already allowed.
    """
    path = _resolve(uri)
    if (
        path is None
        or any(_inside(path, never) for never in _NEVER_UNDER)
        or path in _protected_paths()
        or not any(_inside(path, root) for root in checkpoint_roots(owner))
    ):
        raise CheckpointPathRefused()
    return path


def checkpoint_dir_validate(*, path: str, owner=None) -> str:
    """The resolved watched directory, or a ValidationError on ``checkpoint_dir`` (same message for any refusal)."""
    resolved = _resolve(path)
    if (
        resolved is None
        or any(_inside(resolved, never) for never in _NEVER_UNDER)
        or not any(_inside(resolved, root) for root in checkpoint_roots(owner))
    ):
        raise ValidationError({"checkpoint_dir": CHECKPOINT_DIR_REFUSED})
    return resolved


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A checkpoint file opened for reading: its resolved path, descriptor and ``fstat``."""

    path: str
    fd: int
    stat: os.stat_result

    def sha256(self, chunk_size: int = 1 << 20) -> str:
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(self.fd, chunk_size, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def still_at_path(self) -> bool:
        """Whether ``path`` still names the opened file (a later reader that opens it by path reads these bytes)."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (self.stat.st_dev, self.stat.st_ino)


_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Non-blocking: opening a FIFO for reading would otherwise wait for a writer forever.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_without_symlinks(path: str) -> int:
    """Open ``path`` (absolute, resolved) following no symlink at any component; OSError otherwise."""
    if os.open not in os.supports_dir_fd:  # pragma: no cover - every POSIX platform evalsite runs on
        return os.open(path, _FILE_FLAGS)
    parts = Path(path).parts
    dir_fd = os.open(parts[0], _DIR_FLAGS)
    try:
        for part in parts[1:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def checkpoint_file_open(*, uri: str, owner=None) -> Iterator[OpenedCheckpoint]:
    """Check ``uri`` against the roots again and open it as a regular file, without following symlinks.

    Raises ``CheckpointPathRefused`` for a path outside the roots, a symlink, a directory, a FIFO or
    a device, and ``FileNotFoundError`` only for a missing file under a root.
    """
    path = checkpoint_path_resolve(uri=uri, owner=owner)
    try:
        fd = _open_without_symlinks(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        raise CheckpointPathRefused() from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointPathRefused()
        yield OpenedCheckpoint(path=path, fd=fd, stat=st)
    finally:
        os.close(fd)
