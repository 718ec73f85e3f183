"""Rate limits of the API: a generous budget per token holder and a small one per IP for guessing.

* ``token`` (``EVALSITE_API_RATE``, default 1200/min): every request of one run token, or of one
  researcher (all their tokens and their browser session together), the alert-poll 304 fast path
  included (:mod:`evalsite.api.fastpath` counts its answers here too).
* ``anon`` (``EVALSITE_API_ANON_RATE``, default 60/min): requests from one IP that carry no
  credentials or a token that is not valid. Once an IP is over it, even a right token from that IP
  is refused until the window ends, so guessing tokens gains nothing from a lucky hit.

DRF authenticates and checks permissions before it runs throttles, so an anonymous or failed
request would never reach a throttle class: the ``anon`` budget is kept by the authentication
chain instead (:class:`AnonymousRequestLimit` last in it, and the bearer token class on a miss).

Counters are fixed one-period windows in the default cache: one ``incr`` per request. Several
web processes share a budget only when they share the cache (``CACHE_URL``); with the local-memory
default each process counts on its own.
"""

from __future__ import annotations

import functools
import time

from django.core import checks
from django.core.cache import cache
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, throttling
from rest_framework.settings import api_settings

from evalsite.core import rates

clock = time.time  # tests stop it at one point of a window

# The listener and sign-in limits' parser (the forms DRF accepts, and N/10min), cached: it runs per request.
parse_rate = functools.lru_cache(maxsize=32)(rates.parse_rate)


def check_rates(app_configs=None, **kwargs) -> list:
    """System check (``manage.py check``, ``migrate``): a mistyped EVALSITE_API_RATE or
    EVALSITE_API_ANON_RATE is reported by name there instead of failing every request."""
    errors = []
    for scope, rate in api_settings.DEFAULT_THROTTLE_RATES.items():
        try:
            number = parse_rate(rate)[0] if rate is not None else 0
        except ValueError:
            number = -1
        if number < 0:
            errors.append(
                checks.Error(
                    f"rate limit {scope!r} is {rate!r}; write it as N/s, N/min, N/hour or N/day",
                    id="evalsite_api.E001",
                )
            )
    return errors


def _rate(scope: str) -> tuple[int, int] | None:
    rate = api_settings.DEFAULT_THROTTLE_RATES.get(scope)  # read per call: tests change it
    return parse_rate(rate) if rate else None


def _key(scope: str, ident: str, period: int, now: float) -> str:
    return f"evalsite-throttle:{scope}:{ident}:{int(now // period)}"


def hit(scope: str, ident: str) -> float | None:
    """Count one request of ``ident``; seconds until its window ends if it is over the limit, else None."""
    rate = _rate(scope)
    if rate is None:
        return None
    limit, period = rate
    now = clock()
    key = _key(scope, ident, period, now)
    try:
        count = cache.incr(key)
    except ValueError:  # the first request of this window
        count = 1 if cache.add(key, 1, timeout=period + 1) else cache.incr(key)
    return period - now % period if count > limit else None


def over(scope: str, ident: str) -> float | None:
    """Seconds until ``ident``'s window ends if it has used its budget, without counting a request."""
    rate = _rate(scope)
    if rate is None:
        return None
    limit, period = rate
    now = clock()
    return period - now % period if (cache.get(_key(scope, ident, period, now)) or 0) >= limit else None


def principal_ident(user) -> str | None:
    """One budget per run token (``run:<id>``) or per researcher (``user:<id>``)."""
    if user is None or not user.is_authenticated:
        return None
    pk = user.pk
    return pk if isinstance(pk, str) else f"user:{pk}"


def client_ip(request) -> str:
    # DRF's reading of X-Forwarded-For, trusting exactly NUM_PROXIES proxies in front of the server.
    return throttling.BaseThrottle().get_ident(request) or "unknown"


def anonymous_guard(request) -> None:
    """Refuse (429) a request from an IP that used up its anonymous / failed-authentication budget."""
    wait = over("anon", client_ip(request))
    if wait is not None:
        raise exceptions.Throttled(wait=wait)


def anonymous_hit(request) -> None:
    """Count an anonymous or failed request against its IP; 429 once the budget is used up."""
    wait = hit("anon", client_ip(request))
    if wait is not None:
        raise exceptions.Throttled(wait=wait)


class TokenRateThrottle(throttling.BaseThrottle):
    """The ``token`` budget of the authenticated caller."""

    scope = "token"

    def allow_request(self, request, view) -> bool:
        ident = principal_ident(request.user)
        self._wait = hit(self.scope, ident) if ident is not None else None
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait


class AnonymousRequestLimit(authentication.BaseAuthentication):
    """Last in the authentication chain: a request no authenticator claimed counts against its IP."""

    def authenticate(self, request):
        anonymous_hit(request)
        return None


class AnonymousRequestLimitScheme(OpenApiAuthenticationExtension):
    """Not a way to authenticate: nothing for the schema's security requirements."""

    target_class = "evalsite.api.throttling.AnonymousRequestLimit"
    name: list[str] = []

    def get_security_requirement(self, auto_schema) -> None:
        return None

    def get_security_definition(self, auto_schema) -> list:
        return []
