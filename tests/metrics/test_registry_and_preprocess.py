import subprocess
import sys

import numpy as np
import pytest
import torch

from metrics import registry
from metrics.preprocess import PreprocessSpec


def test_every_registered_metric_has_complete_metadata():
    for name in registry.names():
        spec = registry.get(name)
        assert callable(spec.fn) and spec.version and isinstance(spec.higher_is_better, bool)
        assert isinstance(spec.per_item, bool) and spec.kind


def test_template_names_resolve_with_the_embedder():
    spec = registry.get("fad/vggish-16k")
    assert spec.embedder == "vggish-16k" and spec.higher_is_better is False
    assert registry.get("kl/passt-32k/softmax-gen-ref").params == {
        "activation": "softmax",
        "direction": "gen||ref",
    }
    assert registry.get("mrstft/auraloss-default").per_item is True
    assert registry.get("mel_l1/hifigan-22.05k-n1024-h256-m80").sample_rate == 22050
    with pytest.raises(KeyError, match="unknown metric"):
        registry.get("fad")


def test_bound_registry_callable_computes_and_records_the_name(rng):
    fn = registry.get("fad/toy-4").bind()
    r = fn(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)))
    assert r.name == "fad/toy-4"


def test_preprocess_key_is_stable_and_sensitive_to_every_field():
    base = PreprocessSpec(target_sr=16000)
    # A fixed value: changing it invalidates every cached embedding, so it must be deliberate.
    assert base.key() == "pp1-2d2f45252a6f23a6"
    variants = [
        PreprocessSpec(target_sr=32000),
        PreprocessSpec(16000, resampler="soxr-hq"),
        PreprocessSpec(16000, channels="first"),
        PreprocessSpec(16000, crop="center", max_seconds=10),
        PreprocessSpec(16000, pad="zero", min_seconds=1),
        PreprocessSpec(16000, loudness="peak"),
        PreprocessSpec(16000, remove_dc=True),
        PreprocessSpec(16000, int16_roundtrip=True),
    ]
    keys = {v.key() for v in variants} | {base.key()}
    assert len(keys) == len(variants) + 1
    with pytest.raises(ValueError, match="channels"):
        PreprocessSpec(16000, channels="left")


def test_preprocess_apply_policies():
    stereo = torch.stack([torch.ones(48000), -torch.ones(48000)])
    assert PreprocessSpec(48000).apply(stereo, 48000).abs().max() == 0.0
    assert torch.equal(PreprocessSpec(48000, channels="first").apply(stereo, 48000), stereo[:1])
    x = PreprocessSpec(16000, crop="center", max_seconds=0.5).apply(np.random.randn(48000), 48000)
    assert x.shape == (1, 8000)
    y = PreprocessSpec(16000, pad="repeat", min_seconds=1.0).apply(np.arange(4000.0) / 4000, 16000)
    assert y.shape == (1, 16000) and y[0, 4000] == 0.0
    z = PreprocessSpec(16000, loudness="peak", peak_dbfs=-1.0).apply(0.1 * np.sin(np.arange(16000.0)), 16000)
    assert float(z.abs().max()) == pytest.approx(10 ** (-1 / 20), rel=1e-6)


def test_metrics_package_imports_no_django_celery_or_evalsite():
    code = (
        "import sys, pkgutil, importlib, metrics\n"
        "for m in pkgutil.walk_packages(metrics.__path__, 'metrics.'):\n"
        "    if not m.name.startswith('metrics.embedders'): importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'celery', 'evalsite')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2])
    )
