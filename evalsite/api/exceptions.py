"""The single API exception handler: every error becomes ``{"message": ..., "extra": {...}}``.

Field errors are listed under ``extra.fields`` as ``{"field": ["why", ...]}`` and the message
names the first of them, so a client that prints only the message still learns which field.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors" and not prefix:
                name = "non_field_errors"
            out.update(_flatten(value, name))
    elif isinstance(detail, list) and detail and all(not isinstance(d, (dict, list)) for d in detail):
        out[prefix or "non_field_errors"] = [str(d) for d in detail]
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}[{index}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _fields_message(fields: dict[str, list[str]]) -> str:
    first, reasons = next(iter(fields.items()))
    more = f" (and {len(fields) - 1} more field(s))" if len(fields) > 1 else ""
    return f"Invalid input: {first}: {reasons[0]}{more}"


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(fields)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, ApplicationError):
        code = (status.HTTP_404_NOT_FOUND if isinstance(exc, NotFoundError)
                else status.HTTP_409_CONFLICT if isinstance(exc, ConflictError) else status.HTTP_400_BAD_REQUEST)
        return Response({"message": exc.message, "extra": exc.extra}, status=code)

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        response.data = {"message": _fields_message(fields), "extra": {"fields": fields}}
    elif isinstance(exc, exceptions.ParseError):
        response.data = {"message": f"The request body is not valid JSON: {exc.detail}",
                         "extra": {"fields": {"body": [str(exc.detail)]}}}
    else:
        detail = response.data.get("detail", exc) if isinstance(response.data, dict) else exc
        response.data = {"message": str(detail), "extra": {}}
    return response
