"""Server time to build a listening test's analysis page for a MUSHRA test of ~50 000 ratings and 2 000 flags.

Creates a fresh database on the local PostgreSQL (``--database``, dropped at the end unless ``--keep``), migrates
it and bulk-inserts one published MUSHRA test: ``--systems`` checkpoints + hidden reference + 3.5 / 7 kHz anchors
per trial, ``--items`` main items and one training item, ``--listeners`` listeners who each rate ``--trials``
random main trials (plus the training trial), a few of them careless (hidden reference rated low, or one value
for everything) and a few screened out by the headphone check; ``--flags`` artifact flags, most of them near a
per-stimulus artifact whose probability grows as the system gets worse, some on hidden references (false flags);
and ``--metrics`` metric results per checkpoint with per-item values. Audio assets are rows only: the page never
reads audio.

Requests go through Django's test ``Client`` in this process (middleware, session and auth included, no HTTP),
logged in, DEBUG off. Three cases: cold (the cache emptied and the stored snapshots deleted before each request,
so the results are computed: the first view after new answers when the beat task has not run yet); snapshot (the
cache emptied, the snapshot kept: a web process that has not seen the test since, or one after the beat task
refreshed it); warm (the results in this process's cache). Each is requested ``--repeats`` times after a warm-up;
one more instrumented request of each reports the queries and the page's own breakdown (its ``Server-Timing``
header: query stage, each statistics stage, figures, template). Only 127.0.0.1 is contacted.

    python benchmarks/analysis_test_page.py

Prints medians, the breakdown, the bootstrap's Monte-Carlo precision and the command.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listening_load import PG, collect_static, drop_database, recreate_database  # noqa: E402


def build(args) -> tuple[int, int]:
    """Migrate and bulk-insert the test; returns (test id, user id)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from evalsite.audio.models import AudioAsset
    from evalsite.listening.models import (
        ArtifactFlag,
        Assignment,
        Condition,
        ListeningTest,
        Participant,
        Rating,
        Stimulus,
        StimulusHandle,
        Trial,
    )
    from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
    from evalsite.scoring.models import MetricResult

    call_command("migrate", verbosity=0, interactive=False)
    rng = np.random.default_rng(args.seed)
    user = get_user_model().objects.create_user("bench-researcher", password=secrets.token_hex(8))
    now = timezone.now()

    def assets(n: int) -> list[AudioAsset]:
        return AudioAsset.objects.bulk_create(
            [
                AudioAsset(
                    content_hash=secrets.token_hex(32),
                    sample_rate=24000,
                    channels=1,
                    frames=int(args.seconds * 24000),
                    duration_s=args.seconds,
                    peak=0.5,
                    file=f"audio/bench/{i}.flac",
                )
                for i in range(n)
            ],
            batch_size=2000,
        )

    n_items = args.items + 1  # the first one is the training item
    eval_set = EvalSet.objects.create(name="bench-set")
    items = EvalItem.objects.bulk_create(
        [EvalItem(eval_set=eval_set, key=f"utt{i:03d}", reference=r) for i, r in enumerate(assets(n_items))]
    )
    run = Run.objects.create(
        name="bench-run", kind="vocoder", model_family="hifigan", eval_set=eval_set, owner=user
    )
    ckpts = Checkpoint.objects.bulk_create(
        [Checkpoint(run=run, step=10000 * (k + 1), uri=f"/ckpt/{k}") for k in range(args.systems)]
    )
    outputs = assets(args.systems * n_items)
    Generation.objects.bulk_create(
        [
            Generation(checkpoint=c, item=item, params_hash="p", asset=outputs[k * n_items + j])
            for k, c in enumerate(ckpts)
            for j, item in enumerate(items)
        ],
        batch_size=2000,
    )
    test = ListeningTest.objects.create(
        name="bench-mushra",
        kind="mushra",
        status="published",
        seed=1,
        headphone_check=True,
        published_at=now,
        owner=user,
        trials_per_participant=args.trials,
    )
    systems = [Condition(test=test, label=f"{run.name}@{c.step}", role="system", checkpoint=c) for c in ckpts]
    extra = [
        Condition(test=test, label="Hidden Reference", role="hidden_reference"),
        Condition(test=test, label="anchor: 3.5 kHz low-pass", role="anchor_lp35"),
        Condition(test=test, label="anchor: 7 kHz low-pass", role="anchor_lp70"),
    ]
    conditions = Condition.objects.bulk_create(systems + extra)
    # True quality of each condition (0-100), the best system first.
    quality = dict(
        zip([c.pk for c in conditions], list(np.linspace(85, 45, args.systems)) + [97.0, 20.0, 50.0])
    )
    anchors = assets(2 * n_items)
    trials = Trial.objects.bulk_create(
        [
            Trial(test=test, item=item, index=j, is_training=j == 0, reference=item.reference)
            for j, item in enumerate(items)
        ]
    )
    stimuli = []
    for j, trial in enumerate(trials):
        for k, c in enumerate(conditions):
            if c.role == "system":
                asset = outputs[k * n_items + j]
            elif c.role == "hidden_reference":
                asset = items[j].reference
            else:
                asset = anchors[2 * j + (c.role == "anchor_lp70")]
            stimuli.append(Stimulus(trial=trial, condition=c, asset=asset))
    stimuli = Stimulus.objects.bulk_create(stimuli, batch_size=2000)
    by_trial: dict[int, list[Stimulus]] = {}
    for s in stimuli:
        by_trial.setdefault(s.trial_id, []).append(s)

    n_careless, n_constant, n_deaf = args.careless, args.constant, args.deaf
    people = Participant.objects.bulk_create(
        [
            Participant(
                test=test,
                token=secrets.token_urlsafe(18),
                seed=i,
                external_id=f"PROLIFIC-{i:04d}",
                study_id="bench-study",
                consented_at=now,
                calibrated_at=now,
                headphone_passed=i >= n_deaf,
                completed_at=now if i >= n_deaf else None,
                status="completed" if i >= n_deaf else "screened_out",
            )
            for i in range(args.listeners + n_deaf)
        ]
    )
    listeners = people[n_deaf:]
    item_offset = rng.normal(0, 4, n_items)
    assignments, plan = [], []
    for p in listeners:
        main = rng.choice(np.arange(1, n_items), size=args.trials, replace=False)
        for position, j in enumerate([0, *rng.permutation(main)]):
            assignments.append(
                Assignment(participant=p, trial=trials[j], position=position, completed_at=now)
            )
            plan.append((p, j))
    assignments = Assignment.objects.bulk_create(assignments, batch_size=5000)
    handles, ratings, presented = [], [], []
    for _i, (a, (p, j)) in enumerate(zip(assignments, plan)):
        k = p.seed - n_deaf
        careless, constant = k < n_careless, n_careless <= k < n_careless + n_constant
        offset = rng.normal(0, 5)
        order = rng.permutation(len(by_trial[a.trial_id]))
        for position, s_index in enumerate(order):
            s = by_trial[a.trial_id][s_index]
            handles.append(
                StimulusHandle(assignment=a, stimulus=s, position=position, token=secrets.token_urlsafe(18))
            )
            truth = quality[s.condition_id]
            if careless and s.condition.role == "hidden_reference":
                truth = 60.0
            noisy = round(truth + offset + item_offset[j] + rng.normal(0, 10))
            score = 50.0 if constant else float(np.clip(noisy, 0, 100))
            ratings.append(
                Rating(
                    participant=p,
                    assignment=a,
                    stimulus=s,
                    score=score,
                    request_id=f"r{len(ratings)}",
                    history=[f"r{len(ratings)}"],
                    is_training=j == 0,
                )
            )
            if j:
                presented.append((p, a, s))
    StimulusHandle.objects.bulk_create(handles, batch_size=5000)
    Rating.objects.bulk_create(ratings, batch_size=5000)

    # Flags: the three worst systems have an audible artifact (at a fixed time) on a fifth of the items, which
    # about 45 % of their listeners flag; hidden references get false flags from about 1 % of listeners; the
    # rest are scattered over system stimuli, more often the worse the system.
    categories = ("click", "buzz", "discontinuity", "noise", "muffled")
    artifact_at = {s.pk: float(rng.uniform(0.3, args.seconds - 0.6)) for s in stimuli}
    worst = sorted((c for c in conditions if c.role == "system"), key=lambda c: quality[c.pk])[:3]
    artifact_trials = {
        trials[j].pk for j in rng.choice(np.arange(1, n_items), size=max(1, args.items // 5), replace=False)
    }
    worst_ids = {c.pk for c in worst}
    strong = {s.pk for s in stimuli if s.condition_id in worst_ids and s.trial_id in artifact_trials}
    picks = []
    for n, (_, _, s) in enumerate(presented):
        if (s.pk in strong and rng.random() < 0.45) or (
            s.condition.role == "hidden_reference" and rng.random() < 0.01
        ):
            picks.append(n)
    rest = np.array(
        [n for n, (_, _, s) in enumerate(presented) if s.condition.role == "system" and s.pk not in strong]
    )
    weights = np.array([(100 - quality[presented[n][2].condition_id]) ** 2 for n in rest], dtype=float)
    picks = picks[: args.flags] + list(
        rng.choice(rest, size=max(0, args.flags - len(picks)), replace=False, p=weights / weights.sum())
    )
    flags = []
    for n in picks:
        p, a, s = presented[n]
        if s.condition.role == "system":
            start = max(0.0, artifact_at[s.pk] + rng.normal(0, 0.05))
            end = start + rng.uniform(0.15, 0.4)
        else:
            start = float(rng.uniform(0, args.seconds - 0.3))
            end = start + 0.2
        category = (
            categories[s.pk % len(categories)] if rng.random() < 0.8 else categories[int(rng.integers(5))]
        )
        flags.append(
            ArtifactFlag(
                participant=p,
                assignment=a,
                stimulus=s,
                start_s=start,
                end_s=min(end, args.seconds),
                category=category,
                request_id=secrets.token_hex(8),
                token=secrets.token_urlsafe(18),
            )
        )
    ArtifactFlag.objects.bulk_create(flags, batch_size=5000)
    results = []
    for m in range(args.metrics):
        for k, c in enumerate(ckpts):
            value = float(np.linspace(4.2, 2.5, args.systems)[k] + rng.normal(0, 0.1 * (m + 1)))
            results.append(
                MetricResult(
                    checkpoint=c,
                    params_hash="p",
                    name=f"metric_{m:02d}",
                    status="done",
                    value=value,
                    higher_is_better=True,
                    n=args.items,
                    spec_key=f"{m:064d}",
                    metric_version="1",
                    per_item={item.key: value + float(rng.normal(0, 0.3)) for item in items[1:]},
                )
            )
    MetricResult.objects.bulk_create(results)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # planner statistics, as autovacuum would have gathered in production
    main_ratings = sum(not r.is_training for r in ratings)
    print(
        f"built: MUSHRA test of {args.systems} systems + hidden reference + 2 anchors x {args.items} items; "
        f"{args.listeners} listeners x {args.trials} trials ({n_careless} careless, {n_constant} constant, "
        f"{n_deaf} screened out by the headphone check); {main_ratings} main ratings (+{len(ratings) - main_ratings} "
        f"training), {len(flags)} flags ({len(strong)} stimuli with an audible artifact), "
        f"{len(results)} metric results"
    )
    return test.pk, user.pk


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, value = part.strip().partition(";dur=")
        out[name] = float(value)
    return out


def forget(mode: str) -> None:
    """Empty what a request of this mode must not find: the cache (cold, snapshot) and the snapshots (cold)."""
    from django.core.cache import cache

    from evalsite.analysis.models import AnalysisSnapshot

    if mode in ("cold", "snapshot"):
        cache.clear()
    if mode == "cold":
        AnalysisSnapshot.objects.all().delete()


def measure(client, url: str, repeats: int, *, mode: str) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (this process, all threads) per request: on a shared machine CPU time is the figure
    that does not depend on what else runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        forget(mode)
        c0, t0 = time.process_time(), time.perf_counter()
        response = client.get(url)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert response.status_code == 200, response.status_code
    return wall, cpu


def instrumented(client, url: str, *, mode: str) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    forget(mode)
    with CaptureQueriesContext(connection) as captured:
        t0 = time.perf_counter()
        response = client.get(url)
        total = time.perf_counter() - t0
    sql = sum(float(q["time"]) for q in captured.captured_queries)
    timing = server_timing(response["Server-Timing"])
    print(
        f"  instrumented request: {total * 1000:.0f} ms, {len(captured.captured_queries)} queries, "
        f"{sql * 1000:.0f} ms in SQL; page {len(response.content) / 1024:.0f} KiB"
    )
    print("  wall: " + ", ".join(f"{k} {v:.0f} ms" for k, v in timing.items()))
    if mode == "cold":
        from evalsite.analysis.compute import compute_listening_test_results
        from evalsite.listening.models import ListeningTest

        test = ListeningTest.objects.get(pk=int(url.strip("/").split("/")[-1]))
        with CaptureQueriesContext(connection):
            cpu = compute_listening_test_results(test)["cpu_timings"]
        print(
            f"  CPU of the results stages (one more computation): total {1000 * sum(cpu.values()):.0f} ms: "
            + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in cpu.items())
        )


def bootstrap_precision(test_id: int, n_boot: int, reps: int) -> None:
    """Monte-Carlo error of the bootstrap interval ends: the same CI recomputed with different seeds."""
    from evalsite.analysis import frames, stats
    from evalsite.listening.models import ListeningTest

    ratings = frames.ratings_frame(ListeningTest.objects.get(pk=test_id))
    lows, highs = [], []
    for seed in range(reps):
        table = stats.system_scores(ratings, kind="mushra", n_boot=n_boot, seed=seed)
        lows.append(table["boot_low"].to_numpy())
        highs.append(table["boot_high"].to_numpy())
    width = float(np.mean(np.array(highs) - np.array(lows)))
    sd = float(np.mean([np.std(lows, axis=0, ddof=1).mean(), np.std(highs, axis=0, ddof=1).mean()]))
    print(
        f"bootstrap with {n_boot} resamples: mean 95% CI width {width:.2f} points, Monte-Carlo SD of an interval "
        f"end {sd:.3f} points over {reps} seeds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", type=int, default=8)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--listeners", type=int, default=125)
    parser.add_argument("--trials", type=int, default=37, help="main trials per listener")
    parser.add_argument("--careless", type=int, default=4, help="listeners who rate the hidden reference low")
    parser.add_argument("--constant", type=int, default=2, help="listeners who give one value to everything")
    parser.add_argument(
        "--deaf", type=int, default=3, help="participants screened out by the headphone check"
    )
    parser.add_argument("--flags", type=int, default=2000)
    parser.add_argument("--metrics", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each stimulus")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--precision-reps", type=int, default=5, help="seeds for the bootstrap precision (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="evalsite_bench_tests")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-testpage-"))
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
        from django.contrib.auth import get_user_model
        from django.test import Client

        random.seed(args.seed)
        t0 = time.monotonic()
        test_id, user_id = build(args)
        print(
            f"(setup {time.monotonic() - t0:.0f} s, database {args.database}; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        client = Client()
        client.force_login(get_user_model().objects.get(pk=user_id))
        url = f"/analysis/tests/{test_id}/"
        assert client.get(url).status_code == 200  # warm-up: imports, first plotly/pingouin calls
        for name, mode in (
            ("cold (cache emptied, snapshots deleted: results computed)", "cold"),
            ("snapshot (cache emptied: results read from the stored snapshot)", "snapshot"),
            ("warm (results in this process's cache)", "warm"),
        ):
            wall, cpu = measure(client, url, args.repeats, mode=mode)
            times = sorted(t * 1000 for t in wall)
            print(
                f"\n{name}: median {statistics.median(times):.0f} ms, min {times[0]:.0f}, max {times[-1]:.0f} "
                f"over {len(times)} requests; CPU median {1000 * statistics.median(cpu):.0f} ms, "
                f"min {1000 * min(cpu):.0f} ms"
            )
            instrumented(client, url, mode=mode)
        if args.precision_reps:
            bootstrap_precision(test_id, 2000, args.precision_reps)
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        print("command: python benchmarks/analysis_test_page.py " + shlex.join(sys.argv[1:]))
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)


if __name__ == "__main__":
    main()
