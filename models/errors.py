"""Exceptions raised by the ``models`` package."""

from __future__ import annotations

from collections.abc import Sequence

_MAX_LISTED = 25


def _listing(title: str, items: Sequence[str]) -> str:
    shown = list(items[:_MAX_LISTED])
    more = len(items) - len(shown)
    lines = [f"  {title} ({len(items)}):"] + [f"    {item}" for item in shown]
    if more > 0:
        lines.append(f"    ... and {more} more")
    return "\n".join(lines)


class ModelLoadError(Exception):
    """A checkpoint could not be turned into a model.

    Attributes:
        path: The file that was being loaded, if any.
        family: The family the loader expected (or detected), if known.
        missing_keys: Keys the model expects that the checkpoint lacks.
        unexpected_keys: Keys in the checkpoint the model does not have.
        shape_mismatches: ``"key: checkpoint (a, b) vs model (c, d)"`` lines.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        family: str | None = None,
        missing_keys: Sequence[str] = (),
        unexpected_keys: Sequence[str] = (),
        shape_mismatches: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.family = family
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.shape_mismatches = list(shape_mismatches)
        parts = [message]
        if path is not None:
            parts.append(f"  file: {path}")
        if family is not None:
            parts.append(f"  expected family: {family}")
        if self.missing_keys:
            parts.append(_listing("missing keys", self.missing_keys))
        if self.unexpected_keys:
            parts.append(_listing("unexpected keys", self.unexpected_keys))
        if self.shape_mismatches:
            parts.append(_listing("shape mismatches", self.shape_mismatches))
        super().__init__("\n".join(parts))


class CheckpointNotFoundError(ModelLoadError, FileNotFoundError):
    """The checkpoint file (or a file it needs, such as ``config.json``) does not exist."""
