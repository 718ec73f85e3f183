"""The cheap answer to the most frequent request: an alert poll whose ETag is still current.

Training jobs poll ``GET /api/v1/runs/{id}/alerts/`` every few seconds and almost always nothing
changed. This middleware answers that case with a 304 after one indexed lookup (token hash →
run id and newest alert cursor), before sessions, CSRF, authentication middleware and DRF run.
Everything else — a changed ETag, no ETag, bad parameters, another token kind — falls through to
``AlertListApi``, which computes the same ETag and gives the full answer or the error.

A 304 counts against the run token's rate limit like any request (one cache ``incr``): a poller
stuck in a tight loop must be slowed here too. Over the limit it falls through, and DRF's throttle
answers 429 with ``Retry-After``. Failed tokens never get a 304, so the per-IP budget for them is
kept where they end up, in DRF's authentication.
"""

from __future__ import annotations

import re

from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified

from evalsite.api import throttling
from evalsite.api.alerts import MAX_LIMIT, alerts_etag
from evalsite.api.authentication import RUN_TOKEN_PREFIX, token_hash
from evalsite.runs.models import Run

ALERTS_PATH = re.compile(r"^/api/v1/runs/(\d+)/alerts/$")


def _int(value: str | None, default: int, low: int, high: int) -> int | None:
    if value is None:
        return default
    if not value.isdigit():
        return None
    number = int(value)
    return number if low <= number <= high else None


def _run_row(token_sha256: str) -> tuple[int, int] | None:
    """(run id, newest alert cursor) for a run-token hash. Plain SQL: building the ORM query cost
    more CPU than everything else on this path."""
    table = connection.ops.quote_name(Run._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, alert_cursor FROM {table} WHERE api_token_hash = %s LIMIT 1", [token_sha256]
        )
        return cursor.fetchone()


class AlertPollNotModifiedMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and "HTTP_IF_NONE_MATCH" in request.META:
            answer = self._not_modified(request)
            if answer is not None:
                return answer
        return self.get_response(request)

    @staticmethod
    def _not_modified(request: HttpRequest) -> HttpResponse | None:
        match = ALERTS_PATH.match(request.path_info)
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if match is None or not header.startswith("Bearer " + RUN_TOKEN_PREFIX):
            return None
        request.get_host()  # the ALLOWED_HOSTS check CommonMiddleware would have made (raises DisallowedHost)
        after = _int(request.GET.get("after"), 0, 0, 2**63 - 1)
        limit = _int(request.GET.get("limit"), 100, 1, MAX_LIMIT)
        if after is None or limit is None or set(request.GET) - {"after", "limit"}:
            return None
        if throttling.over("anon", throttling.client_ip(request)) is not None:
            return None  # an IP refused for guessing gets no 304 either: it would tell a right token apart
        row = _run_row(token_hash(header[7:].strip()))
        if row is None or row[0] != int(match.group(1)):
            return None  # DRF gives the 401 / 404
        etag = alerts_etag(row[0], after, limit, row[1])
        if etag not in request.META["HTTP_IF_NONE_MATCH"]:
            return None
        if throttling.hit("token", f"run:{row[0]}") is not None:
            return None  # over the run's budget: DRF's throttle answers the 429 with Retry-After
        response = HttpResponseNotModified()
        response["ETag"] = etag
        return response
