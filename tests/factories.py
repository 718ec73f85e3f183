"""Shared test data: factory_boy factories for the models tests create, and builders of whole worlds
(an eval set with reference audio and checkpoint outputs; a listening test from a design)."""

import itertools
from datetime import timedelta

import factory
import numpy as np
import soundfile as sf
from django.utils import timezone

from evalsite.jobs.models import Job
from evalsite.listening.models import ListeningTest, SoundFetch
from evalsite.listening.services import TestDesign, listening_test_build
from evalsite.listening.services.heard import CALIBRATION_SOUND, sound_fetch_record
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
from evalsite.scoring.models import DetectorEvent, DetectorPass, MetricResult


class EvalSetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EvalSet

    name = factory.Sequence(lambda n: f"evalset-{n}")


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Run

    name = factory.Sequence(lambda n: f"run-{n}")
    kind = Run.Kind.VOCODER
    model_family = "hifigan"


class CheckpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Checkpoint

    run = factory.SubFactory(RunFactory)
    step = factory.Sequence(lambda n: 1000 * (n + 1))
    uri = factory.LazyAttribute(lambda o: f"/ckpt/g_{o.step:08d}")


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    kind = Job.Kind.IMPORT_EVALSET


class EvalItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EvalItem

    eval_set = factory.SubFactory(EvalSetFactory)
    key = factory.Sequence(lambda n: f"utt{n}")


class GenerationFactory(factory.django.DjangoModelFactory):
    """An output row; without ``asset`` it stands for a generation that stored no audio."""

    class Meta:
        model = Generation

    checkpoint = factory.SubFactory(CheckpointFactory)
    item = factory.SubFactory(EvalItemFactory)
    params_hash = "p"


class MetricResultFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MetricResult

    checkpoint = factory.SubFactory(CheckpointFactory)
    params_hash = "p"
    name = factory.Sequence(lambda n: f"metric-{n}")
    status = MetricResult.Status.DONE
    value = 0.5
    higher_is_better = False
    n = 10
    spec_key = factory.LazyAttribute(lambda o: f"spec-{o.name}")


class DetectorPassFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DetectorPass

    generation = factory.SubFactory(GenerationFactory)
    checkpoint = factory.LazyAttribute(lambda o: o.generation.checkpoint)
    duration_s = 60.0
    events = 0
    version = "1"


class DetectorEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DetectorEvent

    generation = factory.SubFactory(GenerationFactory)
    checkpoint = factory.LazyAttribute(lambda o: o.generation.checkpoint)
    detector = "clicks"
    start_s = 0.0
    end_s = factory.LazyAttribute(lambda o: o.start_s + 0.01)
    strength = 2.0


def write_tone(
    path,
    *,
    freq: float = 440.0,
    seconds: float = 0.5,
    rate: int = 22050,
    subtype: str = "PCM_16",
    seed: int | None = None,
    fmt: str | None = None,
) -> np.ndarray:
    """Write a short tone (plus seeded noise, so every seed gives distinct audio) and return its samples."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    if seed is not None:
        x = x + 0.01 * np.random.default_rng(seed).standard_normal(t.shape)
    # Integer PCM is written from integers: libsndfile's float→int rounding differs between
    # WAV and FLAC, and the point of some tests is that identical PCM gives one asset.
    data = np.round(x * 32767).astype(np.int16) if subtype == "PCM_16" else x.astype(np.float32)
    sf.write(str(path), data, rate, subtype=subtype, format=fmt)
    return x


_world_ids = itertools.count()


def listening_world(
    *,
    n_items: int = 4,
    runs: tuple[str, ...] = ("hifigan-secret-run", "evagan-hidden-run"),
    rate: int = 22050,
    seconds: float = 1.0,
    step: int = 77777,
) -> dict:
    """An eval set with reference audio and checkpoints of ``runs`` with an output for every item."""
    from evalsite.audio.decoding import decoded_from_array
    from evalsite.audio.services import audio_asset_store
    from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run

    def noise(seed):
        return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)

    eval_set = EvalSet.objects.create(name=f"listening-set-{next(_world_ids)}")
    items = []
    for i in range(n_items):
        ref, _ = audio_asset_store(decoded=decoded_from_array(noise(i), rate))
        items.append(
            EvalItem.objects.create(eval_set=eval_set, key=f"utt{i}", reference=ref, speaker=f"s{i % 2}")
        )
    checkpoints = []
    for r, name in enumerate(runs):
        run = Run.objects.create(name=name, kind="vocoder", model_family="hifigan", eval_set=eval_set)
        ckpt = Checkpoint.objects.create(run=run, step=step, uri=f"/ckpt/{name}/g_{step:08d}")
        for i, item in enumerate(items):
            out, _ = audio_asset_store(decoded=decoded_from_array(noise(1000 + 100 * r + i), rate))
            Generation.objects.create(checkpoint=ckpt, item=item, params_hash="p", asset=out)
        checkpoints.append(ckpt)
    return {"eval_set": eval_set, "items": items, "checkpoints": checkpoints}


def band_limit_references(world, keys, cutoff_hz=3000.0, rate=22050):
    """Replace the references of ``keys`` by copies low-passed at ``cutoff_hz`` (an elliptic IIR,
    90 dB down), as a recording band-limited upstream would be."""
    from scipy import signal

    from evalsite.audio.decoding import decoded_from_array
    from evalsite.audio.services import audio_asset_store

    sos = signal.ellip(10, 0.1, 90, cutoff_hz, fs=rate, output="sos")
    for item in world["items"]:
        if item.key in keys:
            noise = 0.2 * np.random.default_rng(sum(item.key.encode())).standard_normal(rate)
            ref, _ = audio_asset_store(
                decoded=decoded_from_array(signal.sosfilt(sos, noise).astype(np.float32), rate)
            )
            item.reference = ref
            item.save(update_fields=["reference"])


def make_listening_test(*, owner=None, **design) -> ListeningTest:
    """``listening_test_build`` with the design's fields as keywords, as most tests spell a test out."""
    return listening_test_build(design=TestDesign(**design), owner=owner)


def hear(participant, *sounds: str, duration_s: float = 3.0) -> None:
    """Server-side evidence that ``participant`` heard these sounds (``SoundFetch.sound`` keys; by
    default the calibration noise): every byte sent, an hour ago, as a listening page would leave it."""
    for sound in sounds or (CALIBRATION_SOUND,):
        sound_fetch_record(
            participant_id=participant.pk, sound=sound, start=0, end=1, size=1, duration_s=duration_s
        )
        SoundFetch.objects.filter(participant_id=participant.pk, sound=sound).update(
            first_fetched_at=timezone.now() - timedelta(hours=1)
        )
