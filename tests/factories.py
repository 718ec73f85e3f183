import factory
import numpy as np
import soundfile as sf

from evalsite.runs.models import Checkpoint, EvalSet, Job, Run


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


def write_tone(path, *, freq: float = 440.0, seconds: float = 0.5, rate: int = 22050, subtype: str = "PCM_16",
               seed: int | None = None, fmt: str | None = None) -> np.ndarray:
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
