"""The single API exception handler: every error becomes ``{"message": ..., "extra": {...}}``.

Field errors are listed under ``extra.fields`` as ``{"field": ["why", ...]}`` and the message
names the first of them, so a client that prints only the message still learns which field.
Every 400 has ``extra.fields``: an error about no single field is named ``body`` (or ``query``).
A 429 (rate limit) carries ``Retry-After``; a 413 names ``body``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from evalsite.api.fields import printable
from evalsite.api.parsers import BODY_TOO_LARGE, RequestBodyTooLarge, body_limit
from evalsite.core.exceptions import ApplicationError, error_body


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            # DRF reports the items of a many=True serializer by index: rules[0], like lists.
            name = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else str(key)
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


NON_FIELD_KEYS = ("non_field_errors", "__all__")


def _whole_request(context: dict) -> str:
    request = context.get("request")
    return "body" if request is None or request.method in ("POST", "PUT", "PATCH") else "query"


def _name_non_field_errors(fields: dict[str, list[str]], context: dict) -> dict[str, list[str]]:
    """Errors about no single field (a body that is not an object, ``null``, a model-wide constraint)
    are about the request as a whole: named ``body``, or ``query`` for a request without one, so every
    400 names a part of the request the client sent."""
    whole = _whole_request(context)
    named: dict[str, list[str]] = {}
    for name, reasons in fields.items():
        named.setdefault(whole if name in NON_FIELD_KEYS else name, []).extend(reasons)
    return named


def _fields_message(fields: dict[str, list[str]]) -> str:
    first, reasons = next(iter(fields.items()))
    more = f" (and {len(fields) - 1} more field(s))" if len(fields) > 1 else ""
    return f"Invalid input: {first}: {reasons[0]}{more}"


def _printable(value: Any) -> Any:
    # DRF echoes some input in messages ('"x" is not a valid choice.'); an unpaired surrogate in it
    # made the renderer's UTF-8 encoding fail, a 500 instead of the 400.
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


NO_SUCH_ENDPOINT = "No API endpoint at {path} (ids in paths are whole numbers ≥ 0; see /api/v1/schema/)."


@csrf_exempt  # no effect to forge; without it a POST to a wrong URL got the CSRF page (HTML 403)
def endpoint_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """The error body for an /api/v1/ URL no route matches (a negative or non-numeric id, a typo), not
    Django's HTML 404 page."""
    return JsonResponse(
        {"message": NO_SUCH_ENDPOINT.format(path=printable(request.path)), "extra": {}}, status=404
    )


def exception_handler(exc: Exception, context: dict) -> Response | None:
    response = _handle(exc, context)
    if response is not None:
        response.data = _printable(response.data)
    return response


def _handle(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(fields)
    if isinstance(exc, RequestDataTooBig):  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE, met as DRF reads the body
        request = context.get("request")
        size = request.META.get("CONTENT_LENGTH", "?") if request is not None else "?"
        exc = RequestBodyTooLarge(BODY_TOO_LARGE.format(size=size, limit=body_limit()))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, ApplicationError):
        return Response(error_body(exc, whole=_whole_request(context)), status=exc.status_code)

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _name_non_field_errors(_flatten(exc.detail), context)
        response.data = {"message": _fields_message(fields), "extra": {"fields": fields}}
    elif isinstance(exc, exceptions.ParseError):
        response.data = {
            "message": f"The request body is not valid JSON: {exc.detail}",
            "extra": {"fields": {"body": [str(exc.detail)]}},
        }
    elif isinstance(exc, RequestBodyTooLarge):
        response.data = {"message": str(exc.detail), "extra": {"fields": {"body": [str(exc.detail)]}}}
    else:
        detail = response.data.get("detail", exc) if isinstance(response.data, dict) else exc
        response.data = {"message": str(detail), "extra": {}}
    return response
