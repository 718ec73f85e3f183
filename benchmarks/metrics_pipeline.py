"""End-to-end metric job time: from "generation done" to "all metrics stored".

Builds, in a throw-away embedded instance (SQLite under a temporary EVALSITE_VAR_DIR), an eval
set of N clips of eSpeak NG speech, and for two checkpoints stores "generated" clips (the
reference plus a little seeded noise, so no model time is counted). Then it runs the metric job
of checkpoint 1 with an empty cache (every reference clip is embedded and the reference
statistics are built) and of checkpoint 2 with a warm cache (only its own clips are embedded).

    python benchmarks/metrics_pipeline.py --clips 100 --seconds 4

Prints a markdown table row per run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_METRICS = [
    "mel_l1/hifigan-22.05k-n1024-h256-m80",
    "mrstft/auraloss-default",
    "lsd/log10pow-n2048-h512",
    "si_sdr",
    "stoi",
    "pesq/wb-16k-torchaudio",
    "speaker_cos/resemblyzer-16k",
    "fad/resemblyzer-16k",
    "kad/resemblyzer-16k/rbf-median-ref-x100",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--metrics", nargs="*", default=DEFAULT_METRICS)
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-bench-"))
    os.environ.update(EVALSITE_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="evalsite.settings.base")
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "EVALSITE_MEDIA_ROOT"):
        os.environ.pop(key, None)
    import django

    django.setup()
    import numpy as np
    from django.core.management import call_command

    from evalsite.audio.decoding import decoded_from_array
    from evalsite.audio.services import audio_asset_store
    from evalsite.demo.speech import DEMO_SENTENCES, DEMO_SPEAKERS, SAMPLE_RATE, synthesize
    from evalsite.jobs.models import Job
    from evalsite.jobs.services import job_execute
    from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
    from evalsite.scoring.services import metrics_job_work

    call_command("migrate", verbosity=0)
    eval_set = EvalSet.objects.create(name="bench")
    frames = int(args.seconds * SAMPLE_RATE)
    refs = []
    for i in range(args.clips):
        wav, _ = synthesize(
            DEMO_SENTENCES[i % len(DEMO_SENTENCES)],
            voice=DEMO_SPEAKERS[i % len(DEMO_SPEAKERS)],
            rate_wpm=150 + i,
        )
        clip = np.zeros(frames, dtype=np.float32)
        clip[: min(frames, len(wav))] = wav[:frames]
        asset, _ = audio_asset_store(decoded=decoded_from_array(clip, SAMPLE_RATE))
        refs.append((EvalItem.objects.create(eval_set=eval_set, key=f"item_{i:03d}", reference=asset), clip))
    run = Run.objects.create(
        name="bench",
        kind="vocoder",
        model_family="hifigan",
        eval_set=eval_set,
        config={"metrics": args.metrics},
    )

    print("| run | clips | s/clip | metrics | wall (s) | failed |")
    print("|---|---|---|---|---|---|")
    for step, label in ((1000, "cold reference cache"), (2000, "warm reference cache")):
        checkpoint = Checkpoint.objects.create(run=run, step=step, uri=f"bench-{step}")
        rng = np.random.default_rng(step)
        for item, clip in refs:
            noisy = (clip + 0.003 * rng.standard_normal(clip.shape)).astype(np.float32)
            asset, _ = audio_asset_store(decoded=decoded_from_array(noisy, SAMPLE_RATE))
            Generation.objects.create(checkpoint=checkpoint, item=item, params_hash="bench", asset=asset)
        job = Job.objects.create(
            kind="metrics", run=run, checkpoint=checkpoint, params={"params_hash": "bench"}
        )
        started = time.perf_counter()
        job = job_execute(job_id=job.pk, worker="bench", work=metrics_job_work)
        wall = time.perf_counter() - started
        failed = job.result.get("failed", {}) if job.status == "done" else {"job": job.error}
        print(
            f"| {label} | {args.clips} | {args.seconds:g} | {len(args.metrics)} | {wall:.1f} | {len(failed)} |"
        )
        for name, error in failed.items():
            print(f"  failed {name}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
