"""Checkpoint registration, alert polling and results for a plain training loop, off the training thread."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from evalsite_client.api import (
    FINAL_STATUSES,
    EvalsiteClient,
    EvalsiteError,
    ServiceError,
    file_sha256,
    local_path,
)
from evalsite_client.results import CheckpointResults, clean_metrics, human_scores

logger = logging.getLogger(__name__)

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}
_CLOSE = object()
_MAX_ALERT_PAGES = 10
_MAX_ERROR_LENGTH = 2000

ResultsCallback = Callable[[int, CheckpointResults], None]


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


def _check_interval(name: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        allowed = "a number > 0" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def log_alert(alert: dict[str, Any], run_id: int | str) -> None:
    """Log one alert at a level that follows its severity (critical → ERROR)."""
    level = _LEVELS.get(str(alert.get("severity")), logging.WARNING)
    raw = alert.get("links")
    urls = [link.get("url") for link in raw if isinstance(link, Mapping)] if isinstance(raw, list) else []
    links = " ".join(str(url) for url in urls if url)
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

    With ``on_results``, each registered checkpoint's status is read every ``results_interval``
    seconds until its evaluation pipeline ends (``done`` or ``failed``); then
    ``on_results(step, results)`` is called, in the background thread, with a
    :class:`~evalsite_client.results.CheckpointResults`: its metrics, its mean score in each of
    ``listening_tests`` that rated it, and the alerts raised for it. A checkpoint whose pipeline has
    not ended ``results_timeout`` seconds after registration is given up on with a warning.

    Human scores count once a listening test is closed, so that what is logged at a step is the
    test's final number, not a mean of the first few listeners. A test usually closes after the
    pipeline ended: the reporter then reads the tests every ``human_interval`` seconds (and once
    at ``close``) and calls ``on_results`` again for that step with only ``human`` filled in.
    Each (step, test) pair is reported once.

    Whatever the server answers, nothing is raised into the training loop: unreadable answers,
    NaN and infinite values are left out with a warning, and an exception from ``on_results`` is
    logged. ``on_results`` runs in the background thread: hand the results to the training thread
    (e.g. through a ``queue.Queue``) before touching anything that is not thread-safe, such as a
    TensorBoard writer.

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
        alert_interval: seconds between alert polls; ``None`` polls alerts only to complete results.
        retry_interval: seconds before an unreachable server is tried again.
        max_pending: registrations that may wait before new ones are dropped.
        on_results: called with ``(step, results)`` once a checkpoint's pipeline ended.
        results_interval: seconds between status reads of the checkpoints being evaluated.
        results_timeout: seconds after registration before a checkpoint's results are given up on.
        listening_tests: ids of listening tests whose human scores the results carry.
        human_interval: seconds between reads of ``listening_tests`` for steps already reported.
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
        on_results: ResultsCallback | None = None,
        results_interval: float = 30.0,
        results_timeout: float = 6 * 3600.0,
        listening_tests: Iterable[int] = (),
        human_interval: float = 600.0,
    ) -> None:
        tests = self.check_options(
            alert_interval=alert_interval,
            retry_interval=retry_interval,
            max_pending=max_pending,
            on_results=on_results,
            results_interval=results_interval,
            results_timeout=results_timeout,
            listening_tests=listening_tests,
            human_interval=human_interval,
        )
        self.client = client
        self.run_id = run_id
        self.uri_for = uri_for
        self.compute_sha256 = compute_sha256
        self.alert_interval = alert_interval
        self.retry_interval = retry_interval
        self.on_results = on_results
        self.results_interval = results_interval
        self.results_timeout = results_timeout
        self.listening_tests = tests
        self.human_interval = human_interval
        self.registered: list[dict[str, Any]] = []
        self.failed: list[tuple[int, str, str]] = []
        self.dropped: list[tuple[int, str]] = []
        self.results: list[CheckpointResults] = []
        self.abandoned: list[int] = []
        self._cursor = alerts_after
        self.max_pending = max_pending
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending: deque[_Saved] = deque()
        self._alerts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._watching: dict[int, float] = {}  # step -> when to give up on its results
        self._settling: dict[int, Mapping[str, Any]] = {}  # seen ended, reported at the next round
        self._step_alerts: dict[int, list[dict[str, Any]]] = {}
        self._next_results = 0.0
        self._reported: dict[int, str] = {}  # step -> its pipeline's final status
        self._human_sent: set[tuple[int, int]] = set()  # (step, listening test id)
        self._results_wait = 0.0
        self._thread = threading.Thread(target=self._run, name=f"evalsite-reporter-{run_id}", daemon=True)
        self._thread.start()

    @staticmethod
    def check_options(
        *,
        alert_interval: float | None = 30.0,
        retry_interval: float = 60.0,
        max_pending: int = 100,
        on_results: ResultsCallback | None = None,
        results_interval: float = 30.0,
        results_timeout: float = 6 * 3600.0,
        listening_tests: Iterable[int] = (),
        human_interval: float = 600.0,
    ) -> list[int]:
        """Raise ``ValueError`` naming the first option out of range; returns the listening test ids."""
        _check_interval("alert_interval", alert_interval, optional=True)
        _check_interval("retry_interval", retry_interval)
        _check_interval("results_interval", results_interval)
        _check_interval("results_timeout", results_timeout)
        _check_interval("human_interval", human_interval)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an int >= 1; got {max_pending!r}")
        if on_results is not None and not callable(on_results):
            raise ValueError(f"on_results must be callable; got {on_results!r}")
        tests = list(listening_tests)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tests):
            raise ValueError(f"listening_tests must be ids (ints >= 1); got {tests!r}")
        return tests

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

    def close(self, timeout: float | None = 60.0, *, results_wait: float = 0.0) -> None:
        """Flush: try every queued registration (once more, if the server was down), poll alerts a
        last time, report the results of pipelines that ended, and stop.

        With ``on_results``, the pipelines still running are polled for up to ``results_wait``
        more seconds; the ones that have not ended then are not reported. Waits at most
        ``timeout + results_wait`` seconds; what is left then is logged.
        """
        if (
            isinstance(results_wait, bool)
            or not isinstance(results_wait, int | float)
            or not results_wait >= 0
        ):
            raise ValueError(f"results_wait must be a number >= 0; got {results_wait!r}")
        if not self._closed:
            self._closed = True
            self._results_wait = float(results_wait)
            self._queue.put(_CLOSE)
        waited = None if timeout is None else timeout + results_wait
        self._thread.join(waited)
        if self._thread.is_alive():
            logger.warning(
                "evalsite: %d checkpoint registration(s) still pending after %s s; giving up waiting",
                self.pending,
                waited,
            )

    # --- background thread ------------------------------------------------------------------

    def _run(self) -> None:
        closing = False
        next_poll = 0.0 if self.alert_interval is not None else float("inf")
        next_human = time.monotonic() + self.human_interval
        retry_at = 0.0
        while True:
            now = time.monotonic()
            wake = next_poll
            if self._pending:
                wake = min(wake, retry_at)
            if self._watching:
                wake = min(wake, self._next_results)
            if self._human_missing():
                wake = min(wake, next_human)
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
                else:
                    if self.alert_interval is not None:
                        self._poll_alerts()
                    self._finish_results()
                    self._poll_human()
                return
            if time.monotonic() >= next_poll:
                self._poll_alerts()
                next_poll = time.monotonic() + (self.alert_interval or 0.0)
            if self._watching and time.monotonic() >= self._next_results:
                self._poll_results()
                self._next_results = time.monotonic() + self.results_interval
            if time.monotonic() >= next_human:
                self._poll_human()
                next_human = time.monotonic() + self.human_interval

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
            if self.on_results is not None and saved.step not in self._watching:
                if not self._watching:  # the pipeline has only just started: no point asking at once
                    self._next_results = time.monotonic() + self.results_interval
                self._watching[saved.step] = time.monotonic() + self.results_timeout
            logger.debug("evalsite: registered step %d as %s", saved.step, uri)
        return True

    def _poll_alerts(self) -> None:
        try:
            for _ in range(_MAX_ALERT_PAGES):
                found, self._cursor = self.client.alerts(self.run_id, after=self._cursor)
                found = [alert for alert in found if isinstance(alert, Mapping)]
                if not found:
                    return
                for alert in found:
                    log_alert(alert, self.run_id)
                    step = alert.get("checkpoint_step")
                    if isinstance(step, int):  # kept for any step: a resumed run re-registers evaluated steps
                        self._step_alerts.setdefault(step, []).append(alert)
                with self._lock:
                    self._alerts.extend(found)
        except EvalsiteError as exc:
            logger.warning("evalsite: could not poll alerts of run %s: %s", self.run_id, exc)
        except Exception:
            logger.exception("evalsite: alert polling failed")

    def _poll_results(self) -> None:
        """Read the status of each checkpoint being evaluated; report those seen ended a round ago.

        The server evaluates a step's alert rules just after its status turns ``done``, so a step
        is reported one ``results_interval`` after its pipeline was first seen ended: by then its
        alerts are there to be polled.
        """
        try:
            settled, self._settling = self._settling, {}
            for step in sorted(set(self._watching) - set(settled)):
                try:
                    checkpoint = self.client.checkpoint_get(self.run_id, step)
                except ServiceError as exc:
                    logger.warning("evalsite: could not read step %d of run %s: %s", step, self.run_id, exc)
                    break  # the server is down: the other steps would only wait out the same retries
                except EvalsiteError as exc:
                    logger.warning("evalsite: could not read step %d of run %s: %s", step, self.run_id, exc)
                    continue
                if not isinstance(checkpoint, Mapping):
                    logger.warning(
                        "evalsite: step %d: unreadable answer (%s)", step, type(checkpoint).__name__
                    )
                elif checkpoint.get("status") in FINAL_STATUSES:
                    self._settling[step] = checkpoint
            now = time.monotonic()
            for step, give_up_at in list(self._watching.items()):
                if step not in settled and step not in self._settling and now >= give_up_at:
                    del self._watching[step]
                    self.abandoned.append(step)
                    logger.warning(
                        "evalsite: step %d: pipeline not ended %g s after registration; results not reported",
                        step,
                        self.results_timeout,
                    )
            if settled:
                self._report(settled)
        except Exception:
            logger.exception("evalsite: reading checkpoint results failed")

    def _report(self, ended: dict[int, Mapping[str, Any]]) -> None:
        self._poll_alerts()
        human = self._human_scores(set(ended))
        for step, checkpoint in ended.items():
            del self._watching[step]
            self._reported[step] = str(checkpoint["status"])
            self._deliver(
                CheckpointResults(
                    step=step,
                    status=str(checkpoint["status"]),
                    metrics=clean_metrics(checkpoint.get("metrics"), step=step),
                    human=human.get(step, {}),
                    alerts=tuple(self._step_alerts.pop(step, [])),
                    error=str(checkpoint.get("error") or "")[:_MAX_ERROR_LENGTH],
                )
            )

    def _deliver(self, results: CheckpointResults) -> None:
        self.results.append(results)
        if self.on_results is None:
            return
        try:
            self.on_results(results.step, results)
        except Exception:
            logger.exception("evalsite: on_results failed for step %d; ignored", results.step)

    def _human_missing(self) -> set[int]:
        """Reported steps that some listening test has not given a (final) score yet."""
        return {
            step
            for step in self._reported
            if any((step, test_id) not in self._human_sent for test_id in self.listening_tests)
        }

    def _human_scores(self, steps: set[int]) -> dict[int, dict[str, float]]:
        """Each step's mean score in each closed listening test not reported for it yet."""
        found: dict[int, dict[str, float]] = {}
        for test_id in self.listening_tests:
            wanted = {step for step in steps if (step, test_id) not in self._human_sent}
            if not wanted:
                continue
            try:
                answer = self.client.listening_test_results(test_id)
                name, scores = human_scores(answer, run_id=self.run_id, steps=wanted)
            except (EvalsiteError, ValueError) as exc:
                logger.warning("evalsite: human scores of listening test %d unavailable: %s", test_id, exc)
                continue
            if scores is None:  # still open: asked again next time
                continue
            for step in wanted:  # a closed test rates no further checkpoints: done with it for these
                self._human_sent.add((step, test_id))
            for step, mean in scores.items():
                found.setdefault(step, {})[name] = mean
        return found

    def _poll_human(self) -> None:
        """Report the scores of listening tests closed after their steps' results were reported."""
        try:
            missing = self._human_missing()
            if not missing:
                return
            for step, human in sorted(self._human_scores(missing).items()):
                self._deliver(CheckpointResults(step=step, status=self._reported[step], human=human))
        except Exception:
            logger.exception("evalsite: reading human scores failed")

    def _finish_results(self) -> None:
        """At close: poll the pipelines still running for up to ``results_wait`` seconds, then
        report those seen ended without waiting the usual round for their alerts."""
        give_up_at = time.monotonic() + self._results_wait
        while self._watching:
            self._poll_results()
            left = give_up_at - time.monotonic()
            if not self._watching or left <= 0:
                break
            time.sleep(min(self.results_interval, left))
        if self._settling:
            settled, self._settling = self._settling, {}
            try:
                self._report(settled)
            except Exception:
                logger.exception("evalsite: reporting checkpoint results failed")
        if self._watching:
            logger.info(
                "evalsite: pipelines of steps %s had not ended at close; their results are not reported",
                sorted(self._watching),
            )
            self.abandoned.extend(sorted(self._watching))
            self._watching.clear()
