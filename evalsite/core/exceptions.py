"""Errors that services raise for a user to read: the message says what was wrong and where.

One shape for every caller: ``extra["fields"]`` maps each request field an error is about to the
reasons (``{"trial": ["Unknown trial."]}``); an error about no single field has no ``fields``, and a
400 of that kind is about the request as a whole (``error_body`` names it ``body`` or ``query``).
"""

from collections.abc import Iterable
from typing import Any


class ApplicationError(Exception):
    """The request is wrong (400)."""

    status_code = 400

    def __init__(
        self, message: str, extra: dict[str, Any] | None = None, *, fields: Iterable[str] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = dict(extra or {})
        named = {name: [message] for name in fields}
        if named:
            self.extra["fields"] = named


class NotFoundError(ApplicationError):
    """The thing asked for does not exist for this caller (404; never says whether it exists for others)."""

    status_code = 404


class ConflictError(ApplicationError):
    """The request is well-formed but the state does not allow it now (409)."""

    status_code = 409


def error_body(exc: ApplicationError, *, whole: str = "body") -> dict[str, Any]:
    """The ``{"message": ..., "extra": {...}}`` body of an error, as the API and the listener pages send it.

    A 400 about no single field names ``whole`` (the part of the request that was sent), so every
    400 lists at least one field.
    """
    extra = dict(exc.extra)
    if exc.status_code == 400 and not extra.get("fields"):
        extra["fields"] = {whole: [exc.message]}
    return {"message": exc.message, "extra": extra}
