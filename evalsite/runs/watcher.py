"""Checkpoint-directory watcher: registers each new checkpoint file of a run exactly once.

A file is registered only after two scans in a row saw the same size and modification time and
it is older than ``EVALSITE_WATCH_SETTLE_S`` — a checkpoint still being written changes between
scans. Temporary names (dot files, ``*.tmp``, ``*.part``, ``*~`` …) are never considered.
Exactly once: ``checkpoint_register`` is keyed by (run, step) under a unique constraint, and a
file already linked to its checkpoint is not looked at again.

A run token chooses the directory and the pattern: the directory must lie under the checkpoint
roots (checked again at every scan), only regular files are considered (no symlinks, FIFOs or
devices), a run's own pattern runs on RE2 (linear time in the name, whatever the pattern: no
catastrophic backtracking; backreferences and lookarounds are refused), and scans never overlap.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from stat import S_ISREG

import re2
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.runs.checkpoint_files import CheckpointPathRefused, checkpoint_dir_validate
from evalsite.runs.locks import exclusive
from evalsite.runs.models import Run, WatchedFile
from evalsite.runs.services import checkpoint_register

logger = logging.getLogger(__name__)

# (name, regex) tried in order when a run has no pattern of its own.
BUILTIN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hifigan", re.compile(r"^g_(?P<step>\d+)(?:\.pt|\.pth)?$")),
    ("lightning", re.compile(r"(?:^|[-_])step=(?P<step>\d+)(?:-v\d+)?\.ckpt$")),
    ("checkpoint_step", re.compile(r"^checkpoint_step_(?P<step>\d+)\.(?:pt|pth|ckpt|safetensors)$")),
)
TEMPORARY = re.compile(r"(^\.|~$|\.(tmp|temp|part|partial|incomplete|swp|lock)$|\.tmp[._-])", re.IGNORECASE)
MAX_DEPTH = 4  # Lightning writes under lightning_logs/version_N/checkpoints/

PATTERN_NO_STEP_GROUP = (
    "checkpoint_pattern must be a regular expression with a (?P<step>...) group; got {pattern!r}."
)
PATTERN_INVALID = (
    "checkpoint_pattern {pattern!r} is not a valid regular expression for RE2 (no backreferences or "
    "lookarounds): {error}."
)
WATCH_LOCK = "checkpoints-watch"
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error goes back to the caller, not to the worker's stderr


def compile_pattern(pattern: str) -> re2._Regexp | None:
    """The run's own pattern compiled by RE2, or None for the built-in names; a bad pattern is a ValidationError."""
    if not pattern:
        return None
    try:
        compiled = re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = (
            exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        )
        raise ValidationError(
            {"checkpoint_pattern": PATTERN_INVALID.format(pattern=pattern, error=reason)}
        ) from None
    if "step" not in compiled.groupindex:
        raise ValidationError({"checkpoint_pattern": PATTERN_NO_STEP_GROUP.format(pattern=pattern)})
    return compiled


def step_from_name(name: str, pattern: re2._Regexp | None = None) -> int | None:
    """The training step a checkpoint file name encodes, or None when it is not a checkpoint name."""
    if TEMPORARY.search(name):
        return None
    patterns = [pattern] if pattern is not None else [p for _, p in BUILTIN_PATTERNS]
    for regex in patterns:
        match = regex.search(name)
        if match:
            try:
                step = int(match.group("step"))
            except (TypeError, ValueError):
                return None
            return step if 0 <= step < 2**63 else None  # what a Checkpoint's step can hold
    return None


def _candidates(root: Path, pattern: re2._Regexp | None) -> dict[str, tuple[int, os.stat_result]]:
    found: dict[str, tuple[int, os.stat_result]] = {}
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).parts) - base_depth
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and depth < MAX_DEPTH]
        for name in filenames:
            step = step_from_name(name, pattern)
            if step is None:
                continue
            path = os.path.join(dirpath, name)
            try:
                stat = os.lstat(path)
            except FileNotFoundError:  # renamed or deleted between listing and stat
                continue
            if S_ISREG(stat.st_mode):  # a symlink could point anywhere; a FIFO would block its reader
                found[path] = (step, stat)
    return found


def checkpoints_watch(*, run: Run, now: float | None = None) -> list[int]:
    """Scan the run's checkpoint directory once; returns the ids of checkpoints registered now."""
    if not run.checkpoint_dir:
        return []
    # Checked at every scan: the roots may have changed, or the folder been replaced by a symlink.
    checkpoint_dir_validate(path=run.checkpoint_dir, owner=run.owner)
    root = Path(run.checkpoint_dir)
    if not root.is_dir():
        logger.warning("run %s: checkpoint directory %s does not exist (yet)", run.name, root)
        return []
    pattern = compile_pattern(run.checkpoint_pattern)
    now = time.time() if now is None else now
    settle_s = settings.EVALSITE_WATCH_SETTLE_S
    seen = {w.path: w for w in WatchedFile.objects.filter(run=run)}
    registered: list[int] = []
    for path, (step, stat) in sorted(_candidates(root, pattern).items(), key=lambda kv: kv[1][0]):
        watched = seen.get(path)
        if watched is None:
            WatchedFile.objects.create(
                run=run, path=path, step=step, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns
            )
            continue
        if watched.checkpoint_id is not None or watched.note:
            continue
        if (watched.size_bytes, watched.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            # Still being written: start counting again.
            WatchedFile.objects.filter(pk=watched.pk).update(
                size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, stable_scans=0
            )
            continue
        if stat.st_size == 0 or now - stat.st_mtime_ns / 1e9 < settle_s:
            WatchedFile.objects.filter(pk=watched.pk).update(stable_scans=watched.stable_scans + 1)
            continue
        try:
            checkpoint, created = checkpoint_register(run=run, step=step, uri=path)
        except (ConflictError, CheckpointPathRefused) as exc:
            WatchedFile.objects.filter(pk=watched.pk).update(note=exc.message[:500])
            continue
        except ApplicationError as exc:
            logger.warning("run %s: could not register %s: %s", run.name, path, exc.message)
            continue
        WatchedFile.objects.filter(pk=watched.pk).update(
            checkpoint=checkpoint, stable_scans=watched.stable_scans + 1
        )
        if created:
            registered.append(checkpoint.pk)
            logger.info("run %s: registered %s as step %d", run.name, path, step)
    return registered


def checkpoints_watch_all() -> dict[str, list[int]]:
    """One scan of every run that has a checkpoint directory (the beat task); returns at once, scanning
    nothing, while another scan runs."""
    with exclusive(WATCH_LOCK) as held:
        if not held:
            logger.info("a checkpoint scan is already running; this one is skipped")
            return {}
        return _watch_all()


def _watch_all() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for run in Run.objects.exclude(checkpoint_dir="").select_related("owner"):
        try:
            with transaction.atomic():
                ids = checkpoints_watch(run=run)
        except ValidationError as exc:
            logger.warning("run %s: %s", run.name, "; ".join(exc.messages))
            continue
        if ids:
            out[run.name] = ids
    return out
