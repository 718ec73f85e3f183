"""Each checkpoint's metrics, human scores and alerts, back where training is watched.

The plain-loop reporter hands them to ``on_results``; the Lightning callback writes them into the
Trainer's own loggers at the checkpoint's step, and the tests read back what TensorBoard and CSV wrote.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evalsite_client import CheckpointReporter, CheckpointResults
from tests.client.fake_api import make_client
from tests.client.tiny_training import fit_tiny_model, lightning_warnings

CHECKPOINT_2 = r"/api/v1/runs/1/checkpoints/2/"


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    give_up_at = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up_at, "timed out"
        time.sleep(0.01)


def listening_results(
    name: str, rated: dict[str, tuple[int, int, float | None]], status: str = "closed"
) -> dict[str, Any]:
    """The shape of GET /listening-tests/<id>/results/: ``rated`` maps a label to (run id, step, mean)."""
    conditions = [
        {
            "label": label,
            "role": "system",
            "role_label": "System",
            "checkpoint": {"id": n, "run": f"run-{run}", "run_id": run, "step": step},
        }
        for n, (label, (run, step, _)) in enumerate(rated.items())
    ]
    conditions.append(
        {"label": "reference", "role": "reference", "role_label": "Reference", "checkpoint": None}
    )
    kept = [{"system": label, "n": 40, "mean": mean} for label, (_, _, mean) in rated.items()]
    kept.append({"system": "reference", "n": 40, "mean": 4.5})
    return {
        "test": {"id": 7, "name": name, "kind": "mos", "status": status},
        "design": {"conditions": conditions},
        "scores": {"method": "t interval", "kept": kept, "all": kept},
    }


class Collected(list):
    """An ``on_results`` that records ``(step, results, thread name)``."""

    def __call__(self, step: int, results: CheckpointResults) -> None:
        self.append((step, results, threading.current_thread().name))

    def by_step(self) -> dict[int, CheckpointResults]:
        return {step: results for step, results, _ in self}


def reporter_for(client: Any, on_results: Callable[..., None], **options: Any) -> CheckpointReporter:
    settings = {"alert_interval": 0.01, "results_interval": 0.01, **options}
    return CheckpointReporter(client, 1, on_results=on_results, **settings)


def test_results_arrive_with_metrics_human_scores_and_alerts_once_each_pipeline_ends(server):
    server.pipeline(2, ["scoring", "detecting", "done"], metrics={"mel_l1": 0.25, "pesq": 3.5})
    server.pipeline(
        4, ["done"], metrics={"mel_l1": 0.125, "pesq": 3.75}, alerts=[("PESQ dropped", "metric_regressed")]
    )
    server.add_alert(1, "mel L1 regressed", step=2)
    server.add_alert(1, "mel L1 regressed again", step=2)
    server.add_alert(1, "FAD jumped", step=2, rule="fad_jump", severity="critical")
    server.add_alert(1, "another step", step=9)
    server.listening_results[7] = listening_results(
        "MOS week 1", {"A": (1, 2, 3.875), "B": (1, 4, 4.25), "other run": (2, 2, 1.0)}
    )
    collected = Collected()

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = reporter_for(client, collected, listening_tests=[7], results_interval=0.1)
        reporter.checkpoint_saved(2, "/ckpt/2.pt")
        reporter.checkpoint_saved(4, "/ckpt/4.pt")
        wait_until(lambda: len(collected) == 2)
        reporter.close(timeout=10)

    results = collected.by_step()
    assert results[2].status == "done" and results[2].error == ""
    assert results[2].metrics == {"mel_l1": 0.25, "pesq": 3.5}
    assert results[2].human == {"MOS week 1": 3.875}
    assert [a["title"] for a in results[2].alerts] == [
        "mel L1 regressed",
        "mel L1 regressed again",
        "FAD jumped",
    ]
    assert results[2].scalars() == {
        "evalsite/mel_l1": 0.25,
        "evalsite/pesq": 3.5,
        "evalsite/human/MOS week 1": 3.875,
        "evalsite/alerts/metric_regressed": 2.0,
        "evalsite/alerts/fad_jump": 1.0,
    }
    assert results[4].scalars() == {
        "evalsite/mel_l1": 0.125,
        "evalsite/pesq": 3.75,
        "evalsite/human/MOS week 1": 4.25,
        "evalsite/alerts/metric_regressed": 1.0,  # raised just after the pipeline ended
    }
    assert {thread for _, _, thread in collected} == {"evalsite-reporter-1"}  # never the training thread
    assert [r.step for r in reporter.results] == [step for step, _, _ in collected]
    assert len(server.requests("GET", r"/api/v1/runs/1/checkpoints/4/")) == 1  # no read after "done"


def test_a_listening_test_closed_later_brings_its_scores_once_at_the_rated_step(server):
    server.pipeline(2, ["done"], metrics={"mel_l1": 0.5})
    server.pipeline(4, ["done"], metrics={"mel_l1": 0.25})
    rated = {"A": (1, 2, 3.5), "B": (1, 4, 4.0)}
    server.listening_results[7] = listening_results("MOS", rated, status="published")
    server.listening_results[8] = listening_results("other run", {"A": (2, 2, 1.0)})
    collected = Collected()

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = reporter_for(client, collected, listening_tests=[7, 8], human_interval=0.05)
        reporter.checkpoint_saved(2, "/ckpt/2.pt")
        reporter.checkpoint_saved(4, "/ckpt/4.pt")
        wait_until(lambda: len(collected) == 2)
        server.listening_results[7] = listening_results("MOS", rated, status="closed")
        wait_until(lambda: len(collected) == 4)
        reads = len(server.requests("GET", r"/api/v1/listening-tests/\d/results/"))
        time.sleep(0.2)
        # All known: test 7 gave both scores, and test 8 was closed without rating these steps.
        assert len(server.requests("GET", r"/api/v1/listening-tests/\d/results/")) == reads
        reporter.close(timeout=10)

    assert [r.human for _, r, _ in collected[:2]] == [{}, {}]  # an open test's means still move
    assert [(step, r.scalars()) for step, r, _ in collected[2:]] == [
        (2, {"evalsite/human/MOS": 3.5}),
        (4, {"evalsite/human/MOS": 4.0}),
    ]


def test_close_waits_results_wait_seconds_for_pipelines_still_running(server):
    server.pipeline(2, ["generating", "scoring", "detecting", "done"], metrics={"mel_l1": 0.5})
    server.pipeline(4, ["generating"] * 10_000)
    collected = Collected()

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = reporter_for(client, collected, results_interval=0.05)
        reporter.checkpoint_saved(2, "/ckpt/2.pt")
        reporter.checkpoint_saved(4, "/ckpt/4.pt")
        started = time.monotonic()
        reporter.close(timeout=10, results_wait=1.0)

    assert time.monotonic() - started < 5
    assert [(step, results.metrics) for step, results, _ in collected] == [(2, {"mel_l1": 0.5})]
    assert reporter.abandoned == [4]


def test_a_failed_pipeline_reports_its_error_and_the_metrics_computed_before(server):
    server.pipeline(2, ["scoring", "failed"], metrics={"mel_l1": 0.5}, error="scoring: CUDA out of memory")
    collected = Collected()

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = reporter_for(client, collected)
        reporter.checkpoint_saved(2, "/ckpt/2.pt")
        reporter.close(timeout=10, results_wait=5)

    [(step, results, _)] = collected
    assert (step, results.status, results.error) == (2, "failed", "scoring: CUDA out of memory")
    assert results.scalars() == {"evalsite/mel_l1": 0.5}


def test_results_given_up_after_results_timeout_with_a_warning(server, caplog):
    server.pipeline(2, ["scoring"] * 10_000)
    collected = Collected()

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = reporter_for(client, collected, results_interval=0.02, results_timeout=0.2)
        reporter.checkpoint_saved(2, "/ckpt/2.pt")
        wait_until(lambda: reporter.abandoned == [2])
        reads = len(server.requests("GET", CHECKPOINT_2))
        time.sleep(0.1)
        assert len(server.requests("GET", CHECKPOINT_2)) == reads  # no more reads once given up
        reporter.close(timeout=10)

    assert collected == []
    assert "step 2: pipeline not ended 0.2 s after registration; results not reported" in caplog.text


def test_garbage_nan_and_huge_answers_are_left_out_with_warnings_and_the_rest_is_reported(server, caplog):
    caplog.set_level(logging.WARNING, logger="evalsite_client")
    metrics = {
        "ok": 0.5,
        "nan": math.nan,
        "inf": math.inf,
        "text": "0.9",
        "flag": True,
        "": 1.0,
        "x" * 300: 1.0,
        "not computed": None,
    }
    server.pipeline(2, ["done"], metrics=metrics)
    server.pipeline(4, ["done"], metrics={f"m{i}": float(i) for i in range(5000)})
    server.pipeline(6, ["done"], metrics=["mel_l1", 0.25])
    server.pipeline(8, ["scoring", "done"], metrics={"mel_l1": 0.125})
    server.inject("GET", r"/api/v1/runs/1/checkpoints/8/", "status", status=200, body=b"<html>proxy</html>")
    server.inject("GET", r"/api/v1/runs/1/checkpoints/8/", "status", status=200, body=["not", "an", "object"])
    server.inject("GET", r"/api/v1/runs/1/alerts/", "status", status=200, body=b"garbage")
    server.listening_results[7] = {"test": {"name": "MOS"}, "design": "garbage"}
    server.listening_results[8] = listening_results("MOS nan", {"A": (1, 2, math.nan)})
    collected = Collected()

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = reporter_for(client, collected, listening_tests=[7, 8, 9])
        started = time.monotonic()
        for step in (2, 4, 6, 8):
            reporter.checkpoint_saved(step, f"/ckpt/{step}.pt")
        assert time.monotonic() - started < 0.25  # the loop never waited
        wait_until(lambda: len(collected) == 4)
        reporter.close(timeout=10)

    results = collected.by_step()
    assert {step: r.scalars() for step, r in results.items()} == {
        2: {"evalsite/ok": 0.5},
        4: {},
        6: {},
        8: {"evalsite/mel_l1": 0.125},
    }
    text = caplog.text
    assert "step 2: metrics '', 'flag', 'inf', 'nan', 'text', 'xxx" in text and "not computed" not in text
    assert "step 4: 5000 metrics, more than 1000; none logged" in text
    assert "step 6: metrics is a list, not an object; none logged" in text
    assert "answered 200 without JSON" in text and "step 8: unreadable answer (list)" in text
    assert "could not poll alerts of run 1" in text
    assert "human scores of listening test 7 unavailable: design.conditions is missing" in text
    assert "human scores of listening test 9 unavailable: HTTP 404" in text


def test_an_exception_in_on_results_is_logged_and_later_results_still_arrive(server, caplog):
    server.pipeline(2, ["done"], metrics={"mel_l1": 0.5})
    server.pipeline(4, ["scoring", "scoring", "done"], metrics={"mel_l1": 0.25})
    steps: list[int] = []

    def on_results(step: int, results: CheckpointResults) -> None:
        steps.append(step)
        if step == 2:
            raise RuntimeError("the user's callback is broken")

    with make_client(server.url, token=server.run["token"]) as client:
        reporter = reporter_for(client, on_results)
        reporter.checkpoint_saved(2, "/ckpt/2.pt")
        reporter.checkpoint_saved(4, "/ckpt/4.pt")
        wait_until(lambda: steps == [2, 4])
        reporter.close(timeout=10)

    assert (
        "on_results failed for step 2; ignored" in caplog.text
        and "the user's callback is broken" in caplog.text
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"results_interval": 0}, "results_interval must be a number > 0"),
        ({"results_timeout": -1.0}, "results_timeout must be a number > 0"),
        ({"results_interval": math.nan}, "results_interval must be a number > 0"),
        ({"alert_interval": math.inf}, "alert_interval must be a number > 0 or None"),
        ({"retry_interval": "60"}, "retry_interval must be a number > 0"),
        ({"max_pending": 0}, "max_pending must be an int >= 1"),
        ({"human_interval": 0.0}, "human_interval must be a number > 0"),
        ({"on_results": "print"}, "on_results must be callable"),
        ({"listening_tests": [7, 0]}, "listening_tests must be ids"),
        ({"listening_tests": [True]}, "listening_tests must be ids"),
    ],
)
def test_reporter_options_out_of_range_are_refused(options, message):
    with make_client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match=message):
            CheckpointReporter(client, 1, **options)


def test_close_refuses_a_negative_results_wait(server):
    with make_client(server.url, token=server.run["token"]) as client:
        reporter = CheckpointReporter(client, 1, alert_interval=None)
        with pytest.raises(ValueError, match="results_wait must be a number >= 0"):
            reporter.close(results_wait=-1)
        reporter.close()


# --- Lightning: read back what the loggers wrote ------------------------------------------------


def recording_logger(fail: bool = False) -> Any:
    """A Lightning ``Logger`` that records each ``log_metrics`` call and its thread (or fails, when ``fail``)."""
    from lightning.pytorch.loggers import Logger

    class Recording(Logger):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[dict[str, float], int | None, str]] = []

        @property
        def name(self) -> str:
            return "recording"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            if fail:
                raise OSError("disk full")
            self.calls.append((dict(metrics), step, threading.current_thread().name))

    return Recording()


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("evalsite/")
    }


def csv_scalars(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    found: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for name, value in row.items():
            if name.startswith("evalsite/") and value != "":
                found.setdefault(name, []).append((int(row["step"]), float(value)))
    return {name: sorted(points) for name, points in found.items()}


@lightning_warnings
def test_lightning_writes_results_into_tensorboard_and_csv_at_each_checkpoints_step(server, tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from evalsite_client.lightning import EvalsiteCallback

    server.pipeline(2, ["scoring", "done"], metrics={"mel_l1": 0.5, "pesq": 3.25})
    server.pipeline(4, ["scoring", "done"], metrics={"mel_l1": 0.375, "pesq": 3.5})
    server.pipeline(
        6,
        ["scoring", "detecting", "done"],
        metrics={"mel_l1": 0.25, "pesq": 3.75},
        alerts=[("FAD", "fad_jump")],
    )
    server.add_alert(1, "mel L1 regressed", step=4)
    server.listening_results[7] = listening_results("MOS", {"A": (1, 2, 3.5), "B": (1, 6, 4.125)})
    tensorboard = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    csv_logger = CSVLogger(tmp_path / "csv", name="", version=0)
    recording = recording_logger()

    with make_client(server.url, token=server.run["token"]) as client:
        callback = EvalsiteCallback(
            client, 1, alert_interval=0.01, results_interval=0.1, results_wait=10, listening_tests=[7]
        )
        trainer = fit_tiny_model(
            tmp_path, callback, logger=[tensorboard, csv_logger, recording], step_seconds=0.1
        )

    expected = {
        "evalsite/mel_l1": [(2, 0.5), (4, 0.375), (6, 0.25)],
        "evalsite/pesq": [(2, 3.25), (4, 3.5), (6, 3.75)],
        "evalsite/human/MOS": [(2, 3.5), (6, 4.125)],
        "evalsite/alerts/metric_regressed": [(4, 1.0)],
        "evalsite/alerts/fad_jump": [(6, 1.0)],
    }
    assert tensorboard_scalars(tmp_path / "tb" / "version_0") == expected
    assert csv_scalars(tmp_path / "csv" / "version_0" / "metrics.csv") == expected
    assert [r.step for r in callback.results] == [step for _, step, _ in recording.calls]
    assert {thread for _, _, thread in recording.calls} == {threading.main_thread().name}
    assert trainer.global_step == 6


@lightning_warnings
def test_lightning_logs_results_during_training_not_only_at_the_end(server, tmp_path):
    pytest.importorskip("lightning")
    from evalsite_client.lightning import EvalsiteCallback

    server.pipeline(2, ["done"], metrics={"mel_l1": 0.5})
    recording = recording_logger()
    seen_at: list[int] = []

    class Watching(EvalsiteCallback):
        def _write_results(self, trainer: Any) -> None:
            before = len(recording.calls)
            super()._write_results(trainer)
            if len(recording.calls) > before:
                seen_at.append(trainer.global_step)

    with make_client(server.url, token=server.run["token"]) as client:
        callback = Watching(client, 1, alert_interval=None, results_interval=0.01)
        fit_tiny_model(tmp_path, callback, logger=recording, step_seconds=0.3)

    assert [(metrics, step) for metrics, step, _ in recording.calls] == [({"evalsite/mel_l1": 0.5}, 2)]
    assert seen_at and 2 < seen_at[0] < 6  # written at a later batch's end, at the checkpoint's step


@lightning_warnings
def test_lightning_bad_answers_and_a_failing_logger_never_stop_training(server, tmp_path, caplog):
    pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    from evalsite_client.lightning import EvalsiteCallback

    caplog.set_level(logging.WARNING, logger="evalsite_client")
    server.pipeline(2, ["done"], metrics={"mel_l1": math.nan, "pesq": 3.5})
    server.pipeline(4, ["done"], metrics="garbage")
    server.pipeline(6, ["done"], metrics={"mel_l1": 0.25})
    server.inject("GET", r"/api/v1/runs/1/checkpoints/6/", "status", status=200, body=b"\x00" * 100_000)
    csv_logger = CSVLogger(tmp_path / "csv", name="", version=0)

    with make_client(server.url, token=server.run["token"]) as client:
        callback = EvalsiteCallback(client, 1, alert_interval=0.01, results_interval=0.01, results_wait=10)
        trainer = fit_tiny_model(tmp_path, callback, logger=[recording_logger(fail=True), csv_logger])

    assert trainer.global_step == 6
    assert csv_scalars(tmp_path / "csv" / "version_0" / "metrics.csv") == {
        "evalsite/pesq": [(2, 3.5)],
        "evalsite/mel_l1": [(6, 0.25)],
    }
    assert "Recording could not log the results of step 2: disk full" in caplog.text
    assert "step 2: metrics 'mel_l1' have no usable name or finite value; not logged" in caplog.text
    assert "step 4: metrics is a str, not an object; none logged" in caplog.text


@lightning_warnings
def test_a_crashing_fit_does_not_wait_results_wait_for_pipelines(server, tmp_path):
    pytest.importorskip("lightning")
    from evalsite_client.lightning import EvalsiteCallback

    server.pipeline(2, ["scoring"] * 10_000)
    with make_client(server.url, token=server.run["token"]) as client:
        callback = EvalsiteCallback(client, 1, alert_interval=None, results_interval=0.01, results_wait=60)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="training crashed"):
            fit_tiny_model(tmp_path, callback, crash_at_step=3)

    assert time.monotonic() - started < 30
    assert [c["step"] for c in callback.reporter.registered] == [2] and callback.reporter.abandoned == [2]


def test_lightning_callback_refuses_options_out_of_range():
    pytest.importorskip("lightning")
    from evalsite_client.lightning import EvalsiteCallback

    with make_client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="results_wait must be a number >= 0"):
            EvalsiteCallback(client, 1, results_wait=-1)
        with pytest.raises(ValueError, match="results_interval must be a number > 0"):
            EvalsiteCallback(client, 1, results_interval=0)
