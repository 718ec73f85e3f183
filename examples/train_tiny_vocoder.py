"""Train a tiny HiFi-GAN vocoder on the CPU and let a running evalsite evaluate every checkpoint.

What it shows: a training job that registers each checkpoint it writes with the platform (through
``evalsite_client``), prints the alerts the platform raises while it trains, and at the end waits
for the last checkpoint's evaluation and prints its metrics.

How to run it next to the demo (two terminals, from the repository root)::

    make demo                                               # terminal 1: site on :8000 + a worker
    .venv/bin/python manage.py api_token_create demo        # terminal 2: prints a researcher token evu_…
    .venv/bin/python examples/train_tiny_vocoder.py --server http://127.0.0.1:8000 --token evu_…

This creates a run (kind ``vocoder``, family ``hifigan``, eval set ``demo-espeak-speech``, the
demo's), trains for ``--steps`` (1500 by default: a few minutes on one or two cores) and writes
``checkpoint_step_{N}.pt`` every ``--checkpoint-every`` steps under ``--out``/run-<id>/. The run's
page (``/runs/<id>/``) fills in as the worker generates and scores each checkpoint. The run's own
token (``evr_…``) is printed once. With ``--run-id <id> --token evr_…`` (a job that holds only
a run token, or a second session of the same run) no run is created: a run without checkpoints
is trained from scratch; a run with checkpoints continues from its newest one (its weights, when
the file is readable here, with a fresh optimiser) and numbers the new steps after it.

The checkpoint paths are sent as local paths, so the platform's worker must be able to read them:
true for the demo (same machine); on a cluster, write ``--out`` to a shared filesystem.

The training speech is synthesised offline with eSpeak NG (``evalsite.demo.speech``): voices and
Harvard sentences (lists 4 and 5) that the demo eval set does not use (it has lists 1 to 3 in six
other voices), so the platform's metrics are measured on held-out speakers and sentences.

The training loop is :func:`models.training.train_vocoder`: mel L1 + multi-resolution STFT loss,
no discriminator, so the checkpoints improve quickly but the vocoder stays a toy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from evalsite_client import (  # noqa: E402
    ApiError,
    CheckpointReporter,
    EvalsiteClient,
    EvalsiteError,
    EvaluationTimeout,
    ServiceError,
)

DEMO_EVAL_SET = "demo-espeak-speech"  # evalsite/demo/management/commands/demo.py DEMO_EVALSET

# Six eSpeak NG voices the demo eval set does not use (it uses en-us, en-us+f3, en-gb-x-rp+m3,
# en-us+f4, en-gb-scotland+m7 and en-029+f2).
TRAIN_VOICES: tuple[str, ...] = (
    "en-us+m1",
    "en-gb-x-rp+f1",
    "en-us-nyc+m2",
    "en-gb-x-gbclan+f5",
    "en+m4",
    "en-gb-x-gbcwmd+f2",
)

# Harvard sentences, lists 4 and 5 (the demo eval set speaks lists 1 to 3).
TRAIN_SENTENCES: tuple[str, ...] = (
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    "The frosty air passed through the coat.",
    "The crooked maze failed to fool the mouse.",
    "Adding fast leaves us in the dark.",
    "A saw is a tool used for making boards.",
    "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.",
    "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.",
    "Both lost their lives in the raging storm.",
    "We talked of the side show in the circus.",
)

RESEARCHER_PREFIX = "evu_"
RUN_PREFIX = "evr_"
EXIT_UNREACHABLE = 2
EXIT_REJECTED = 3

logger = logging.getLogger("train_tiny_vocoder")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="train_tiny_vocoder.py",
        description="Train a tiny HiFi-GAN on the CPU; register each checkpoint with evalsite and print its alerts.",
        epilog="Run next to `make demo`; see the module docstring (and examples/README.md) for the steps.",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("EVALSITE_URL", "http://127.0.0.1:8000"),
        help="evalsite base URL (default: $EVALSITE_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("EVALSITE_TOKEN"),
        help="researcher token evu_… (creates a run) or, with --run-id, the run's token evr_… "
        "(default: $EVALSITE_TOKEN)",
    )
    parser.add_argument(
        "--run-id", type=int, default=None, help="register into this existing run (no run is created)"
    )
    parser.add_argument("--run-name", default=None, help="name of the new run (default: tiny-vocoder-<time>)")
    parser.add_argument(
        "--eval-set", default=DEMO_EVAL_SET, help=f"eval set of a new run (default: {DEMO_EVAL_SET})"
    )
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default: 1500)")
    parser.add_argument(
        "--checkpoint-every", type=int, default=300, help="steps between checkpoints (default: 300)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "var" / "examples" / "tiny-vocoder",
        help="where checkpoints go, in run-<id>/ (default: var/examples/tiny-vocoder)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--segment-s", type=float, default=0.35, help="seconds per training segment")
    parser.add_argument(
        "--lr", type=float, default=5e-3, help="learning rate at the first step (default: 5e-3)"
    )
    parser.add_argument(
        "--lr-final",
        type=float,
        default=5e-4,
        help="learning rate at the last step, reached by geometric decay (default: 5e-4)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the initial weights and the segment sampler"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="seconds to wait for the last checkpoint's evaluation (default: 600; 0 skips)",
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error(
            "--token is required (or set EVALSITE_TOKEN): `manage.py api_token_create <user>` issues one"
        )
    if args.token.startswith(RUN_PREFIX) and args.run_id is None:
        parser.error("a run token (evr_…) acts on one existing run only: pass its --run-id")
    if args.steps < 1 or args.checkpoint_every < 1:
        parser.error("--steps and --checkpoint-every must be >= 1")
    return args


def training_clips() -> tuple[list[Any], int]:
    """The training speech: every sentence of ``TRAIN_SENTENCES`` in every voice of ``TRAIN_VOICES``."""
    from evalsite.demo.speech import SAMPLE_RATE, synthesize

    clips = [synthesize(text, voice=voice)[0] for text in TRAIN_SENTENCES for voice in TRAIN_VOICES]
    return clips, SAMPLE_RATE


def format_alert(alert: dict[str, Any]) -> str:
    """One line per alert: severity, step, title (and the rule that raised it)."""
    return (
        f"ALERT [{alert.get('severity', '?')}] step {alert.get('checkpoint_step')}: {alert.get('title')} "
        f"({alert.get('rule', '')})"
    )


def format_metrics(checkpoint: dict[str, Any]) -> list[str]:
    """``name = value`` lines of a checkpoint's metrics, sorted by name."""
    metrics = checkpoint.get("metrics") or {}
    return [
        f"  {name} = {'n/a' if value is None else f'{value:.4f}'}" for name, value in sorted(metrics.items())
    ]


