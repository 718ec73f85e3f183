import numpy as np
import pytest
import torch

from metrics.functional.frechet import (
    frechet_distance,
    frechet_distance_from_samples,
    frechet_distance_to_reference,
)
from metrics.gaussian import GaussianStatistics

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _stats(x):
    return x.mean(0), np.cov(x, rowvar=False)


def test_matches_frechet_audio_distance_package_within_1e6(rng):
    fad_pkg = pytest.importorskip("frechet_audio_distance")
    d = 64
    a = rng.normal(size=(3000, d)) @ rng.normal(size=(d, d)) / 4
    b = rng.normal(size=(2500, d)) @ rng.normal(size=(d, d)) / 4 + 0.3
    (m1, s1), (m2, s2) = _stats(a), _stats(b)
    theirs = fad_pkg.FrechetAudioDistance.calculate_frechet_distance(None, m1, s1, m2, s2)
    ours = frechet_distance(m1, s1, m2, s2).value
    assert abs(ours - theirs) / abs(theirs) <= 1e-6


def test_identical_sets_give_zero_and_never_negative(rng):
    for n, d in ((500, 32), (20, 64)):
        x = rng.normal(size=(n, d))
        for method in ("full", "lowrank"):
            r = frechet_distance_from_samples(x, x, method=method)
            assert r.value >= 0.0
            assert r.value < 1e-8 * d
        m, s = _stats(x)
        r = frechet_distance(m, s, m, s, n1=n, n2=n)
        assert 0.0 <= r.value < 1e-6 * d


def test_singular_covariances_give_finite_nonnegative_value(rng):
    x, y = rng.normal(size=(10, 128)), rng.normal(size=(12, 128))
    (m1, s1), (m2, s2) = _stats(x), _stats(y)
    r = frechet_distance(m1, s1, m2, s2)
    assert np.isfinite(r.value) and r.value >= 0.0
    assert r.details["method"].startswith("eigh")


def test_low_rank_path_equals_full_path_where_both_apply(rng):
    # n > d: both paths valid.
    x, y = rng.normal(size=(400, 48)), rng.normal(size=(300, 48)) * 1.1 + 0.2
    full = frechet_distance_from_samples(x, y, method="full").value
    low = frechet_distance_from_samples(x, y, method="lowrank").value
    assert low == pytest.approx(full, rel=1e-9)
    # n < d: full works on singular covariances through the eigh factor.
    x, y = rng.normal(size=(30, 100)), rng.normal(size=(40, 100)) + 0.1
    full = frechet_distance_from_samples(x, y, method="full")
    low = frechet_distance_from_samples(x, y, method="lowrank")
    assert low.details["method"] == "lowrank+eigvalsh"
    assert low.value == pytest.approx(full.value, rel=1e-7)


def test_distance_to_stored_reference_equals_distance_from_samples(rng):
    ref, gen = rng.normal(size=(600, 32)), rng.normal(size=(50, 32)) + 0.5
    expected = frechet_distance_from_samples(ref, gen, method="full").value
    stats = GaussianStatistics.from_samples(ref)
    assert frechet_distance_to_reference(gen, stats).value == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_to_reference(gen, _stats(ref)).value == pytest.approx(expected, rel=1e-9)
    gen_stats = GaussianStatistics.from_samples(gen)
    assert stats.frechet_distance(gen_stats).value == pytest.approx(expected, rel=1e-9)


def test_warns_when_n_below_dimension_and_when_sizes_differ(rng):
    r = frechet_distance_from_samples(rng.normal(size=(20, 64)), rng.normal(size=(30, 64)))
    text = " ".join(r.warnings)
    assert "n_reference=20 < dim=64" in text
    assert "n_generated=30 < dim=64" in text
    assert "sample sizes differ" in text
    r = frechet_distance_from_samples(rng.normal(size=(100, 8)), rng.normal(size=(100, 8)))
    assert r.warnings == ()


def test_shape_errors_name_both_shapes(rng):
    with pytest.raises(ValueError, match=r"\(10, 4\).*\(10, 5\)"):
        frechet_distance_from_samples(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match=r"\(4,\) and \(5,\)"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(5), np.eye(5))


def test_distance_grows_monotonically_with_sine_distortion(log_mel_frames):
    sr = 16000
    t = np.arange(sr) / sr
    freqs = [220.0, 330.0, 440.0, 550.0, 660.0, 770.0]
    noise_rng = np.random.default_rng(7)

    def clips(noise_level, seed):
        r = np.random.default_rng(seed)
        out = []
        for f in freqs:
            x = 0.5 * np.sin(2 * np.pi * f * t + r.uniform(0, 2 * np.pi))
            out.append(x + noise_level * noise_rng.standard_normal(sr))
        return np.concatenate([log_mel_frames(c) for c in clips_to_list(out)])

    def clips_to_list(xs):
        return [np.asarray(x, dtype=np.float32) for x in xs]

    ref = clips(0.0, 0)
    values = [
        frechet_distance_from_samples(ref, clips(level, 1)).value for level in (0.0, 0.001, 0.01, 0.05, 0.2)
    ]
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_result_is_json_serialisable_and_float_convertible(rng):
    import json

    r = frechet_distance_from_samples(rng.normal(size=(50, 4)), rng.normal(size=(60, 4)), name="fad/toy")
    d = r.to_dict()
    json.dumps(d)
    assert d["name"] == "fad/toy" and float(r) == r.value


@requires_cuda
def test_cuda_matches_cpu(rng):
    x, y = rng.normal(size=(300, 64)), rng.normal(size=(200, 64)) + 0.2
    cpu = frechet_distance_from_samples(x, y, method="full").value
    gpu = frechet_distance_from_samples(x, y, method="full", device="cuda")
    low = frechet_distance_from_samples(x[:40], y[:50], device="cuda").value
    assert gpu.value == pytest.approx(cpu, rel=1e-9)
    assert low == pytest.approx(frechet_distance_from_samples(x[:40], y[:50]).value, rel=1e-9)
    stats = GaussianStatistics(device="cuda").update(torch.as_tensor(x, device="cuda"))
    assert stats.sum.device.type == "cuda"
