"""Rate limits of the browser pages: listener sessions, joining a listening test, signing in.

The API has its own limits (``evalsite.api.throttling``, DRF). These count with django-ratelimit in
the default cache: with the local-memory default every web process counts on its own (a budget is
then the rate times the number of processes); set ``CACHE_URL`` so that they share the counters.

* ``listener`` (``EVALSITE_LISTENER_RATE``): every request of one participant, by its token, once
  the request is known to come from that participant's browser (a stranger cannot spend it).
* ``join`` (``EVALSITE_JOIN_RATE``): consent-form posts from one client network; each one creates
  a participant with its assignments.
* ``login`` (``EVALSITE_LOGIN_RATE``): posts of a sign-in form from one client network (password
  guessing); :class:`LoginRateLimitMiddleware` keeps it for the site's and the admin's sign-in page.

A client network is the client's IP as the API reads it (trusting ``EVALSITE_NUM_PROXIES`` proxies),
an IPv6 address by its /64, which one host usually holds whole.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape
from django_ratelimit.core import get_usage
from rest_framework.throttling import BaseThrottle

from evalsite.core.rates import describe_rate, describe_wait, parse_rate

SETTINGS = {
    "listener": "EVALSITE_LISTENER_RATE",
    "join": "EVALSITE_JOIN_RATE",
    "login": "EVALSITE_LOGIN_RATE",
}
LOGIN_VIEWS = frozenset({"login", "admin:login"})
LOGIN_LIMITED = "Too many sign-in attempts from your network: at most {rate}. Try again in {wait}."


@dataclass(frozen=True)
class Limited:
    """A request over its budget: which one, the budget, and when the window ends."""

    scope: str
    count: int
    period: int
    retry_after: int  # seconds, at least 1

    @property
    def rate(self) -> str:
        return describe_rate(self.count, self.period)

    @property
    def wait(self) -> str:
        return describe_wait(self.retry_after)

    def body(self, message: str) -> dict:
        return {"message": message, "extra": {"limit": self.scope, "retry_after": self.retry_after}}


def limit_hit(request: HttpRequest, scope: str, ident: str) -> Limited | None:
    """Count one request of ``ident`` against ``scope``'s budget; a :class:`Limited` once it is spent."""
    setting = SETTINGS[scope]
    rate = getattr(settings, setting)
    if rate is None:
        return None  # turned off
    count, period = parse_rate(rate, setting)
    usage = get_usage(
        request,
        group=f"evalsite.{scope}",
        key=lambda group, request: ident,
        rate=(count, period),
        increment=True,
    )
    if usage is None or not usage["should_limit"]:
        return None
    # django-ratelimit's window ends at the whole second ``time_left`` ahead, which still belongs to it.
    return Limited(scope, count, period, max(0, int(usage["time_left"])) + 1)


def client_network(request: HttpRequest) -> str:
    """The client's IP (or IPv6 /64) for per-client budgets, read as the API reads it: DRF's reading
    of X-Forwarded-For, trusting exactly ``NUM_PROXIES`` proxies (``EVALSITE_NUM_PROXIES``)."""
    ip = BaseThrottle().get_ident(request)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an address (a garbled X-Forwarded-For): still one key, not a new one per request
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False).network_address)
    return str(address)


def with_retry_after(response: HttpResponse, limited: Limited) -> HttpResponse:
    response["Retry-After"] = str(limited.retry_after)
    response["Cache-Control"] = "private, no-store"
    return response


def wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return accept.startswith("application/json") or request.content_type == "application/json"


def too_many_requests(request: HttpRequest, limited: Limited, message: str) -> HttpResponse:
    """429 with ``Retry-After``: JSON ``{message, extra: {limit, retry_after}}`` for a script, else a plain page."""
    if wants_json(request):
        return with_retry_after(JsonResponse(limited.body(message), status=429), limited)
    page = HttpResponse(
        f"<!doctype html><title>Too many requests</title><p>{escape(message)}</p>", status=429
    )
    return with_retry_after(page, limited)


class LoginRateLimitMiddleware:
    """Counts sign-in form posts per client network (``login``); over the budget, a 429 and no check of
    the password, so guessing gets nowhere faster than the rate. Posts the CSRF check refused never
    reach this (it runs after ``CsrfViewMiddleware``) and are not counted."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> HttpResponse | None:
        match = request.resolver_match
        if request.method != "POST" or match is None or match.view_name not in LOGIN_VIEWS:
            return None
        limited = limit_hit(request, "login", client_network(request))
        if limited is None:
            return None
        return too_many_requests(request, limited, LOGIN_LIMITED.format(rate=limited.rate, wait=limited.wait))