def connect(args: argparse.Namespace) -> tuple[EvalsiteClient, dict[str, Any]]:
    """Check the server answers, then create the run (researcher token) or look up ``--run-id``.

    Returns a client for the run (with the run's own token when this call created the run), and
    the run as the API returns it.

    Raises:
        ServiceError: the server cannot be reached (one quick try, no long retry loop).
        ApiError: the token or the request was rejected.
        ValueError: ``--run-id`` names a run that is not a vocoder run.
    """
    with EvalsiteClient(args.server, args.token, max_retries=1, backoff=0.2, timeout=(3, 30)) as probe:
        if args.run_id is not None:
            run = probe.run_get(args.run_id)
            if run.get("kind") != "vocoder":
                raise ValueError(
                    f"run {args.run_id} ({run.get('name')}) is a {run.get('kind')} run, not a vocoder run"
                )
            print(f"using run {run['id']} {run['name']!r} (eval set {run.get('eval_set')})")
            return EvalsiteClient(args.server, args.token), run
        name = args.run_name or f"tiny-vocoder-{time.strftime('%Y%m%d-%H%M%S')}"
        run = probe.run_create(
            name=name,
            kind="vocoder",
            model_family="hifigan",
            eval_set=args.eval_set,
            config={
                "trainer": "examples/train_tiny_vocoder.py",
                "steps": args.steps,
                "batch_size": args.batch_size,
                "segment_s": args.segment_s,
                "lr": args.lr,
                "lr_final": args.lr_final,
                "seed": args.seed,
            },
        )
    print(
        f"created run {run['id']} {run['name']!r} on eval set {run.get('eval_set')}: "
        f"{args.server.rstrip('/')}/runs/{run['id']}/"
    )
    print(
        f"its run token (shown once; train more into this run with --run-id {run['id']} --token ...): "
        f"{run['token']}"
    )
    return EvalsiteClient(args.server, run["token"]), run


class AlertPrinter:
    """Prints the run's alerts as they arrive, from a background thread (the training never waits)."""

    def __init__(self, client: EvalsiteClient, run_id: int, *, after: int = 0, interval: float = 5.0) -> None:
        self.client = client
        self.run_id = run_id
        self.interval = interval
        self.cursor = after
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-printer", daemon=True)

    def start(self) -> AlertPrinter:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for alert in self.client.alerts_follow(
                self.run_id,
                after=self.cursor,
                stop=self._stop,
                min_interval=self.interval,
                max_interval=4 * self.interval,
            ):
                self.show(alert)
        except EvalsiteError as exc:
            print(f"alert polling stopped: {exc}", flush=True)

    def show(self, alert: dict[str, Any]) -> None:
        self.cursor = max(self.cursor, int(alert.get("cursor") or 0))
        self.seen += 1
        print(format_alert(alert), flush=True)

    def drain(self) -> None:
        """Stop the thread, then fetch and print what arrived since."""
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            found, _ = self.client.alerts(self.run_id, after=self.cursor)
        except EvalsiteError as exc:
            print(f"could not fetch the last alerts: {exc}")
            return
        for alert in found:
            self.show(alert)


