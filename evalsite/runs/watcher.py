"""Checkpoint-directory watcher: registers each new checkpoint file of a run exactly once.

A file is registered only after two scans in a row saw the same size and modification time and
it is older than ``EVALSITE_WATCH_SETTLE_S`` — a checkpoint still being written changes between
scans. Temporary names (dot files, ``*.tmp``, ``*.part``, ``*~`` …) are never considered.
Exactly once: ``checkpoint_register`` is keyed by (run, step) under a unique constraint, and a
file already linked to its checkpoint is not looked at again.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.runs.models import Run, WatchedFile

logger = logging.getLogger(__name__)

# (name, regex) tried in order when a run has no pattern of its own.
BUILTIN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hifigan", re.compile(r"^g_(?P<step>\d+)(?:\.pt|\.pth)?$")),
    ("lightning", re.compile(r"(?:^|[-_])step=(?P<step>\d+)(?:-v\d+)?\.ckpt$")),
    ("checkpoint_step", re.compile(r"^checkpoint_step_(?P<step>\d+)\.(?:pt|pth|ckpt|safetensors)$")),
)
TEMPORARY = re.compile(r"(^\.|~$|\.(tmp|temp|part|partial|incomplete|swp|lock)$|\.tmp[._-])", re.IGNORECASE)
MAX_DEPTH = 4  # Lightning writes under lightning_logs/version_N/checkpoints/

PATTERN_NO_STEP_GROUP = "checkpoint_pattern must be a regular expression with a (?P<step>...) group; got {pattern!r}."
PATTERN_INVALID = "checkpoint_pattern {pattern!r} is not a valid regular expression: {error}."


def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """The run's own pattern, or None for the built-in names; a bad pattern is a ValidationError."""
    if not pattern:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValidationError({"checkpoint_pattern": PATTERN_INVALID.format(pattern=pattern, error=exc)}) from None
    if "step" not in compiled.groupindex:
        raise ValidationError({"checkpoint_pattern": PATTERN_NO_STEP_GROUP.format(pattern=pattern)})
    return compiled


def step_from_name(name: str, pattern: re.Pattern[str] | None = None) -> int | None:
    """The training step a checkpoint file name encodes, or None when it is not a checkpoint name."""
    if TEMPORARY.search(name):
        return None
    patterns = [pattern] if pattern is not None else [p for _, p in BUILTIN_PATTERNS]
    for regex in patterns:
        match = regex.search(name)
        if match:
            try:
                return int(match.group("step"))
            except (TypeError, ValueError):
                return None
    return None


def _candidates(root: Path, pattern: re.Pattern[str] | None) -> dict[str, tuple[int, os.stat_result]]:
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
                stat = os.stat(path)
            except FileNotFoundError:  # renamed or deleted between listing and stat
                continue
            found[path] = (step, stat)
    return found


def checkpoints_watch(*, run: Run, now: float | None = None) -> list[int]:
    """Scan the run's checkpoint directory once; returns the ids of checkpoints registered now."""
    from evalsite.runs.services import checkpoint_register

    if not run.checkpoint_dir:
        return []
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
            WatchedFile.objects.create(run=run, path=path, step=step, size_bytes=stat.st_size,
                                       mtime_ns=stat.st_mtime_ns)
            continue
        if watched.checkpoint_id is not None or watched.note:
            continue
        if (watched.size_bytes, watched.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            # Still being written: start counting again.
            WatchedFile.objects.filter(pk=watched.pk).update(size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                                             stable_scans=0)
            continue
        if stat.st_size == 0 or now - stat.st_mtime_ns / 1e9 < settle_s:
            WatchedFile.objects.filter(pk=watched.pk).update(stable_scans=watched.stable_scans + 1)
            continue
        try:
            checkpoint, created = checkpoint_register(run=run, step=step, uri=path)
        except ConflictError as exc:
            WatchedFile.objects.filter(pk=watched.pk).update(note=exc.message[:500])
            continue
        except ApplicationError as exc:
            logger.warning("run %s: could not register %s: %s", run.name, path, exc.message)
            continue
        WatchedFile.objects.filter(pk=watched.pk).update(checkpoint=checkpoint, stable_scans=watched.stable_scans + 1)
        if created:
            registered.append(checkpoint.pk)
            logger.info("run %s: registered %s as step %d", run.name, path, step)
    return registered


def checkpoints_watch_all() -> dict[str, list[int]]:
    """One scan of every run that has a checkpoint directory (the beat task)."""
    out: dict[str, list[int]] = {}
    for run in Run.objects.exclude(checkpoint_dir=""):
        try:
            with transaction.atomic():
                ids = checkpoints_watch(run=run)
        except ValidationError as exc:
            logger.warning("run %s: %s", run.name, "; ".join(exc.messages))
            continue
        if ids:
            out[run.name] = ids
    return out
