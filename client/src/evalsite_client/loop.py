"""Checkpoint registration and alert polling for a plain training loop, off the training thread."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evalsite_client.api import EvalsiteClient, EvalsiteError, ServiceError, file_sha256, local_path

logger = logging.getLogger(__name__)

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}
_CLOSE = object()
_MAX_ALERT_PAGES = 10


@dataclass(frozen=True)
class _Saved:
    step: int
    path: str
    uri: str | None


def default_uri(path: str) -> str:
    """A local path (or ``file://`` URI) becomes an absolute path, which the server opens; other
    URIs are sent as they are."""
    local = local_path(path)
    return os.path.abspath(local) if local is not None else path


def log_alert(alert: dict[str, Any], run_id: int | str) -> None:
    """Log one alert at a level that follows its severity (critical → ERROR)."""
    level = _LEVELS.get(str(alert.get("severity")), logging.WARNING)
    links = " ".join(link.get("url", "") for link in alert.get("links") or [])
    logger.log(
        level,
        "evalsite alert [%s] run %s step %s: %s (%s) %s",
        alert.get("severity"),
        run_id,
        alert.get("checkpoint_step"),
        alert.get("title"),
        alert.get("rule"),
        links,
    )


class CheckpointReporter:
    """Registers checkpoints and polls alerts in a background thread, so the loop never waits on the network.

    Example::

        with CheckpointReporter(client, run_id) as reporter:
            for step in range(total):
                ...
                if step % 1000 == 0:
                    torch.save(model.state_dict(), path := f"ckpt/{step}.pt")
                    reporter.checkpoint_saved(step, path)
                for alert in reporter.new_alerts():
                    ...  # e.g. lower the learning rate

    Registrations go to the server one at a time in the order given. One that fails because the
    server is unreachable (after the client's own retries) stays at the head of the queue and is
    tried again ``retry_interval`` seconds later; one the server rejects (4xx) is logged and
    dropped. At most ``max_pending`` registrations wait; beyond that ``checkpoint_saved`` drops the
    new one with a warning rather than block. ``failed`` lists ``(step, uri, error)`` for each
    registration given up on; ``registered`` the checkpoints the server returned.

    Args:
        uri_for: maps the saved path to the uri to register (e.g. after uploading it), or ``None``
            to skip it; called in the background thread. Default: the absolute path.
        compute_sha256: hash each local file (in the background thread) and send the hash.
        alert_interval: seconds between alert polls; ``None`` polls no alerts.
    """

    def __init__(
        self,
        client: EvalsiteClient,
        run_id: int | str,
        *,
        uri_for: Callable[[str], str | None] | None = None,
        compute_sha256: bool = False,
        alert_interval: float | None = 30.0,
        alerts_after: int = 0,
        retry_interval: float = 60.0,
        max_pending: int = 100,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.uri_for = uri_for
        self.compute_sha256 = compute_sha256
        self.alert_interval = alert_interval
        self.retry_interval = retry_interval
        self.registered: list[dict[str, Any]] = []
        self.failed: list[tuple[int, str, str]] = []
        self.dropped: list[tuple[int, str]] = []
        self._cursor = alerts_after
        self.max_pending = max_pending
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending: deque[_Saved] = deque()
        self._alerts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"evalsite-reporter-{run_id}", daemon=True)
        self._thread.start()

    def __enter__(self) -> CheckpointReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def checkpoint_saved(self, step: int, path: str | os.PathLike[str], *, uri: str | None = None) -> None:
        """Queue the registration of the file saved at ``step``; returns at once."""
        if self._closed:
            raise RuntimeError("CheckpointReporter is closed")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        if self.pending >= self.max_pending:
            self.dropped.append((step, os.fspath(path)))
            logger.warning(
                "evalsite: %d registrations already waiting (server unreachable?); step %d (%s) is not registered",
                self.pending,
                step,
                path,
            )
            return
        self._queue.put(_Saved(step, os.fspath(path), uri))

    def new_alerts(self) -> list[dict[str, Any]]:
        """Alerts received since the last call (oldest first)."""
        with self._lock:
            alerts, self._alerts = self._alerts, []
        return alerts

    @property
    def pending(self) -> int:
        """Registrations not yet done (queued or waiting to be retried)."""
        return self._queue.qsize() + len(self._pending)

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush: try every queued registration (once more, if the server was down), poll alerts a
        last time and stop. Waits at most ``timeout`` seconds; what is left then is logged."""
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "evalsite: %d checkpoint registration(s) still pending after %s s; giving up waiting",
                self.pending,
                timeout,
            )

    # --- background thread ------------------------------------------------------------------

    def _run(self) -> None:
        closing = False
        next_poll = 0.0 if self.alert_interval is not None else float("inf")
        retry_at = 0.0
        while True:
            now = time.monotonic()
            wake = next_poll
            if self._pending:
                wake = min(wake, retry_at)
            try:
                item = self._queue.get(timeout=max(0.0, min(wake - now, 3600.0)))
            except queue.Empty:
                item = None
            if item is _CLOSE:
                closing = True
            elif item is not None:
                self._pending.append(item)
            while not closing:  # take everything already queued, so order is kept
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _CLOSE:
                    closing = True
                else:
                    self._pending.append(more)
            server_down = False
            if self._pending and (closing or time.monotonic() >= retry_at):
                server_down = not self._register_pending()
                if server_down:
                    retry_at = time.monotonic() + self.retry_interval
            if closing:
                if server_down:
                    for saved in self._pending:
                        self.failed.append((saved.step, saved.path, "server unreachable at close"))
                    logger.warning(
                        "evalsite: server unreachable at close; steps %s not registered",
                        [saved.step for saved in self._pending],
                    )
                    self._pending.clear()
                elif self.alert_interval is not None:
                    self._poll_alerts()
                return
            if time.monotonic() >= next_poll:
                self._poll_alerts()
                next_poll = time.monotonic() + (self.alert_interval or 0.0)

    def _register_pending(self) -> bool:
        """Register queued checkpoints in order; False when the server was unreachable."""
        while self._pending:
            saved = self._pending[0]
            uri = saved.uri
            try:
                if uri is None:
                    uri = self.uri_for(saved.path) if self.uri_for else default_uri(saved.path)
                if uri is None:
                    self._pending.popleft()
                    continue
                sha256 = None
                local = local_path(saved.path)
                if self.compute_sha256 and local is not None:
                    sha256 = file_sha256(local)
                checkpoint = self.client.checkpoint_register(
                    self.run_id, step=saved.step, uri=uri, sha256=sha256
                )
            except ServiceError as exc:
                logger.warning(
                    "evalsite: could not register step %d (%s): %s; will retry", saved.step, uri, exc
                )
                return False
            except Exception as exc:  # an ApiError, an unreadable file, a failing uri_for: never retried
                self._pending.popleft()
                self.failed.append((saved.step, str(uri or saved.path), str(exc)))
                logger.warning(
                    "evalsite: step %d (%s) not registered: %s", saved.step, uri or saved.path, exc
                )
                continue
            self._pending.popleft()
            self.registered.append(checkpoint)
            logger.debug("evalsite: registered step %d as %s", saved.step, uri)
        return True

    def _poll_alerts(self) -> None:
        try:
            for _ in range(_MAX_ALERT_PAGES):
                found, self._cursor = self.client.alerts(self.run_id, after=self._cursor)
                if not found:
                    return
                for alert in found:
                    log_alert(alert, self.run_id)
                with self._lock:
                    self._alerts.extend(found)
        except EvalsiteError as exc:
            logger.warning("evalsite: could not poll alerts of run %s: %s", self.run_id, exc)
        except Exception:
            logger.exception("evalsite: alert polling failed")
