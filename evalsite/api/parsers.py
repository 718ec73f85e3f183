"""The API's JSON parser: DRF's, with a size limit and no way to crash it with nesting.

The API's limit (``EVALSITE_API_MAX_BODY_BYTES``, 1 MiB) is below Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``
(``EVALSITE_MAX_UPLOAD_BYTES``, 2.5 MiB), which DRF meets as it reads the body
(the exception handler turns that into the same 413). DRF reads it only in the view, after
authentication and the rate limits, so only a token holder can make the server read a large body.
``json`` raises ``RecursionError``, not ``ValueError``, for a body such as 100 000 ``[``: a 500 in
plain DRF, a 400 here.
"""

from __future__ import annotations

import io

from django.conf import settings
from rest_framework import exceptions, parsers, status

from evalsite.listening.services.imports import IMPORT_BODY_SLACK

BODY_TOO_LARGE = "The request body is {size} bytes; the API accepts at most {limit} bytes."
BODY_TOO_DEEP = "JSON parse error - nested too deeply"


class RequestBodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "body_too_large"


def body_limit() -> int:
    return min(settings.EVALSITE_API_MAX_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2**63)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = body_limit()
        request = (parser_context or {}).get("request")
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            declared = 0  # a nonsense header: the read below is capped all the same
        if declared > limit:
            raise RequestBodyTooLarge(BODY_TOO_LARGE.format(size=declared, limit=limit))
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise RequestBodyTooLarge(BODY_TOO_LARGE.format(size=f"more than {limit}", limit=limit))
        try:
            return super().parse(io.BytesIO(data), media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError(BODY_TOO_DEEP) from None


class ImportMultiPartParser(parsers.MultiPartParser):
    """A multipart upload of a ratings file: a declared body far over ``EVALSITE_IMPORT_MAX_BYTES`` is refused
    (413) before a byte of it is read or spooled to disk."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.EVALSITE_IMPORT_MAX_BYTES + IMPORT_BODY_SLACK
        request = (parser_context or {}).get("request")
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            declared = 0
        if declared > limit:
            raise RequestBodyTooLarge(BODY_TOO_LARGE.format(size=declared, limit=limit))
        return super().parse(stream, media_type, parser_context)
