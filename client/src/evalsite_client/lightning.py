"""A Lightning callback that registers every checkpoint the Trainer saves, polls alerts and writes
each checkpoint's evalsite results into the Trainer's own loggers.

Importing this module imports ``lightning.pytorch`` (or ``pytorch_lightning``); ``evalsite_client``
itself does not.

How saves are found: the callback wraps ``trainer.save_checkpoint`` (public API, stable since
Lightning 1.x) on the Trainer it is attached to, for the duration of ``fit``. Every ``ModelCheckpoint``
save, whatever triggered it (steps, epochs, time, a monitored metric), and every manual
``trainer.save_checkpoint(path)`` goes through it, with the real path, at the moment of saving,
when ``trainer.global_step`` is the step saved. The alternatives are weaker: ``on_save_checkpoint``
gets the checkpoint dict but no path, and reading ``ModelCheckpoint.best_k_models`` /
``last_model_path`` from our own hooks lags by one hook (Lightning runs ``ModelCheckpoint`` after
all other callbacks), misses the final save, and ``best_k_models`` stays empty without a monitor.

How results reach the loggers: they arrive in the reporter's background thread, long after the
checkpoint was saved, and Lightning's loggers are not thread-safe (a TensorBoard writer, a CSV
buffer). So the background thread only puts them on a queue, and the training thread takes them
off at its next ``on_train_batch_end`` or ``on_validation_end`` and writes them with
``logger.log_metrics(scalars, step=checkpoint_step)`` into every logger of ``trainer.loggers``
(TensorBoard, W&B, MLflow, CSV, ...): they appear at the checkpoint's step, not at the step they
arrived. At ``on_fit_end`` (before Lightning finalizes its loggers) the reporter is flushed, waiting
up to ``results_wait`` seconds for pipelines still running, and what arrived is written.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Iterable
from typing import Any

from evalsite_client.api import EvalsiteClient
from evalsite_client.loop import CheckpointReporter
from evalsite_client.results import CheckpointResults


def _import_lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError(
                "evalsite_client.lightning needs the `lightning` package "
                "(pip install 'evalsite-client[lightning]'); `pytorch_lightning` works too. evalsite_client without the callback needs only `requests`."
            ) from None
    return pl


pl = _import_lightning()
logger = logging.getLogger(__name__)


class EvalsiteCallback(pl.Callback):
    """Register each checkpoint Lightning saves with evalsite, collect the run's alerts, and log each
    checkpoint's results into the Trainer's loggers.

    Example::

        client = EvalsiteClient(url, token=os.environ["EVALSITE_RUN_TOKEN"])
        callback = EvalsiteCallback(client, run_id)
        trainer = Trainer(callbacks=[ModelCheckpoint(every_n_train_steps=5000, save_top_k=-1), callback])
        trainer.fit(model)

    Only global rank 0 talks to the server. Registration and alert polling run in a background
    thread (:class:`~evalsite_client.loop.CheckpointReporter`), so training never waits on the
    network and never sees an exception from it: failures are logged as warnings. At the end of
    ``fit`` the queue is flushed for at most ``close_timeout`` seconds.

    Once a checkpoint's evaluation pipeline ends, its results are written into every logger of
    ``trainer.loggers`` at the checkpoint's step (see the module docstring for when):
    ``evalsite/<metric>`` for each metric, ``evalsite/human/<test>`` for its mean score in each of
    ``listening_tests`` that rated it, and ``evalsite/alerts/<rule>`` for how many alerts each rule
    raised for it. ``callback.results`` lists the
    :class:`~evalsite_client.results.CheckpointResults` written so far.

    Each step is registered once, with the first file saved at it. ``ModelCheckpoint``'s
    ``last.ckpt`` copies are skipped: the file is overwritten in place, so a later step's weights
    would be evaluated under an earlier step. A checkpoint saved by ``save_on_exception`` is not
    registered either (the callback stops at ``on_exception``, which runs first).

    Args:
        every_n_steps: register only saves whose step is a multiple of this (None: every save).
        uri_for: maps a saved path to the uri to register (e.g. after uploading it), or ``None``
            to skip it; runs in the background thread. Default: the absolute path.
        compute_sha256: send each file's sha256 (hashed in the background thread).
        alert_interval: seconds between alert polls; ``None`` polls alerts only to complete results.
        log_results: write results into the Trainer's loggers (``False``: only collect them).
        results_interval: seconds between status reads of the checkpoints being evaluated.
        results_timeout: seconds after registration before a checkpoint's results are given up on.
        results_wait: when ``fit`` ends normally, seconds to wait for pipelines still running (not
            after an exception or an interrupt).
        listening_tests: ids of listening tests whose human scores are logged (once each test is
            closed; a test closed after the step's results were logged is logged at that step then).
        human_interval: seconds between reads of ``listening_tests`` for steps already logged.

    ``callback.alerts`` is the list of alerts received so far (each one is also logged, at ERROR
    for critical ones).
    """

    def __init__(
        self,
        client: EvalsiteClient,
        run_id: int | str,
        *,
        every_n_steps: int | None = None,
        uri_for: Callable[[str], str | None] | None = None,
        compute_sha256: bool = False,
        alert_interval: float | None = 60.0,
        close_timeout: float = 60.0,
        log_results: bool = True,
        results_interval: float = 30.0,
        results_timeout: float = 6 * 3600.0,
        results_wait: float = 0.0,
        listening_tests: Iterable[int] = (),
        human_interval: float = 600.0,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None; got {every_n_steps!r}")
        for name, value in (("close_timeout", close_timeout), ("results_wait", results_wait)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        # The reporter checks the rest; a mistake should fail here, not at fit's setup where it is only logged.
        tests = CheckpointReporter.check_options(
            alert_interval=alert_interval,
            results_interval=results_interval,
            results_timeout=results_timeout,
            listening_tests=listening_tests,
            human_interval=human_interval,
        )
        self.client = client
        self.run_id = run_id
        self.every_n_steps = every_n_steps
        self.uri_for = uri_for
        self.compute_sha256 = compute_sha256
        self.alert_interval = alert_interval
        self.close_timeout = close_timeout
        self.log_results = log_results
        self.results_interval = results_interval
        self.results_timeout = results_timeout
        self.results_wait = results_wait
        self.listening_tests = tests
        self.human_interval = human_interval
        self.steps: dict[int, str] = {}
        self.results: list[CheckpointResults] = []
        self._arrived: queue.SimpleQueue[CheckpointResults] = queue.SimpleQueue()
        self._alerts: list[dict[str, Any]] = []
        self._reporter: CheckpointReporter | None = None
        self._trainer: Any = None
        self._wrapper: Callable[..., Any] | None = None
        self._previous: Callable[..., Any] | None = None
        self._skipped_last = False

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert received so far, oldest first."""
        if self._reporter is not None:
            self._alerts.extend(self._reporter.new_alerts())
        return self._alerts

    @property
    def reporter(self) -> CheckpointReporter | None:
        """The background reporter of the current (or last) ``fit``; ``registered``/``failed`` are there."""
        return self._reporter

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        try:
            self._start(trainer)
        except Exception as exc:
            logger.warning("evalsite: callback disabled, could not start: %s", exc)

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self._write_results(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._write_results(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop(results_wait=self.results_wait)
        self._write_results(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._stop()
            self._write_results(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop()
        self._write_results(trainer)

    def _start(self, trainer: Any) -> None:
        self._stop()
        self._reporter = CheckpointReporter(
            self.client,
            self.run_id,
            uri_for=self.uri_for,
            compute_sha256=self.compute_sha256,
            alert_interval=self.alert_interval,
            on_results=self._arrive,
            results_interval=self.results_interval,
            results_timeout=self.results_timeout,
            listening_tests=self.listening_tests,
            human_interval=self.human_interval,
        )
        previous = vars(trainer).get("save_checkpoint")  # another wrapper, or None for the method
        original = trainer.save_checkpoint
        reporter = self._reporter

        def save_checkpoint(filepath: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(filepath, *args, **kwargs)
            if (
                self._trainer is trainer and self._reporter is reporter
            ):  # inert after this fit, even in a chain
                try:
                    self._saved(trainer, filepath)
                except Exception as exc:
                    logger.warning("evalsite: could not queue checkpoint %s: %s", filepath, exc)
            return result

        trainer.save_checkpoint = save_checkpoint
        self._trainer, self._wrapper, self._previous = trainer, save_checkpoint, previous

    def _stop(self, *, results_wait: float = 0.0) -> None:
        """Flush and stop; only a fit that ended normally waits ``results_wait`` for pipelines."""
        trainer, self._trainer = self._trainer, None
        if trainer is not None and vars(trainer).get("save_checkpoint") is self._wrapper:
            if self._previous is None:
                del trainer.save_checkpoint  # the class's method again
            else:
                trainer.save_checkpoint = self._previous
        self._wrapper = self._previous = None
        if self._reporter is not None:
            try:
                self._reporter.close(timeout=self.close_timeout, results_wait=results_wait)
            except Exception as exc:
                logger.warning("evalsite: flushing registrations failed: %s", exc)
            self._alerts.extend(self._reporter.new_alerts())

    def _saved(self, trainer: Any, filepath: Any) -> None:
        path = os.fspath(filepath)
        step = int(trainer.global_step)
        if self._reporter is None or (self.every_n_steps and step % self.every_n_steps):
            return
        if any(path == getattr(cb, "last_model_path", None) for cb in trainer.checkpoint_callbacks):
            if not self._skipped_last:
                self._skipped_last = True
                logger.info("evalsite: not registering %s (overwritten in place by later saves)", path)
            return
        if step in self.steps:
            if self.steps[step] != path:
                logger.info(
                    "evalsite: step %d is registered as %s; not registering %s", step, self.steps[step], path
                )
            return
        self.steps[step] = path
        self._reporter.checkpoint_saved(step, path)

    def _arrive(self, step: int, results: CheckpointResults) -> None:
        """Called in the reporter's thread: only queue, the loggers are written from the training thread."""
        self._arrived.put(results)

    def _write_results(self, trainer: Any) -> None:
        while True:
            try:
                results = self._arrived.get_nowait()
            except queue.Empty:
                return
            self.results.append(results)
            scalars = results.scalars()
            if not self.log_results or not scalars:
                continue
            for training_logger in trainer.loggers:
                try:
                    training_logger.log_metrics(scalars, step=results.step)
                except Exception as exc:
                    logger.warning(
                        "evalsite: %s could not log the results of step %d: %s",
                        type(training_logger).__name__,
                        results.step,
                        exc,
                    )
