"""HTTP client for the evalsite REST API (``/api/v1/``), for training jobs; needs only ``requests``.

Retry policy (one place: :meth:`EvalsiteClient._request`):

* Connection errors, timeouts, 429 and 502/503/504 are retried with exponential backoff and jitter,
  at most ``max_retries`` times; a ``Retry-After`` header (429 or 503) is honoured instead of the
  computed delay (capped at :data:`MAX_RETRY_AFTER` seconds).
* 500 is retried at most :data:`MAX_500_RETRIES` times: Django answers 500 when it loses its
  database during a restart (transient), but also for a bug (deterministic), and a researcher
  calling ``run_get`` should not wait out the whole budget for the second kind.
* Other 4xx are never retried: :class:`ApiError` (:class:`ConflictError` for 409).
* Whether a request that may already have reached the server is repeated depends on the call.
  GETs and checkpoint registration are idempotent server-side (the same step with the same uri and
  sha256 answers 200 with the existing checkpoint), so they are repeated after any of the failures
  above. ``run_create`` and ``checkpoint_evaluate`` are repeated only when the server surely did not
  act: the connection was never made, or the answer was 429/503. A dropped connection, a read
  timeout, 500, 502 or 504 on those raises :class:`ServiceError` at once, because a blind repeat
  could create a run whose token is then lost (the repeat answers 409) or queue evaluation twice.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions

logger = logging.getLogger(__name__)

MAX_500_RETRIES = 2
MAX_RETRY_AFTER = 300.0
FINAL_STATUSES = frozenset({"done", "failed"})
SHA256_CHUNK = 1 << 20
_ETAG_CACHE_SIZE = 256


class EvalsiteError(Exception):
    """Base class of every error this client raises."""


class ApiError(EvalsiteError):
    """The server rejected the request (4xx): ``status``, ``message`` and per-field reasons."""

    def __init__(self, status: int, message: str, fields: dict[str, list[str]] | None = None) -> None:
        self.status = status
        self.message = message
        self.fields = fields or {}
        super().__init__(status, message, self.fields)

    def __str__(self) -> str:
        text = f"HTTP {self.status}: {self.message}"
        if self.fields:
            text += (
                " ("
                + "; ".join(f"{name}: {' '.join(reasons)}" for name, reasons in self.fields.items())
                + ")"
            )
        return text


class ConflictError(ApiError):
    """409: the name or step is already taken by something else."""


class ServiceError(EvalsiteError):
    """No usable answer after the allowed retries: connection failure, timeout, 429 or 5xx.

    ``status`` is the last HTTP status, or ``None`` when no response came back.
    """

    def __init__(self, message: str, *, status: int | None, attempts: int) -> None:
        self.message = message
        self.status = status
        self.attempts = attempts
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} (after {self.attempts} attempt{'s' if self.attempts != 1 else ''})"


class EvaluationTimeout(EvalsiteError):
    """``checkpoint_wait`` gave up; ``checkpoint`` is the last state seen."""

    def __init__(self, message: str, checkpoint: dict[str, Any] | None) -> None:
        self.checkpoint = checkpoint
        super().__init__(message)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so multi-GB checkpoints need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(SHA256_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_path(uri: str | os.PathLike[str]) -> Path | None:
    """The local file a uri names (a plain path or ``file://``), or ``None`` for remote URIs."""
    text = os.fspath(uri)
    parts = urlsplit(text)
    if parts.scheme == "file":
        return Path(parts.path)
    if parts.scheme and len(parts.scheme) > 1:  # one letter is a Windows drive
        return None
    return Path(text)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the connection was never established, so the server cannot have seen the request."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # NewConnectionError (refused, DNS failure) subclasses ConnectTimeoutError in urllib3 2.
    return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_body(response: requests.Response) -> tuple[str, dict[str, list[str]]]:
    """The ``{"message", "extra": {"fields"}}`` body, tolerating HTML from a proxy."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return (text[:300] or response.reason or "no body"), {}
    if not isinstance(body, dict):
        return str(body)[:300], {}
    message = str(body.get("message") or body.get("detail") or response.reason or "error")
    raw = (body.get("extra") or {}).get("fields") or {}
    fields: dict[str, list[str]] = {}
    if isinstance(raw, dict):
        for name, reasons in raw.items():
            fields[str(name)] = [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
    return message, fields


def _segment(value: Any) -> str:
    return quote(str(value), safe="")


class EvalsiteClient:
    """Client for one evalsite server, authenticated with a run token or a researcher token.

    Example::

        client = EvalsiteClient("https://evalsite.example.org", token=os.environ["EVALSITE_TOKEN"])
        client.checkpoint_register(run_id, step=10_000, uri="/ckpt/step10000.ckpt", compute_sha256=True)
        final = client.checkpoint_wait(run_id, 10_000, timeout=3600)

    One client may be shared by threads (``requests.Session`` connection pooling is thread-safe
    for this use); :class:`~evalsite_client.loop.CheckpointReporter` calls it from its own thread.
    ``sleep`` exists so tests can observe backoff without waiting.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | tuple[float, float] = (5, 30),
        max_retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/api/v1"):
            base = base[: -len("/api/v1")]
        self.base_url = base
        self.api_url = base + "/api/v1/"
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._token = token
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._sleep = sleep
        self._etags: OrderedDict[tuple[str, int, int | None], str] = OrderedDict()
        self._etags_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EvalsiteClient({self.base_url!r})"

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> EvalsiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs -------------------------------------------------------------------------------

    def run_create(
        self,
        *,
        name: str,
        kind: str,
        model_family: str,
        eval_set: str,
        config: dict[str, Any] | None = None,
        checkpoint_dir: str = "",
        checkpoint_pattern: str = "",
    ) -> dict[str, Any]:
        """Create a run (researcher token) and return it with its ``token``, shown only this once.

        Not repeated after a failure that may have reached the server (see the module docstring):
        a repeat of a request that did create the run would answer 409 and the token would be lost.
        """
        payload = {
            "name": name,
            "kind": kind,
            "model_family": model_family,
            "eval_set": eval_set,
            "config": config or {},
            "checkpoint_dir": checkpoint_dir,
            "checkpoint_pattern": checkpoint_pattern,
        }
        return self._json("POST", "runs/", json=payload, idempotent=False)

    def run_get(self, run_id: int | str) -> dict[str, Any]:
        return self._json("GET", f"runs/{_segment(run_id)}/")

    def runs(self) -> list[dict[str, Any]]:
        return self._json("GET", "runs/")["results"]

    # --- checkpoints ------------------------------------------------------------------------

    def checkpoint_register(
        self,
        run_id: int | str,
        *,
        step: int,
        uri: str | os.PathLike[str],
        sha256: str | None = None,
        compute_sha256: bool = False,
    ) -> dict[str, Any]:
        """Register the checkpoint saved at ``step``; returns the checkpoint (new or existing).

        Safe to retry, and retried after any transient failure: the server answers 200 with the
        existing checkpoint when the step is already registered with the same uri (and sha256), so
        a request that reached the server before its answer was lost never registers twice. The
        same step with another file raises :class:`ConflictError`.

        Args:
            step: the training step, an int >= 0.
            uri: a local path (sent as given) or a URI such as ``s3://bucket/key``.
            sha256: the file's hex sha256, if known.
            compute_sha256: hash the local file (in chunks) when ``sha256`` is not given;
                a ``ValueError`` for a remote URI.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        uri = os.fspath(uri)
        if not uri:
            raise ValueError("uri must not be empty")
        if sha256 is None and compute_sha256:
            path = local_path(uri)
            if path is None:
                raise ValueError(
                    f"compute_sha256 needs a local file; {uri!r} is a remote URI: pass sha256= instead"
                )
            sha256 = file_sha256(path)
        payload: dict[str, Any] = {"step": step, "uri": uri}
        if sha256:
            sha256 = sha256.lower()
            if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
                raise ValueError(f"sha256 must be 64 hexadecimal characters; got {sha256!r}")
            payload["sha256"] = sha256
        return self._json("POST", f"runs/{_segment(run_id)}/checkpoints/", json=payload)

    def checkpoints(self, run_id: int | str) -> list[dict[str, Any]]:
        return self._json("GET", f"runs/{_segment(run_id)}/checkpoints/")["results"]

    def checkpoint_get(self, run_id: int | str, step: int) -> dict[str, Any]:
        return self._json("GET", f"runs/{_segment(run_id)}/checkpoints/{_segment(step)}/")

    def checkpoint_evaluate(self, run_id: int | str, step: int) -> list[dict[str, Any]]:
        """Queue (re-)evaluation of a checkpoint; returns the queued jobs.

        Not repeated after a failure that may have reached the server (see the module docstring).
        """
        path = f"runs/{_segment(run_id)}/checkpoints/{_segment(step)}/evaluate/"
        return self._json("POST", path, idempotent=False)["jobs"]

    def checkpoint_wait(
        self, run_id: int | str, step: int, *, timeout: float = 6 * 3600, poll_interval: float = 15.0
    ) -> dict[str, Any]:
        """Poll until the checkpoint is ``done`` or ``failed`` and return it (a failure is not raised).

        Raises :class:`EvaluationTimeout` (carrying the last state) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            checkpoint = self.checkpoint_get(run_id, step)
            if checkpoint.get("status") in FINAL_STATUSES:
                return checkpoint
            left = deadline - time.monotonic()
            if left <= 0:
                raise EvaluationTimeout(
                    f"checkpoint step {step} of run {run_id} still {checkpoint.get('status')!r} after {timeout:g} s",
                    checkpoint,
                )
            self._sleep(min(poll_interval, left))

    # --- listening tests --------------------------------------------------------------------

    def listening_test_results(self, test_id: int) -> dict[str, Any]:
        """The analysed results of a listening test: ``design.conditions`` name each condition's
        checkpoint (``run_id``, ``step``) and ``scores.kept`` its mean score (``system`` is the label)."""
        return self._json("GET", f"listening-tests/{_segment(test_id)}/results/")

    # --- alerts -----------------------------------------------------------------------------

    def alerts(
        self, run_id: int | str, *, after: int = 0, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Alerts with a cursor greater than ``after``: ``(alerts, cursor)``; pass ``cursor`` next time.

        Remembers the ETag per (run, after, limit) and sends ``If-None-Match``; a 304 returns
        ``([], after)`` without reading a body.
        """
        key = (str(run_id), int(after), limit)
        params: dict[str, Any] = {"after": int(after)}
        if limit is not None:
            params["limit"] = int(limit)
        headers = {}
        with self._etags_lock:
            etag = self._etags.get(key)
        if etag:
            headers["If-None-Match"] = etag
        response = self._request("GET", f"runs/{_segment(run_id)}/alerts/", params=params, headers=headers)
        if response.status_code == 304:
            return [], int(after)
        data = self._decode(response)
        new_etag = response.headers.get("ETag")
        if new_etag:
            with self._etags_lock:
                self._etags[key] = new_etag
                self._etags.move_to_end(key)
                while len(self._etags) > _ETAG_CACHE_SIZE:
                    self._etags.popitem(last=False)
        return list(data.get("results") or []), int(data.get("cursor", after))

    def alerts_follow(
        self,
        run_id: int | str,
        *,
        after: int = 0,
        stop: threading.Event | Callable[[], bool] | None = None,
        min_interval: float = 2.0,
        max_interval: float = 120.0,
        sleep: Callable[[float], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield alerts as they arrive, polling forever (or until ``stop`` is set / returns True).

        The wait doubles from ``min_interval`` to ``max_interval`` while nothing arrives and goes
        back to ``min_interval`` after an alert. A :class:`ServiceError` (server down beyond the
        retries) is logged and polling goes on at ``max_interval``; an :class:`ApiError` is raised.
        ``sleep`` defaults to ``stop.wait`` for an Event (so setting it wakes the loop), else
        ``time.sleep``.
        """
        if isinstance(stop, threading.Event):
            stopped: Callable[[], bool] = stop.is_set
            wait = sleep or stop.wait
        else:
            stopped = stop or (lambda: False)
            wait = sleep or time.sleep
        cursor = after
        interval = min_interval
        while not stopped():
            try:
                found, cursor = self.alerts(run_id, after=cursor)
            except ServiceError as exc:
                logger.warning("evalsite alerts for run %s unavailable: %s", run_id, exc)
                found, interval = [], max_interval
            if found:
                interval = min_interval
                yield from found
                continue
            if stopped():
                return
            wait(interval)
            interval = min(interval * 2, max_interval)

    # --- transport --------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._decode(self._request(method, path, **kwargs))

    @staticmethod
    def _decode(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise EvalsiteError(
                f"{response.request.method} {response.url} answered {response.status_code} without JSON: "
                f"{response.text[:200]!r}"
            ) from exc

    def _delay(self, retry: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        ceiling = min(self.max_backoff, self.backoff * (2**retry))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> requests.Response:
        """Send one API request, retrying as the module docstring describes."""
        url = self.api_url + path
        all_headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/json",
            "User-Agent": "evalsite-client/0.1",
            **(headers or {}),
        }
        retries = errors_500 = 0
        while True:
            attempt = retries + 1
            try:
                response = self._session.request(
                    method, url, json=json, params=params, headers=all_headers, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if retries < self.max_retries and (idempotent or _never_sent(exc)):
                    delay = self._delay(retries)
                    logger.info(
                        "evalsite %s %s failed (%s); retry %d in %.2f s", method, url, exc, attempt, delay
                    )
                    self._sleep(delay)
                    retries += 1
                    continue
                raise ServiceError(f"{method} {url}: {exc}", status=None, attempts=attempt) from exc
            except requests.RequestException as exc:
                raise EvalsiteError(f"{method} {url}: {exc}") from exc

            status = response.status_code
            if status < 400:
                return response
            if status == 500:
                errors_500 += 1
            retryable = (
                status in (429, 503)
                or (status in (502, 504) and idempotent)
                or (status == 500 and idempotent and errors_500 <= MAX_500_RETRIES)
            )
            if retryable and retries < self.max_retries:
                wait = _retry_after(response) if status in (429, 503) else None
                delay = self._delay(retries) if wait is None else wait
                logger.info(
                    "evalsite %s %s answered %d; retry %d in %.2f s", method, url, status, attempt, delay
                )
                response.close()
                self._sleep(delay)
                retries += 1
                continue
            message, fields = _error_body(response)
            if status >= 500 or status == 429:
                raise ServiceError(
                    f"{method} {url} answered {status}: {message}", status=status, attempts=attempt
                )
            error = ConflictError if status == 409 else ApiError
            raise error(status, message, fields)
