"""Wall time of building one large listening test through ``POST /api/v1/listening-tests/`` (issue 14 item 7).

Creates a fresh database on the local PostgreSQL (``--database``, dropped at the end unless ``--keep``), migrates
it, stores ``--items`` reference clips (``--seconds`` of noise each, real files: MUSHRA's low-pass anchors are
filtered from them) and ``--systems`` checkpoints with one output per item (rows only: building a test does not
read the outputs), then builds the test ``--repeats`` times through the API in this process (Django's test
client, a researcher token, DEBUG off), each under a new name. MUSHRA allows at most 12 signals per trial
(BS.1534-3), so its largest test is 9 systems + hidden reference + two anchors. The anchors are content-addressed:
the first build makes and stores them, later builds of the same material find them. ``--profile`` prints the
functions that took the most time in one more build. With ``--loudness-target`` (default -23 LUFS, as the API)
every output is a real file (alignment reads and measures it) and every sound is aligned; ``--loudness-target
off`` builds without alignment, from output rows only. Only 127.0.0.1 is contacted.

    python benchmarks/listening_build.py --kind mushra --systems 9 --items 200

Prints each build's wall time, trials and queries, and the command.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listening_load import PG, drop_database, recreate_database  # noqa: E402


def setup(args) -> tuple[str, list[dict]]:
    """Migrate, store the material; returns (researcher token, checkpoint refs)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from evalsite.api.services import researcher_token_issue
    from evalsite.audio.decoding import decoded_from_array
    from evalsite.audio.models import AudioAsset
    from evalsite.audio.services import audio_asset_store
    from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run

    call_command("migrate", verbosity=0, interactive=False)
    user = get_user_model().objects.create_user("bench-researcher", password=secrets.token_hex(8))
    rng = np.random.default_rng(args.seed)
    eval_set = EvalSet.objects.create(name="bench-build-set")
    items = []
    for i in range(args.items):
        noise = (0.1 * rng.standard_normal(int(args.seconds * args.rate))).astype(np.float32)
        reference, _ = audio_asset_store(decoded=decoded_from_array(noise, args.rate))
        items.append(EvalItem(eval_set=eval_set, key=f"utt{i:04d}", reference=reference))
    items = EvalItem.objects.bulk_create(items)
    run = Run.objects.create(
        name="bench-build-run", kind="vocoder", model_family="hifigan", eval_set=eval_set, owner=user
    )
    checkpoints = Checkpoint.objects.bulk_create(
        [Checkpoint(run=run, step=1000 * (k + 1), uri=f"/ckpt/{k}") for k in range(args.systems)]
    )
    if args.loudness_target is None:
        outputs = AudioAsset.objects.bulk_create(
            [
                AudioAsset(
                    content_hash=secrets.token_hex(32),
                    sample_rate=args.rate,
                    channels=1,
                    frames=int(args.seconds * args.rate),
                    duration_s=args.seconds,
                    peak=0.5,
                    file=f"audio/bench/{n}.wav",
                )
                for n in range(args.systems * args.items)
            ],
            batch_size=2000,
        )
    else:
        # Alignment reads and measures every output, so they are real files here, each system at its own level.
        outputs = [
            audio_asset_store(
                decoded=decoded_from_array(
                    (0.1 * 10 ** (-k / 20) * rng.standard_normal(int(args.seconds * args.rate))).astype(
                        np.float32
                    ),
                    args.rate,
                )
            )[0]
            for k in range(args.systems)
            for _ in range(args.items)
        ]
    Generation.objects.bulk_create(
        [
            Generation(
                checkpoint=c, item=item, params_hash="p", status="done", asset=outputs[k * args.items + j]
            )
            for k, c in enumerate(checkpoints)
            for j, item in enumerate(items)
        ],
        batch_size=2000,
    )
    return researcher_token_issue(user=user), [{"run": run.pk, "step": c.step} for c in checkpoints]


def build_once(client, name: str, args, refs: list[dict]) -> tuple[float, dict, int]:
    from django.db import connection

    body = {
        "name": name,
        "kind": args.kind,
        "checkpoints": refs,
        "training_items": 1,
        "votes_target": 10,
        "loudness_target_lufs": args.loudness_target,
    }
    queries = []

    def count(execute, sql, params, many, context):
        queries.append(1)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        t0 = time.perf_counter()
        response = client.post("/api/v1/listening-tests/", body, format="json")
        wall = time.perf_counter() - t0
    if response.status_code != 201:
        raise SystemExit(f"build refused ({response.status_code}): {response.content.decode()[:500]}")
    return wall, response.json(), len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", default="mushra", choices=["mushra", "mos", "smos", "cmos", "ab"])
    parser.add_argument("--systems", type=int, default=9)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each reference clip")
    parser.add_argument("--rate", type=int, default=22050)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="profile one more build and print the top functions"
    )
    parser.add_argument(
        "--loudness-target",
        type=lambda v: None if v == "off" else float(v),
        default=-23.0,
        metavar="LUFS|off",
        help="loudness alignment of the test (default -23 LUFS, as the API); 'off': served as generated, "
        "outputs are rows only",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="evalsite_bench_build")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-build-"))
    os.environ.update(
        {
            "DATABASE_URL": f"{PG}/{args.database}",
            "EVALSITE_VAR_DIR": str(var),
            "EVALSITE_MEDIA_ROOT": str(var / "media"),
            "DJANGO_SETTINGS_MODULE": "evalsite.settings.base",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "ALLOWED_HOSTS": "testserver",
        }
    )
    os.environ.pop("CELERY_BROKER_URL", None)
    recreate_database(args.database)
    try:
        import django

        django.setup()
        from rest_framework.test import APIClient

        t0 = time.monotonic()
        token, refs = setup(args)
        print(
            f"(setup {time.monotonic() - t0:.0f} s, database {args.database}; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        walls = []
        for n in range(args.repeats):
            wall, body, queries = build_once(client, f"bench-{args.kind}-{n}", args, refs)
            walls.append(wall)
            note = " (anchors made and stored)" if n == 0 and args.kind == "mushra" else ""
            note += f", loudness served at {body['loudness_served_lufs']} LUFS"
            print(f"build {n + 1}: {wall:.2f} s, {body['trials']} trials, {queries} queries{note}")
        print(
            f"\n{args.kind}, {args.systems} systems × {args.items} items: first build {walls[0]:.2f} s, "
            f"median {statistics.median(walls):.2f} s over {len(walls)} builds"
        )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            build_once(client, f"bench-{args.kind}-profiled", args, refs)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(
                r"evalsite|scipy|numpy|django/db/models", 30
            )
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print("command: python benchmarks/listening_build.py " + shlex.join(sys.argv[1:]))
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)


if __name__ == "__main__":
    main()
