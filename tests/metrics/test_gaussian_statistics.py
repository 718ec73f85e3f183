import numpy as np
import pytest
import torch

from metrics.distribution import FrechetAudioDistance
from metrics.gaussian import GaussianStatistics

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_merged_statistics_equal_a_single_pass(rng):
    x = rng.normal(size=(900, 16)) * 3 + 5
    single = GaussianStatistics().update(x)
    shards = [GaussianStatistics().update(x[i : i + 300]) for i in range(0, 900, 300)]
    merged = GaussianStatistics()
    for s in shards:
        merged.merge_state(s)
    assert merged.n == single.n == 900
    for a, b in zip(merged.compute(), single.compute()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    # Near-zero covariances differ by rounding (the summation order depends on the BLAS build), so the
    # absolute tolerance is relative to the largest entry.
    reference = np.cov(x, rowvar=False)
    np.testing.assert_allclose(
        single.compute()[1].numpy(), reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max()
    )


def test_large_mean_offset_keeps_float64_precision(rng):
    x = rng.normal(size=(2000, 8)) * 1e-3 + 1e6
    mean, cov = (
        GaussianStatistics().update(x[:1000]).merge_state(GaussianStatistics().update(x[1000:])).compute()
    )
    np.testing.assert_allclose(cov.numpy(), np.cov(x, rowvar=False), rtol=1e-6)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-14)


def test_bytes_and_file_round_trip_is_lossless(rng, tmp_path):
    s = GaussianStatistics(meta={"embedder": "toy-8", "preprocess": "pp1-abc"}).update(
        rng.normal(size=(50, 8))
    )
    for restored in (
        GaussianStatistics.from_bytes(s.to_bytes()),
        GaussianStatistics.from_bytes(s.to_bytes(compressed=True)),
    ):
        assert restored.n == 50 and restored.meta == s.meta
        for a, b in zip(restored.compute(), s.compute()):
            assert torch.equal(a, b)
    s.save(tmp_path / "ref.npz")
    assert GaussianStatistics.load(tmp_path / "ref.npz").n == 50


def test_from_mean_cov_reproduces_the_moments(rng):
    x = rng.normal(size=(100, 5))
    s = GaussianStatistics.from_mean_cov(x.mean(0), np.cov(x, rowvar=False), n=100)
    mean, cov = s.compute()
    np.testing.assert_allclose(cov.numpy(), np.cov(x, rowvar=False), rtol=1e-12)
    merged = s.merge_state(GaussianStatistics().update(x))
    np.testing.assert_allclose(
        merged.compute()[1].numpy(), np.cov(np.vstack([x, x]), rowvar=False), rtol=1e-10
    )


def test_merge_refuses_conflicting_metadata_and_dimensions(rng):
    a = GaussianStatistics(meta={"embedder": "vggish"}).update(rng.normal(size=(5, 4)))
    b = GaussianStatistics(meta={"embedder": "clap"}).update(rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="embedder"):
        a.merge_state(b)
    with pytest.raises(ValueError, match=r"\(5, 3\).*D=4"):
        a.update(rng.normal(size=(5, 3)))


def test_reset_and_too_few_samples():
    s = GaussianStatistics().update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="n=1"):
        s.compute()
    s.reset()
    assert s.n == 0


def test_fad_class_merge_equals_single_pass_and_stored_reference(rng):
    ref, gen = rng.normal(size=(400, 12)), rng.normal(size=(300, 12)) + 0.3
    one = FrechetAudioDistance(name="fad/toy")
    one.update(ref, real=True)
    one.update(gen, real=False)
    a, b = FrechetAudioDistance(name="fad/toy"), FrechetAudioDistance(name="fad/toy")
    a.update(ref[:200], real=True)
    a.update(gen[:100], real=False)
    b.update(ref[200:], real=True)
    b.update(gen[100:], real=False)
    assert a.merge_state(b).compute().value == pytest.approx(one.compute().value, rel=1e-10)
    stored = FrechetAudioDistance(name="fad/toy")
    stored.set_reference(GaussianStatistics.from_bytes(GaussianStatistics().update(ref).to_bytes()))
    stored.update(gen, real=False)
    assert stored.compute().value == pytest.approx(one.compute().value, rel=1e-10)
    assert FrechetAudioDistance.higher_is_better is False


@requires_cuda
def test_cuda_accumulation_matches_cpu(rng):
    x = rng.normal(size=(300, 16))
    gpu = GaussianStatistics(device="cuda").update(x)
    cpu = GaussianStatistics().update(x)
    np.testing.assert_allclose(gpu.compute()[1].cpu().numpy(), cpu.compute()[1].numpy(), rtol=1e-10)
