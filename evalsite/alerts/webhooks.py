"""Outbound webhooks: one HTTP client with fixed timeouts that reports failures instead of raising.

Every POST carries ``X-Evalsite-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
keyed by the run's webhook secret (the timestamp lets a receiver refuse replays) and
``X-Evalsite-Delivery: <id>`` (the same on every retry of one delivery, so a receiver can drop
duplicates).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import requests

CONNECT_TIMEOUT_S = 3.05
READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WebhookResult:
    ok: bool
    status_code: int | None
    error: str
    retryable: bool


def webhook_signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def webhook_signature_verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300,
                             now: float | None = None) -> bool:
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


def webhook_post(url: str, payload: dict[str, Any], *, secret: str, delivery_id: int) -> WebhookResult:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "evalsite-webhook/1",
        "X-Evalsite-Signature": webhook_signature(secret, body, int(time.time())),
        "X-Evalsite-Delivery": str(delivery_id),
    }
    try:
        response = requests.post(url, data=body, headers=headers, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                                 allow_redirects=False)
    except requests.RequestException as exc:
        return WebhookResult(False, None, f"{type(exc).__name__}: {exc}"[:1000], True)
    if 200 <= response.status_code < 300:
        return WebhookResult(True, response.status_code, "", False)
    # The receiver is down or busy: try again. Any other answer will not change on a retry.
    retryable = response.status_code in (408, 425, 429) or response.status_code >= 500
    return WebhookResult(False, response.status_code, f"HTTP {response.status_code}: {response.text[:300]}", retryable)
