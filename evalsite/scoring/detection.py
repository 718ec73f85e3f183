"""Detection jobs: the automated artifact detectors over each output of a checkpoint.

Events are stored per generation and replaced on a re-run (one transaction per generation), so a
redelivered job never doubles them. The detectors are ``metrics.detectors`` (pure functions).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from evalsite.audio.selectors import AudioCache, audio_asset_problem
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import ProgressFn
from evalsite.runs.models import Generation
from evalsite.scoring.models import DetectorEvent, DetectorPass
from metrics import detectors
from metrics.detectors import DETECTORS
from metrics.jsonable import jsonable

logger = logging.getLogger(__name__)

DETECTION_VERSION = "1"
NO_OUTPUTS = (
    "checkpoint {checkpoint} has no generated outputs (params {params_hash}) to run the detectors on."
)
UNKNOWN_DETECTORS = "run {run!r} names unknown detectors {names}; known: {known}."
NO_READABLE_OUTPUT = "no output of checkpoint {checkpoint} can go through the detectors; first: {first}"
OUTPUT_LEFT_OUT = "item {key!r} left out: generated audio {path}: {problem}"
REFERENCE_LEFT_OUT = (
    "item {key!r}: reference audio {path}: {problem}; detectors that compare with it were skipped"
)


def run_detector_names(run) -> list[str]:
    """The run's ``config["detectors"]`` list, or every detector."""
    names = run.config.get("detectors")
    if names is None:
        return list(DETECTORS)
    unknown = sorted(set(names) - set(DETECTORS))
    if unknown:
        raise ApplicationError(UNKNOWN_DETECTORS.format(run=run.name, names=unknown, known=sorted(DETECTORS)))
    return list(names)


def detection_job_work(job: Job, progress: ProgressFn) -> dict[str, Any]:
    """Run the detectors on every output of the job's checkpoint."""

    checkpoint = job.checkpoint
    params_hash = job.params.get("params_hash") or ""
    names = run_detector_names(checkpoint.run)
    generations = list(
        Generation.objects.filter(
            checkpoint=checkpoint,
            status=Generation.Status.DONE,
            **({"params_hash": params_hash} if params_hash else {}),
        )
        .select_related("asset", "item__reference")
        .order_by("item__key")
    )
    if not generations:
        raise ApplicationError(NO_OUTPUTS.format(checkpoint=checkpoint, params_hash=params_hash or "any"))
    audio = AudioCache()
    counts: dict[str, int] = {name: 0 for name in names}
    total_s = 0.0
    # A stored clip damaged or deleted since it was written is left out by name (it would otherwise fail the
    # whole job and leave the checkpoint "detecting"); the other clips go on.
    left_out: dict[str, str] = {}
    for index, generation in enumerate(generations, start=1):
        key = generation.item.key
        if problem := audio_asset_problem(audio, generation.asset):
            left_out[key] = OUTPUT_LEFT_OUT.format(key=key, path=generation.asset.file.name, problem=problem)
            with transaction.atomic():  # no events of an earlier pass stay for a clip not checked now
                DetectorEvent.objects.filter(generation=generation).delete()
                DetectorPass.objects.filter(generation=generation).delete()
            progress(index, len(generations), key)
            continue
        rate = generation.asset.sample_rate
        samples = audio.mono(generation.asset)
        reference = None
        if generation.item.reference_id:
            if problem := audio_asset_problem(audio, generation.item.reference):
                left_out[f"{key} (reference)"] = REFERENCE_LEFT_OUT.format(
                    key=key, path=generation.item.reference.file.name, problem=problem
                )
            else:
                reference = audio.mono(generation.item.reference, rate)
        events = detectors.detect_all(samples, rate, reference=reference, detectors=names)
        duration_s = len(samples) / rate
        total_s += duration_s
        with transaction.atomic():
            DetectorEvent.objects.filter(generation=generation).delete()
            DetectorEvent.objects.bulk_create(
                [
                    DetectorEvent(
                        generation=generation,
                        checkpoint=checkpoint,
                        detector=e.detector,
                        start_s=float(e.start_s),
                        end_s=float(max(e.end_s, e.start_s)),
                        strength=float(e.strength),
                        detail=jsonable(e.detail),
                    )
                    for e in events
                ]
            )
            DetectorPass.objects.update_or_create(
                generation=generation,
                defaults={
                    "checkpoint": checkpoint,
                    "duration_s": duration_s,
                    "events": len(events),
                    "version": DETECTION_VERSION,
                },
            )
        for e in events:
            counts[e.detector] = counts.get(e.detector, 0) + 1
        progress(index, len(generations), key)
    checked = len(generations) - sum(1 for k in left_out if not k.endswith("(reference)"))
    if checked == 0:
        raise ApplicationError(
            NO_READABLE_OUTPUT.format(checkpoint=checkpoint, first=next(iter(left_out.values()))),
            extra={"left_out": left_out},
        )
    result: dict[str, Any] = {"clips": checked, "audio_s": round(total_s, 3), "events": counts}
    if left_out:
        result["left_out"] = left_out
    return result
