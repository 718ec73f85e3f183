"""Run the platform on its embedded default with demo data: one command, no servers needed."""

import hashlib
import os
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from evalsite.core.exceptions import ApplicationError
from evalsite.core.processes import ChildProcesses, StopRequested, StopSignals
from evalsite.demo.speech import DEMO_SENTENCES, DEMO_SPEAKERS, SAMPLE_RATE, synthesize, write_demo_corpus
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_create
from evalsite.listening.models import ListeningTest
from evalsite.listening.selectors import listening_test_progress
from evalsite.listening.services import TestDesign, listening_test_create
from evalsite.runs.models import Checkpoint, EvalSet, Run
from evalsite.runs.services import checkpoint_register, run_create
from evalsite.scoring.models import MetricResult

DEMO_EVALSET = "demo-espeak-speech"
DEMO_USER = "demo"
# (run name, kind, family, preset, generation params). The vocoder's checkpoints come from a short
# CPU training run (DEMO_VOCODER_TRAINING), so its metrics improve from step to step; the tokenizer
# stays a randomly initialised tiny model (DEMO_RANDOM_STEPS) that only shows the pipeline.
DEMO_RUNS = (
    ("demo-hifigan-tiny", "vocoder", "hifigan", "tiny", {}),
    ("demo-sat-tiny", "tokenizer", "sat", "tiny", {"resample": True}),
)
DEMO_RANDOM_STEPS = (1000, 2000)
# models.training.train_vocoder settings of the demo vocoder (≈ 1 min on one CPU core). The training
# speech is the demo's six voices saying the Harvard sentences the 24 eval items do not use
# (DEMO_SENTENCES[24:]), so every eval item stays held out. The trained checkpoints are cached
# under var/demo-checkpoints/ in a directory named by a hash of these settings.
DEMO_VOCODER_TRAINING = {
    "preset": "tiny",
    "init_seed": 0,
    "steps": 360,
    "checkpoint_every": 120,
    "batch_size": 8,
    "segment_s": 0.35,
    "lr": 5e-3,
    "lr_final": 5e-4,
    "seed": 0,
    "sentences": "DEMO_SENTENCES[24:]",
    "voices": "DEMO_SPEAKERS",
    "version": 1,
}
TRAINING_MANIFEST = "training.json"
# The demo tests: (name, kind, main trials per listener). Per listener: MUSHRA trials hold every
# checkpoint; SMOS rates one checkpoint a trial, so 6 gives each of the 3 checkpoints 2 trials.
DEMO_TESTS = (("demo-mushra", "mushra", 4), ("demo-smos", "smos", 6))


def demo_test_designs(checkpoints: list[Checkpoint]) -> list[TestDesign]:
    """The demo's tests as a researcher should build them: headphone check (with level calibration),
    every sound played before answering, and one gold and one trapping trial per listener."""
    return [
        TestDesign(
            name=name,
            kind=kind,
            checkpoints=checkpoints,
            training_items=1,
            trials_per_participant=per_listener,
            votes_target=20,
            title=f"Demo {kind.upper()} test",
            completion_code="DEMO-THANKS",
            headphone_check=True,
            require_play_all=True,
            gold_items=2,
            trapping_items=2,
        )
        for name, kind, per_listener in DEMO_TESTS
    ]


# Seconds each child gets to stop on SIGTERM before it is killed: an idle worker's warm shutdown takes
# about 8 s on a 2-core machine, a busy one first finishes its task (acks_late redelivers a killed one).
STOP_GRACE_S = 20.0


