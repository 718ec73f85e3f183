"""Errors that services raise for a user to read: the message says what was wrong and where."""

from typing import Any


class ApplicationError(Exception):
    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class NotFoundError(ApplicationError):
    """The thing asked for does not exist for this caller (404; never says whether it exists for others)."""


class ConflictError(ApplicationError):
    """The request is well-formed but the state does not allow it now (409)."""
