"""A Lightning callback that registers every checkpoint the Trainer saves and polls alerts.

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from evalsite_client.api import EvalsiteClient
from evalsite_client.loop import CheckpointReporter


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
    """Register each checkpoint Lightning saves with evalsite, and collect the run's alerts.

    Example::

        client = EvalsiteClient(url, token=os.environ["EVALSITE_RUN_TOKEN"])
        callback = EvalsiteCallback(client, run_id)
        trainer = Trainer(callbacks=[ModelCheckpoint(every_n_train_steps=5000, save_top_k=-1), callback])
        trainer.fit(model)

    Only global rank 0 talks to the server. Registration and alert polling run in a background
    thread (:class:`~evalsite_client.loop.CheckpointReporter`), so training never waits on the
    network and never sees an exception from it: failures are logged as warnings. At the end of
    ``fit`` the queue is flushed for at most ``close_timeout`` seconds.

    Each step is registered once, with the first file saved at it. ``ModelCheckpoint``'s
    ``last.ckpt`` copies are skipped: the file is overwritten in place, so a later step's weights
    would be evaluated under an earlier step. A checkpoint saved by ``save_on_exception`` is not
    registered either (the callback stops at ``on_exception``, which runs first).

    Args:
        every_n_steps: register only saves whose step is a multiple of this (None: every save).
        uri_for: maps a saved path to the uri to register (e.g. after uploading it), or ``None``
            to skip it; runs in the background thread. Default: the absolute path.
        compute_sha256: send each file's sha256 (hashed in the background thread).
        alert_interval: seconds between alert polls; ``None`` turns polling off.

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
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None; got {every_n_steps!r}")
        self.client = client
        self.run_id = run_id
        self.every_n_steps = every_n_steps
        self.uri_for = uri_for
        self.compute_sha256 = compute_sha256
        self.alert_interval = alert_interval
        self.close_timeout = close_timeout
        self.steps: dict[int, str] = {}
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

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._stop()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop()

    def _start(self, trainer: Any) -> None:
        self._stop()
        self._reporter = CheckpointReporter(
            self.client,
            self.run_id,
            uri_for=self.uri_for,
            compute_sha256=self.compute_sha256,
            alert_interval=self.alert_interval,
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

    def _stop(self) -> None:
        trainer, self._trainer = self._trainer, None
        if trainer is not None and vars(trainer).get("save_checkpoint") is self._wrapper:
            if self._previous is None:
                del trainer.save_checkpoint  # the class's method again
            else:
                trainer.save_checkpoint = self._previous
        self._wrapper = self._previous = None
        if self._reporter is not None:
            try:
                self._reporter.close(timeout=self.close_timeout)
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
