"""Outbound webhooks: one HTTP client with fixed timeouts that reports failures instead of raising.

Every POST carries ``X-Evalsite-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
keyed by the run's webhook secret (the timestamp lets a receiver refuse replays) and
``X-Evalsite-Delivery: <id>`` (the same on every retry of one delivery, so a receiver can drop
duplicates).

A webhook URL is chosen by whoever holds a run token, so it must not reach the platform's own network
(Redis on 127.0.0.1, a cloud metadata service on 169.254.169.254): only https (http if the operator
allows it), and every address the host resolves to must be public unless it lies in a network the
operator allows. The host is resolved once per attempt and the POST goes to that checked address
(with the original Host header, and TLS verified for the host name), so a second DNS answer
(rebinding) cannot redirect it; redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from django.conf import settings
from django.core.exceptions import ValidationError

CONNECT_TIMEOUT_S = 3.05
READ_TIMEOUT_S = 10.0

WEBHOOK_SCHEME = "webhook_url must be an https:// URL{http}; got {scheme!r}."
WEBHOOK_NO_HOST = "webhook_url has no host name."
WEBHOOK_ADDRESS = (
    "webhook_url host {host!r} resolves to {address} ({kind}); webhooks go only to public "
    "addresses (an operator can allow networks with EVALSITE_WEBHOOK_ALLOWED_NETWORKS)."
)
WEBHOOK_UNRESOLVED = "webhook_url host {host!r} does not resolve: {reason}"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# The address classes a webhook may never reach, in the order their names are reported.
_FORBIDDEN_KINDS = ("unspecified", "loopback", "link_local", "multicast", "reserved", "private")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookRefused(ValueError):
    """The URL is not one a webhook may be sent to; the message names webhook_url and why."""


class WebhookUnresolved(WebhookRefused):
    """The host name does not resolve now: nothing to check yet (may be a DNS hiccup, so worth a retry)."""


@dataclass(frozen=True)
class WebhookTarget:
    """Where one POST goes: the checked address to connect to, and the names the receiver expects."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


@dataclass(frozen=True)
class WebhookResult:
    ok: bool
    status_code: int | None
    error: str
    retryable: bool


def webhook_signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def webhook_signature_verify(
    secret: str, body: bytes, header: str, *, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """What a receiver does: recompute the HMAC and check the timestamp is recent."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = webhook_signature(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.EVALSITE_WEBHOOK_ALLOWED_NETWORKS]


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped ::ffff:a.b.c.d, 6to4, Teredo, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: Address) -> str | None:
    """Why a webhook may not go to ``address`` ("loopback", "private", ...), or None when it may."""
    if any(address in network for network in _allowed_networks()):
        return None
    for candidate in (_embedded_ipv4(address), address):
        if candidate is None:
            continue
        for kind in _FORBIDDEN_KINDS:
            if getattr(candidate, f"is_{kind}"):
                return kind.replace("_", "-")
        if not candidate.is_global:
            return "non-public"
    return None


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookUnresolved(WEBHOOK_UNRESOLVED.format(host=host, reason=exc)) from None
    addresses: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def webhook_target(url: str) -> WebhookTarget:
    """Check ``url`` and resolve its host once: every address must be allowed; the first is the one to use.

    Raises :class:`WebhookRefused` (:class:`WebhookUnresolved` when the host does not resolve).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if settings.EVALSITE_WEBHOOK_ALLOW_HTTP else ("https",)
    if scheme not in allowed:
        http = (
            "" if "http" in allowed else " (http:// only where the operator sets EVALSITE_WEBHOOK_ALLOW_HTTP)"
        )
        raise WebhookRefused(WEBHOOK_SCHEME.format(http=http, scheme=parts.scheme))
    try:
        host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:  # a port that is not a number or out of range
        raise WebhookRefused(f"webhook_url: {exc}.") from None
    if not host:
        raise WebhookRefused(WEBHOOK_NO_HOST)
    addresses = _resolve(host, port)
    if not addresses:
        raise WebhookUnresolved(WEBHOOK_UNRESOLVED.format(host=host, reason="no addresses"))
    for address in addresses:
        kind = address_refusal(address)
        if kind is not None:
            raise WebhookRefused(WEBHOOK_ADDRESS.format(host=host, address=address, kind=kind))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(scheme=scheme, host=host, port=port, path=path, address=str(addresses[0]))


def webhook_url_validator(url: str) -> None:
    """Set-time check (API): refuse a URL a webhook could never be sent to. A host that does not resolve yet
    is accepted; it is checked again, resolved, before every attempt."""
    try:
        webhook_target(url)
    except WebhookUnresolved:
        return
    except WebhookRefused as exc:
        raise ValidationError(str(exc), code="webhook_url") from None


def _host_header(target: WebhookTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _pool(target: WebhookTarget) -> urllib3.HTTPConnectionPool:
    """A connection pool to the checked address itself; TLS still sends and verifies the host name."""
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    if target.scheme == "http":
        return urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout, retries=False)
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or requests.certs.where()
    return urllib3.HTTPSConnectionPool(
        target.address,
        target.port,
        timeout=timeout,
        retries=False,
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_bundle,
        server_hostname=target.host,
        assert_hostname=target.host,
    )


def webhook_post(url: str, payload: dict[str, Any], *, secret: str, delivery_id: int) -> WebhookResult:
    """One POST; every failure comes back as a :class:`WebhookResult`, none is raised into the caller."""
    try:
        target = webhook_target(url)
    except WebhookUnresolved as exc:
        return WebhookResult(False, None, str(exc)[:1000], True)
    except WebhookRefused as exc:
        return WebhookResult(False, None, str(exc)[:1000], False)
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Host": _host_header(target),
        "Content-Type": "application/json",
        "User-Agent": "evalsite-webhook/1",
        "X-Evalsite-Signature": webhook_signature(secret, body, int(time.time())),
        "X-Evalsite-Delivery": str(delivery_id),
    }
    try:
        with _pool(target) as pool:
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                assert_same_host=False,
            )
    except urllib3.exceptions.HTTPError as exc:
        # NewConnectionError (nothing listens) is a subclass of ConnectTimeoutError: tell them apart by name.
        timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
            exc, urllib3.exceptions.NewConnectionError
        )
        kind = "Timeout" if timed_out else "ConnectionError"
        return WebhookResult(False, None, f"{kind}: {type(exc).__name__}: {exc}"[:1000], True)
    if 200 <= response.status < 300:
        return WebhookResult(True, response.status, "", False)
    # The receiver is down or busy: try again. Any other answer (a redirect included) will not change on a retry.
    retryable = response.status in (408, 425, 429) or response.status >= 500
    text = response.data[:300].decode("utf-8", "replace")
    return WebhookResult(False, response.status, f"HTTP {response.status}: {text}", retryable)
