"""Server time to build the run page and the run analysis page for a run of 200 checkpoints x 12 metrics.

Creates a fresh database on the local PostgreSQL (``--database``, dropped at the end unless ``--keep``),
migrates it and bulk-inserts one run: ``--checkpoints`` checkpoints (each with generation, metrics and
detection jobs, a few failed), ``--metrics`` metrics per checkpoint (with CIs and ``--items`` per-item
values; one metric changes spec half-way, so it has two series), one output per eval item and checkpoint
(``--items`` items), a detector pass per output and about ``--events`` detector events per output, some
alerts, and a published MOS test of the last two checkpoints with ``--listeners`` listeners who flag
regions of a third of what they hear (the agreement panel's input). Audio assets are rows only: the pages
never read audio.

Requests go through Django's test ``Client`` in this process (middleware, session and auth included, no
HTTP), logged in as a researcher, DEBUG off. Each page is requested ``--warmup`` times, then timed
``--repeats`` times; then one more request per page runs with every query captured and the page's
selectors, figure building and template rendering timed separately (lazy querysets evaluated by the
template count as template time). Only 127.0.0.1 is contacted.

    python benchmarks/analysis_run_page.py --checkpoints 200 --metrics 12

Prints medians, the breakdown and the command.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listening_load import PG, collect_static, drop_database, recreate_database  # noqa: E402

DETECTORS = (
    "clicks",
    "clipping",
    "spectral_discontinuity",
    "hf_loss",
    "tonal_buzz",
    "dc_offset",
    "nan_or_silence",
)


def build(args) -> tuple[int, int]:
    """Migrate and bulk-insert the run; returns (run id, user id)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from evalsite.alerts.models import Alert
    from evalsite.audio.models import AudioAsset
    from evalsite.jobs.models import Job
    from evalsite.listening import services
    from evalsite.listening.models import ArtifactFlag, StimulusHandle
    from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
    from evalsite.scoring.models import DetectorEvent, DetectorPass, MetricResult

    call_command("migrate", verbosity=0, interactive=False)
    rng = random.Random(args.seed)
    user = get_user_model().objects.create_user("bench-researcher", password=secrets.token_hex(8))

    def assets(n: int, seconds: float) -> list[AudioAsset]:
        return AudioAsset.objects.bulk_create(
            [
                AudioAsset(
                    content_hash=secrets.token_hex(32),
                    sample_rate=22050,
                    channels=1,
                    frames=int(seconds * 22050),
                    duration_s=seconds,
                    peak=0.5,
                    file=f"audio/bench/{i}.flac",
                )
                for i in range(n)
            ],
            batch_size=2000,
        )

    eval_set = EvalSet.objects.create(name="bench-set")
    refs = assets(args.items, args.seconds)
    items = EvalItem.objects.bulk_create(
        [EvalItem(eval_set=eval_set, key=f"utt{i:03d}", reference=r, text="x") for i, r in enumerate(refs)]
    )
    run = Run.objects.create(
        name="bench-run", kind="vocoder", model_family="hifigan", eval_set=eval_set, owner=user
    )
    ckpts = Checkpoint.objects.bulk_create(
        [
            Checkpoint(
                run=run, step=500 * (i + 1), uri=f"/ckpt/g_{500 * (i + 1):08d}", status=Checkpoint.Status.DONE
            )
            for i in range(args.checkpoints)
        ]
    )
    now = timezone.now()
    jobs = []
    for c in ckpts:
        for kind in (Job.Kind.GENERATION, Job.Kind.METRICS, Job.Kind.DETECTION):
            failed = kind == Job.Kind.METRICS and rng.random() < 0.03
            jobs.append(
                Job(
                    kind=kind,
                    run=run,
                    checkpoint=c,
                    status=Job.Status.FAILED if failed else Job.Status.DONE,
                    progress=1.0,
                    params={"params_hash": "p"},
                    result={"clips": args.items},
                    error="RuntimeError: CUDA out of memory while embedding (batch 16)" if failed else "",
                    started_at=now,
                    finished_at=now,
                )
            )
    Job.objects.bulk_create(jobs, batch_size=2000)
    outs = assets(args.checkpoints * args.items, args.seconds)
    gens = Generation.objects.bulk_create(
        [
            Generation(
                checkpoint=c,
                item=item,
                params_hash="p",
                asset=outs[k * args.items + j],
                wall_time_s=0.1,
                info={"rtf": 12.0},
            )
            for k, c in enumerate(ckpts)
            for j, item in enumerate(items)
        ],
        batch_size=2000,
    )
    results = []
    for m in range(args.metrics):
        name, hib = f"metric_{m:02d}", m % 2 == 0
        for k, c in enumerate(ckpts):
            spec = ("s" if m else ("s" if k < len(ckpts) // 2 else "t")) + f"{m:063d}"
            value = 1.0 + (0.5 if hib else -0.5) * k / len(ckpts) + rng.gauss(0, 0.02)
            results.append(
                MetricResult(
                    checkpoint=c,
                    params_hash="p",
                    name=name,
                    status=MetricResult.Status.DONE,
                    value=value,
                    ci_low=value - 0.05,
                    ci_high=value + 0.05,
                    higher_is_better=hib,
                    n=args.items,
                    spec_key=spec,
                    metric_version="1",
                    preprocess={"sample_rate": 22050},
                    per_item={item.key: value + rng.gauss(0, 0.1) for item in items},
                    details={"n_gen": args.items},
                )
            )
    MetricResult.objects.bulk_create(results, batch_size=2000)
    DetectorPass.objects.bulk_create(
        [
            DetectorPass(
                generation=g, checkpoint_id=g.checkpoint_id, duration_s=args.seconds, events=0, version="1"
            )
            for g in gens
        ],
        batch_size=2000,
    )
    events = []
    for g in gens:
        for _ in range(rng.randint(0, 2 * args.events)):
            start = rng.uniform(0, args.seconds - 0.1)
            events.append(
                DetectorEvent(
                    generation=g,
                    checkpoint_id=g.checkpoint_id,
                    detector=rng.choice(DETECTORS),
                    start_s=start,
                    end_s=start + 0.02,
                    strength=rng.random(),
                )
            )
    DetectorEvent.objects.bulk_create(events, batch_size=5000)
    Alert.objects.bulk_create(
        [
            Alert(
                run=run,
                checkpoint=rng.choice(ckpts),
                kind="metric_regression",
                severity="warning",
                title=f"metric_03 worse by {i}%",
                dedupe_key=f"bench-{i}",
                cursor=i + 1,
            )
            for i in range(args.alerts)
        ]
    )
    Run.objects.filter(pk=run.pk).update(alert_cursor=args.alerts)

    test = services.listening_test_publish(
        test=services.listening_test_build(
            design=services.TestDesign(
                name="bench-mos",
                kind="mos",
                checkpoints=ckpts[-2:],
                training_items=0,
                seed=1,
                # The assets are rows without files: nothing to measure the loudness of.
                loudness_target_lufs=None,
            )
        )
    )
    for _ in range(args.listeners):
        participant = services.participant_join(test=test)
        handles = list(
            StimulusHandle.objects.filter(assignment__participant=participant).select_related("assignment")
        )
        flags = []
        for h in rng.sample(handles, len(handles) // 3):
            start = rng.uniform(0, args.seconds - 0.5)
            flags.append(
                ArtifactFlag(
                    participant=participant,
                    assignment=h.assignment,
                    stimulus_id=h.stimulus_id,
                    start_s=start,
                    end_s=start + 0.3,
                    category="click",
                    request_id=secrets.token_hex(8),
                )
            )
        ArtifactFlag.objects.bulk_create(flags)
    print(
        f"built: {len(ckpts)} checkpoints, {len(results)} metric results, {len(gens)} outputs, {len(events)} "
        f"detector events, {len(jobs)} jobs, {args.alerts} alerts, MOS test of 2 checkpoints x {args.items} items "
        f"with {args.listeners} listeners and {ArtifactFlag.objects.count()} flags"
    )
    return run.pk, user.pk


class Phases:
    """Wall time and SQL (count, time) spent inside wrapped functions during one request."""

    def __init__(self) -> None:
        self.time: dict[str, float] = defaultdict(float)
        self.queries: dict[str, tuple[int, float]] = {}

    def wrap(self, module, attr: str, label: str) -> None:
        from django.db import connection

        original = getattr(module, attr)

        @functools.wraps(original)
        def timed(*a, **kw):
            q0 = len(connection.queries)
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.time[label] += time.perf_counter() - t0
                qs = connection.queries[q0:]
                n, s = self.queries.get(label, (0, 0.0))
                self.queries[label] = (n + len(qs), s + sum(float(q["time"]) for q in qs))

        setattr(module, attr, timed)
        self._undo.append((module, attr, original))

    def __enter__(self):
        self._undo = []
        return self

    def __exit__(self, *exc) -> None:
        for module, attr, original in reversed(self._undo):
            setattr(module, attr, original)


def measure(client, url: str, args, *, cold: bool = False) -> list[float]:
    """Request times; ``cold`` empties the cache first each time (the listener regions are cached)."""
    from django.core.cache import cache

    for _ in range(args.warmup):
        assert client.get(url).status_code == 200
    times = []
    for _ in range(args.repeats):
        if cold:
            cache.clear()
        t0 = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - t0)
        assert response.status_code == 200, response.status_code
    return times


def breakdown(
    client, url: str, wraps: list[tuple], *, cold: bool = False
) -> tuple[Phases, int, float, float, int]:
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if cold:
        cache.clear()
    with Phases() as phases, CaptureQueriesContext(connection) as captured:
        for module, attr, label in wraps:
            phases.wrap(module, attr, label)
        t0 = time.perf_counter()
        response = client.get(url)
        total = time.perf_counter() - t0
    sql = sum(float(q["time"]) for q in captured.captured_queries)
    return phases, len(captured.captured_queries), sql, total, len(response.content)


def report(
    name: str, times: list[float], phases: Phases, n_queries: int, sql: float, total: float, size: int
) -> None:
    times_ms = sorted(t * 1000 for t in times)
    print(
        f"\n{name}: median {statistics.median(times_ms):.0f} ms, min {times_ms[0]:.0f}, max {times_ms[-1]:.0f} "
        f"over {len(times_ms)} requests; page {size / 1024:.0f} KiB"
    )
    print(f"  instrumented request: {total * 1000:.0f} ms, {n_queries} queries, {sql * 1000:.0f} ms in SQL")
    accounted = 0.0
    for label, seconds in phases.time.items():
        n, s = phases.queries.get(label, (0, 0.0))
        accounted += seconds
        print(f"    {label:<44} {seconds * 1000:7.1f} ms  ({n} queries, {s * 1000:.1f} ms SQL)")
    print(f"    {'rest (middleware, session, auth, run row)':<44} {(total - accounted) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--metrics", type=int, default=12)
    parser.add_argument("--items", type=int, default=20, help="eval items (outputs per checkpoint)")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each output")
    parser.add_argument("--events", type=int, default=1, help="mean detector events per output")
    parser.add_argument("--alerts", type=int, default=30)
    parser.add_argument("--listeners", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="evalsite_bench_runs")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-runpage-"))
    os.environ.update(
        {
            "DATABASE_URL": f"{PG}/{args.database}",
            "EVALSITE_VAR_DIR": str(var),
            "DJANGO_SETTINGS_MODULE": "evalsite.settings.base",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "ALLOWED_HOSTS": "testserver",
        }
    )
    for key in ("CELERY_BROKER_URL", "EVALSITE_MEDIA_ROOT"):
        os.environ.pop(key, None)
    recreate_database(args.database)
    try:
        import django

        django.setup()
        collect_static(dict(os.environ))  # the pages name hashed static files, as deployed
        from django.test import Client

        from evalsite.analysis import run_selectors, run_views
        from evalsite.analysis import run_views as run_page

        t0 = time.monotonic()
        run_id, user_id = build(args)
        print(
            f"(setup {time.monotonic() - t0:.0f} s, database {args.database}; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        from django.contrib.auth import get_user_model

        client = Client()
        client.force_login(get_user_model().objects.get(pk=user_id))
        pages = [
            (
                "run page /runs/<id>/",
                f"/runs/{run_id}/",
                [
                    (run_page, "run_generation_grid", "run_generation_grid (listen grid, latest 8)"),
                    (run_page, "run_checkpoint_table", "run_checkpoint_table (pipeline)"),
                    (run_selectors, "run_metric_series", "run_metric_series (metric table values)"),
                    (run_selectors, "run_metric_grid", "run_metric_grid (metric table cells)"),
                    (run_page, "render", "template (incl. alerts + failed-jobs queries)"),
                ],
            ),
            (
                "run page, whole listen grid /runs/<id>/?listen=all",
                f"/runs/{run_id}/?listen=all",
                [
                    (run_page, "run_generation_grid", "run_generation_grid (all checkpoints)"),
                    (run_page, "run_checkpoint_table", "run_checkpoint_table (pipeline)"),
                    (run_selectors, "run_metric_series", "run_metric_series (metric table values)"),
                    (run_selectors, "run_metric_grid", "run_metric_grid (metric table cells)"),
                    (run_page, "render", "template (incl. alerts + failed-jobs queries)"),
                ],
            ),
            (
                "run analysis page /analysis/runs/<id>/ (listener regions cached)",
                f"/analysis/runs/{run_id}/",
                [
                    (run_views, "run_metric_series", "run_metric_series"),
                    (run_views, "run_detector_rates", "run_detector_rates"),
                    (run_views, "run_detector_agreement", "run_detector_agreement"),
                    (run_views, "run_figures", "figures (plotly dicts)"),
                    (run_views, "render", "template (incl. figure JSON)"),
                ],
            ),
        ]
        pages.append(("run analysis page, cold: cache emptied before each request", *pages[-1][1:]))
        for name, url, wraps in pages:
            cold = "cold" in name
            times = measure(client, url, args, cold=cold)
            report(name, times, *breakdown(client, url, wraps, cold=cold))
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        print("command: python benchmarks/analysis_run_page.py " + shlex.join(sys.argv[1:]))
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)


if __name__ == "__main__":
    main()