def starting_point(client: EvalsiteClient, run_id: int, seed: int) -> tuple[Any, int]:
    """The model to train and the steps already done: the run's newest checkpoint, or a fresh tiny HiFi-GAN."""
    import torch

    import models

    existing = sorted(client.checkpoints(run_id), key=lambda c: c["step"])
    done = int(existing[-1]["step"]) if existing else 0
    if existing:
        path = Path(existing[-1]["uri"])
        if path.is_file():
            print(f"continuing from step {done} ({path})")
            return models.load(path), done
        print(
            f"the run's newest checkpoint (step {done}, {path}) is not readable here; "
            f"training a fresh model, numbering steps after {done}"
        )
    torch.manual_seed(seed)
    return models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), done


def train(args: argparse.Namespace, client: EvalsiteClient, run: dict[str, Any]) -> int:
    """Train, registering each checkpoint and printing the run's new alerts; returns the last step."""
    import torch

    from models.training import train_vocoder

    if args.threads:
        torch.set_num_threads(args.threads)
    run_id = int(run["id"])
    model, start_step = starting_point(client, run_id, args.seed)
    clips, sample_rate = training_clips()
    seconds = sum(len(c) for c in clips) / sample_rate
    out = (args.out / f"run-{run_id}").resolve()
    print(
        f"training a tiny HiFi-GAN on {len(clips)} clips ({seconds:.0f} s of speech) for {args.steps} steps; "
        f"checkpoints every {args.checkpoint_every} steps in {out}"
    )
    started = time.perf_counter()
    alerts = AlertPrinter(client, run_id, after=int(run.get("alert_cursor") or 0)).start()
    # Alerts are printed by AlertPrinter; the reporter only registers checkpoints, in its own thread.
    with CheckpointReporter(client, run_id, alert_interval=None, retry_interval=15.0) as reporter:

        def on_checkpoint(step: int, path: Path, loss: float) -> None:
            reporter.checkpoint_saved(step, path)
            print(
                f"step {step}: mean training loss {loss:.3f}, {time.perf_counter() - started:.0f} s; "
                f"registering {path.name}",
                flush=True,
            )

        train_vocoder(
            model,
            clips,
            sample_rate,
            steps=args.steps,
            batch_size=args.batch_size,
            segment_s=args.segment_s,
            lr=args.lr,
            lr_final=args.lr_final,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=out,
            on_checkpoint=on_checkpoint,
            log_every=max(args.steps // 10, 1),
            start_step=start_step,
        )
    for step, uri, error in reporter.failed:
        print(f"step {step} ({uri}) was not registered: {error}")
    print(
        f"training done in {time.perf_counter() - started:.0f} s; {len(reporter.registered)} checkpoints registered"
    )
    last = start_step + args.steps
    if args.wait > 0 and any(c.get("step") == last for c in reporter.registered):
        print(f"waiting up to {args.wait:.0f} s for the evaluation of step {last} ...")
        try:
            checkpoint = client.checkpoint_wait(run_id, last, timeout=args.wait, poll_interval=5.0)
        except EvaluationTimeout as exc:
            print(f"{exc}; the run page keeps updating: {args.server.rstrip('/')}/runs/{run_id}/")
        except EvalsiteError as exc:
            print(f"could not follow the evaluation of step {last}: {exc}")
        else:
            print(
                f"step {last}: {checkpoint['status']}"
                + (f" ({checkpoint.get('error')})" if checkpoint.get("error") else "")
            )
            for line in format_metrics(checkpoint):
                print(line)
    alerts.drain()
    print(f"{alerts.seen} alert(s) received. Run page: {args.server.rstrip('/')}/runs/{run_id}/")
    return last


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = parse_args(argv)
    try:
        client, run = connect(args)
    except ServiceError as exc:
        print(
            f"error: cannot reach evalsite at {args.server} ({exc}).\n"
            f"Is it running? `make demo` serves http://127.0.0.1:8000; pass --server for another address.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except ApiError as exc:
        hint = ""
        if exc.status == 401:
            hint = " Issue a researcher token with `.venv/bin/python manage.py api_token_create <user>`."
        elif exc.status == 409:
            hint = " Pick another --run-name."
        print(f"error: evalsite rejected the request: {exc}{hint}", file=sys.stderr)
        return EXIT_REJECTED
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except EvalsiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with client:
        try:
            train(args, client, run)
        except KeyboardInterrupt:
            print("interrupted; checkpoints written so far stay registered")
            return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
