"""Cross-cutting request handling."""

import logging
import secrets

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "The database is briefly unavailable; please retry."
# Seconds a client should wait before retrying: a dropped connection is replaced by the next request,
# so the first retry may come at once; clients back off exponentially beyond this on their own, so a
# longer outage does not turn into a flood of retries.
DATABASE_RETRY_AFTER_S = 1


def _retry_is_safe(request: HttpRequest) -> bool:
    """Whether the request may be sent again whatever it did before its connection dropped.

    True for reads, and for a listener's requests (``/l/p/<ptoken>/…``): ratings, flags and trial
    completions are idempotent by request id, and the listener page resends on any 5xx anyway.
    Elsewhere the connection may have dropped after a commit (a run created, a form saved), and a
    503 would promise that nothing happened: ``evalsite_client`` repeats even non-idempotent calls
    on a 503. Those keep Django's 500, which that client repeats only where it is safe.
    """
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return True
    match = request.resolver_match
    return match is not None and match.namespace == "listening" and "ptoken" in match.kwargs


class DatabaseUnavailableMiddleware:
    """Answer a request that lost its database connection with 503 + ``Retry-After``, not a 500.

    A dropped connection (a PostgreSQL restart or failover, a terminated backend) is not the
    request's fault: where sending it again is safe, the client is told so with a 503 in the
    ``{"message", "extra"}`` shape of every other error, and the broken connection is closed here
    so the retry gets a new one even where connections persist between requests.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)) or not _retry_is_safe(request):
            return None
        logger.warning(
            "%s %s: database unavailable (%s); answered 503", request.method, request.path, exception
        )
        for connection in connections.all(initialized_only=True):
            if connection.errors_occurred and not connection.in_atomic_block and not connection.is_usable():
                connection.close()
        if "text/html" in request.headers.get("Accept", ""):
            response = HttpResponse(
                DATABASE_UNAVAILABLE, status=503, content_type="text/plain; charset=utf-8"
            )
        else:
            response = JsonResponse(
                {"message": DATABASE_UNAVAILABLE, "extra": {"retry_after_s": DATABASE_RETRY_AFTER_S}},
                status=503,
            )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return response


class ContentSecurityPolicyMiddleware:
    """Send ``EVALSITE_CSP`` on every response, with a fresh nonce for each request.

    Templates mark their own inline scripts with ``nonce="{{ request.csp_nonce }}"``; a script that
    found its way into a page through text someone typed (a run name, a flag's note, a checkpoint
    label) has no nonce, so the browser does not run it. Responses that set their own policy keep it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.csp_nonce = secrets.token_urlsafe(16)
        response = self.get_response(request)
        policy = settings.EVALSITE_CSP
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy.replace("{nonce}", request.csp_nonce)
        return response