class Command(BaseCommand):
    help = (
        "Migrate, start a Celery worker, synthesise and import the eSpeak NG demo eval set through it, "
        "then serve the site and print the URLs to open (Ctrl-C stops everything)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--no-serve", action="store_true", help="load the demo data through the worker, then exit"
        )
        parser.add_argument(
            "--timeout", type=float, default=600.0, help="seconds to wait for the demo import job"
        )

    def handle(self, *args, **opts):
        # Ctrl-C (or SIGTERM) is the documented way to stop a serving demo, so it ends with status 0;
        # with --no-serve it means the data was not loaded, which a script must see (130, as for SIGINT).
        with StopSignals() as signals:
            children = ChildProcesses(grace_s=STOP_GRACE_S)
            try:
                self._run(children, signals, opts)
            except StopRequested as stop:
                if opts["no_serve"]:
                    raise CommandError(
                        f"{stop} before the demo data was loaded; run the demo again", returncode=130
                    ) from None
            finally:
                signals.quiet()
                self._stop(children, signals)

    def _stop(self, children: ChildProcesses, signals: StopSignals) -> None:
        running = [child.name for child in children.children if child.exit_status() is None]
        signals_before = len(signals.received)
        try:
            if running:
                # After a Ctrl-C the terminal has echoed "^C" on the current line.
                newline = "\n" if signals.received else ""
                self.stdout.write(
                    f"{newline}stopping the {' and the '.join(reversed(running))} (Ctrl-C again to kill) ..."
                )
        finally:
            killed = children.stop(hurry=lambda: len(signals.received) > signals_before)
        if running:
            self.stdout.write(
                f"stopped (killed the {' and the '.join(c.name for c in killed)})" if killed else "stopped"
            )

    def _run(self, children: ChildProcesses, signals: StopSignals, opts: dict) -> None:
        """Returns after --no-serve; otherwise serves until a stop signal (StopRequested) or a child's exit."""
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log_dir = Path(settings.VAR_DIR) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)

        call_command("migrate", interactive=False, verbosity=0)
        self._ensure_demo_user()

        with signals.held():
            worker = children.start(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "evalsite",
                    "worker",
                    "-Q",
                    "gpu,cpu",
                    "--concurrency",
                    "1",
                    "-n",
                    "demo@%h",
                    "--loglevel",
                    "INFO",
                    "--beat",
                ],
                log_path=log_dir / "worker.log",
                env=child_env,
            )
        self.stdout.write(f"worker started (pid {worker.pid}, log {worker.log_path})")

        corpus = self._write_corpus()
        job = job_create(
            kind=Job.Kind.IMPORT_EVALSET,
            params={
                "name": DEMO_EVALSET,
                "source": str(corpus),
                "description": "eSpeak NG sentences, several voices",
            },
        )
        self.stdout.write(f"import job {job.pk} queued; waiting for the worker ...")
        job = self._wait(job.pk, children, opts["timeout"])
        result = job.result
        self.stdout.write(
            f"demo eval set {DEMO_EVALSET!r}: {result.get('created', 0)} created, "
            f"{result.get('unchanged', 0)} unchanged, {len(result.get('errors', []))} rejected"
        )
        run_ids = self._register_demo_runs(result["eval_set_id"], children, opts["timeout"])
        invites = self._build_demo_tests()
        if opts["no_serve"]:
            return
        self._collect_static()

        with signals.held():
            web = children.start(
                "web server",
                [sys.executable, "manage.py", "runserver", f"{opts['host']}:{opts['port']}", "--noreload"],
                log_path=log_dir / "web.log",
                env=child_env,
                cwd=settings.BASE_DIR,
            )
        self.stdout.write(f"web server started (pid {web.pid}, log {web.log_path})")
        base = f"http://{opts['host']}:{opts['port']}"
        self.stdout.write(self.style.SUCCESS("\nevalsite demo is running:"))
        self.stdout.write(f"  overview      {base}/          (log in as {DEMO_USER} / {DEMO_USER})")
        self.stdout.write(f"  demo eval set {base}/evalsets/{result.get('eval_set_id')}/")
        for name, pk in run_ids.items():
            self.stdout.write(f"  run           {base}/runs/{pk}/   ({name})")
        for name, token in invites.items():
            self.stdout.write(
                f"  listen        {base}/l/i/{token}/   ({name}, as a listener; use a private window)"
            )
        self.stdout.write(f"  admin         {base}/admin/")
        self.stdout.write(f"  health        {base}/healthz")
        self.stdout.write("Ctrl-C stops the web server and the worker.")
        while True:
            self._check_children(children)
            time.sleep(0.5)

    def _check_children(self, children: ChildProcesses) -> None:
        """A child that exits while the demo runs has crashed: the children run in their own sessions, so
        a Ctrl-C in the terminal reaches only this process, which stops them itself."""
        exited = children.first_exited()
        if exited is not None:
            child, status = exited
            raise CommandError(
                f"the {child.name} (pid {child.pid}) exited unexpectedly ({status}); "
                f"see its log {child.log_path}"
            )

    def _collect_static(self) -> None:
        """Hashed, compressed static files under STATIC_ROOT, which the web server (DEBUG off) serves with
        WhiteNoise: without them every page would fail to name its scripts. collectstatic compresses every
        file again each time (tens of CPU seconds on a small machine), so it runs only when the files the
        finders see (names, sizes, times) have changed since the last run."""
        from django.contrib.staticfiles import finders

        digest = hashlib.sha256(settings.STORAGES["staticfiles"]["BACKEND"].encode())
        for finder in finders.get_finders():
            for path, storage in finder.list(["CVS", ".*", "*~"]):
                stat = os.stat(storage.path(path))
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        stamp = Path(settings.STATIC_ROOT) / ".evalsite-sources"
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return
        self.stdout.write("collecting static files (hashed names, gzip and brotli copies) ...")
        call_command("collectstatic", interactive=False, verbosity=0)
        stamp.write_text(digest.hexdigest())

    def _ensure_demo_user(self) -> None:
        User = get_user_model()
        if not User.objects.filter(username=DEMO_USER).exists():
            User.objects.create_superuser(DEMO_USER, email="", password=DEMO_USER)

    def _write_corpus(self) -> Path:
        out = Path(settings.VAR_DIR) / "demo-corpus"
        self.stdout.write(f"synthesising demo speech with eSpeak NG into {out} ...")
        return write_demo_corpus(out)

    def _register_demo_runs(
        self, eval_set_id: int, children: ChildProcesses, timeout: float
    ) -> dict[str, int]:
        """Train (or reuse) the vocoder's checkpoints, write random SAT ones, register them and wait
        for the worker to generate and score them."""
        # torch and the model stack: loaded for training and checkpoints only, not by the served site.
        import torch

        import models

        eval_set = EvalSet.objects.get(pk=eval_set_id)
        ckpt_dir = Path(settings.VAR_DIR) / "demo-checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        run_ids: dict[str, int] = {}
        jobs = []
        for name, kind, family, preset, params in DEMO_RUNS:
            if kind == "vocoder":
                key, checkpoints = self._trained_vocoder_checkpoints(ckpt_dir)
                run_dir, config = checkpoints[0][1].parent, {"demo_training": key}
            else:
                self.stdout.write(
                    f"{name}: randomly initialised {family} {preset!r} checkpoints (steps "
                    f"{', '.join(map(str, DEMO_RANDOM_STEPS))}): they show the pipeline, their "
                    "output is not speech"
                )
                run_dir, config = ckpt_dir / name, {}
                checkpoints = []
                for step in DEMO_RANDOM_STEPS:
                    path = run_dir / f"checkpoint_step_{step}.pt"
                    if not path.exists():
                        torch.manual_seed(step)
                        cls = models.resolve_family(family)
                        models.save_checkpoint(cls.from_config(cls.preset(preset)), path)
                    checkpoints.append((step, path))
            run = Run.objects.filter(name=name).first()
            if run is None:
                run, _ = run_create(
                    name=name,
                    kind=kind,
                    model_family=family,
                    eval_set=eval_set,
                    config=config,
                    checkpoint_dir=str(run_dir),
                )
            run_ids[name] = run.pk
            if run.config.get("demo_training") != config.get("demo_training"):
                self.stdout.write(
                    self.style.WARNING(
                        f"run {name!r} in {settings.VAR_DIR} comes from an earlier version of the demo (other "
                        "checkpoints); it is left as it is. `make clean-var` and `make demo` again to see the "
                        "trained checkpoint series."
                    )
                )
                continue
            for step, path in checkpoints:
                checkpoint, created = checkpoint_register(run=run, step=step, uri=str(path), params=params)
                if created:
                    jobs.append(checkpoint.jobs.get())
        for job in jobs:
            self.stdout.write(
                f"generation job {job.pk} ({job.run.name} step {job.checkpoint.step}) queued ..."
            )
            done = self._wait(job.pk, children, timeout)
            self.stdout.write(
                f"  {done.result.get('done', 0)} clips generated on {done.result.get('device')}"
            )
            if done.result.get("metrics_job_id"):
                scored = self._wait(done.result["metrics_job_id"], children, timeout)
                failed = scored.result.get("failed", {})
                self.stdout.write(f"  {scored.result.get('done', 0)} metrics stored, {len(failed)} failed")
                for name, error in failed.items():
                    self.stdout.write(f"    {name}: {error}")
        self._print_vocoder_metrics()
        return run_ids

    def _trained_vocoder_checkpoints(self, ckpt_dir: Path) -> tuple[str, list[tuple[int, Path]]]:
        """The demo vocoder's (step, path) checkpoints: trained now, or reused from an earlier demo."""
        import hashlib
        import json

        settings_json = json.dumps(DEMO_VOCODER_TRAINING, sort_keys=True)
        key = hashlib.sha256(settings_json.encode()).hexdigest()[:12]
        out = ckpt_dir / f"{DEMO_RUNS[0][0]}-trained-{key}"
        every, total = DEMO_VOCODER_TRAINING["checkpoint_every"], DEMO_VOCODER_TRAINING["steps"]
        steps = sorted({*range(every, total + 1, every), total})
        checkpoints = [(step, out / f"checkpoint_step_{step}.pt") for step in steps]
        manifest = out / TRAINING_MANIFEST
        if manifest.is_file() and all(path.is_file() for _, path in checkpoints):
            seconds = json.loads(manifest.read_text()).get("seconds")
            self.stdout.write(f"demo vocoder: reusing the checkpoints trained earlier ({seconds} s) in {out}")
            return key, checkpoints
        self._train_vocoder(out)
        return key, checkpoints

    def _train_vocoder(self, out: Path) -> None:
        import json

        # torch and the model stack: loaded for training only, not by the served site.
        import torch

        import models
        from models.training import train_vocoder

        cfg = DEMO_VOCODER_TRAINING
        clips = [synthesize(text, voice=voice)[0] for text in DEMO_SENTENCES[24:] for voice in DEMO_SPEAKERS]
        audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
        self.stdout.write(
            f"training the demo vocoder (tiny HiFi-GAN, mel L1 + MR-STFT loss, no discriminator) on {len(clips)} "
            f"clips ({audio_s:.0f} s of speech held out from the eval set) for {cfg['steps']} steps on the CPU ..."
        )
        torch.manual_seed(cfg["init_seed"])
        model = models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset(cfg["preset"]))
        started = time.perf_counter()
        losses: dict[int, float] = {}

        def on_checkpoint(step: int, path: Path, loss: float) -> None:
            losses[step] = loss
            self.stdout.write(
                f"  step {step}: mean training loss {loss:.3f} ({time.perf_counter() - started:.0f} s)"
            )

        # One thread: the same weights on every machine (float reductions depend on the thread count),
        # and no oversubscription next to the worker; this model is too small to gain much from more.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train_vocoder(
                model,
                clips,
                SAMPLE_RATE,
                steps=cfg["steps"],
                batch_size=cfg["batch_size"],
                segment_s=cfg["segment_s"],
                lr=cfg["lr"],
                lr_final=cfg["lr_final"],
                seed=cfg["seed"],
                checkpoint_every=cfg["checkpoint_every"],
                checkpoint_dir=out,
                on_checkpoint=on_checkpoint,
                log_every=0,
            )
        finally:
            torch.set_num_threads(threads)
        seconds = round(time.perf_counter() - started, 1)
        (out / TRAINING_MANIFEST).write_text(
            json.dumps({"settings": cfg, "train_loss": losses, "seconds": seconds}, indent=2) + "\n"
        )
        self.stdout.write(f"  trained in {seconds} s; checkpoints in {out}")

    def _print_vocoder_metrics(self) -> None:
        """Mel / MR-STFT distances per vocoder checkpoint (lower is better), as stored by the worker."""
        rows = (
            MetricResult.objects.filter(checkpoint__run__name=DEMO_RUNS[0][0], status="done")
            .filter(name__regex=r"^(mel_l1|mrstft)/")
            .order_by("checkpoint__step", "name")
            .values_list("checkpoint__step", "name", "value")
        )
        if rows:
            self.stdout.write(
                f"{DEMO_RUNS[0][0]}: distances to the reference per checkpoint (lower is better)"
            )
        for step, name, value in rows:
            self.stdout.write(f"  {DEMO_RUNS[0][0]} step {step:>5}: {name} = {value:.4f}")

    def _build_demo_tests(self) -> dict[str, str]:
        """A MUSHRA and an SMOS test of the demo vocoder's checkpoints, published with every quality
        control on. They must pass the design checks: a design warning stops the demo (nothing
        confirms it on the researcher's behalf)."""

        checkpoints = list(Checkpoint.objects.filter(run__name=DEMO_RUNS[0][0]).order_by("step"))
        invites = {}
        for design in demo_test_designs(checkpoints):
            test = ListeningTest.objects.filter(name=design.name).first()
            if test is None:
                try:
                    test = listening_test_create(design=design, publish=True)
                except ApplicationError as exc:
                    raise CommandError(f"demo test {design.name!r} not published: {exc.message}") from None
                counts = listening_test_progress(test)["trial_counts"]
                self.stdout.write(
                    f"{design.kind} test {design.name!r} built: {counts['total']} trials ({counts['main']} main, "
                    f"{counts['training']} training, {counts['control']} gold/trapping)"
                )
            invites[design.name] = test.invite_token
        return invites

    def _wait(self, job_id: int, children: ChildProcesses, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        shown = -1
        while time.monotonic() < deadline:
            job = Job.objects.get(pk=job_id)
            if job.status == Job.Status.DONE:
                return job
            if job.status == Job.Status.FAILED:
                raise CommandError(f"demo job {job_id} ({job.kind}) failed: {job.error}")
            self._check_children(children)
            pct = int(job.progress * 100)
            if pct != shown:
                self.stdout.write(f"  {job.kind} {pct:3d}%  {job.progress_message}")
                shown = pct
            time.sleep(0.5)
        raise CommandError(f"demo job {job_id} did not finish within {timeout:.0f} s")
