import numpy as np
import pytest
import torch

from metrics.distribution import KernelAudioDistance
from metrics.functional.frechet import frechet_distance_from_samples, frechet_distance_inf
from metrics.functional.kad import kernel_audio_distance, median_pairwise_distance

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _naive_kad(x, y, sigma, scale=100.0):
    gamma = 1.0 / (2 * sigma**2 + 1e-8)
    k = lambda a, b: np.exp(-gamma * np.sum((a - b) ** 2))  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return scale * (kxx + kyy - 2 * kxy)


def test_kad_matches_a_naive_double_loop_with_reference_bandwidth(rng):
    x, y = rng.normal(size=(25, 3)), rng.normal(size=(20, 3)) + 0.5
    sigma = np.median([np.linalg.norm(x[i] - x[j]) for i in range(25) for j in range(i + 1, 25)])
    r = kernel_audio_distance(x, y)
    # torch.median is the lower median; 300 pairs -> average of two middle values differs slightly
    assert r.details["bandwidth"] == pytest.approx(median_pairwise_distance(x))
    assert r.value == pytest.approx(_naive_kad(x, y, r.details["bandwidth"]), rel=1e-10)
    assert r.details["bandwidth"] == pytest.approx(sigma, rel=0.05)
    assert r.name == "kad/rbf-median-ref-x100"


def test_kad_bandwidth_source_is_selectable_and_named(rng):
    x, y = rng.normal(size=(40, 4)), 3 * rng.normal(size=(40, 4))
    ref_bw = kernel_audio_distance(x, y)
    gen_bw = kernel_audio_distance(x, y, bandwidth_from="generated")
    assert gen_bw.details["bandwidth"] > 2 * ref_bw.details["bandwidth"]
    assert gen_bw.name == "kad/rbf-median-gen-x100"


def test_kad_is_near_zero_at_every_n_while_frechet_is_biased_upward(rng):
    d, reps = 32, 12
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    draw = lambda n: np.maximum(rng.normal(size=(n, d)) @ mix, 0.0)  # noqa: E731
    fd_mean = {}
    for n in (25, 100, 400):
        kads = np.array([kernel_audio_distance(draw(n), draw(n)).value for _ in range(reps)])
        # unbiased: the mean over repetitions is within 3 standard errors of zero
        assert abs(kads.mean()) <= 3 * kads.std(ddof=1) / np.sqrt(reps)
        fd_mean[n] = np.mean([frechet_distance_from_samples(draw(n), draw(n)).value for _ in range(3)])
    assert fd_mean[25] > 3 * fd_mean[100] > 9 * fd_mean[400] * 0.8
    r = kernel_audio_distance(draw(200), draw(200), n_bootstrap=200, seed=1)
    assert r.ci[0] <= 0.0 <= r.ci[1]
    assert kernel_audio_distance(draw(200), draw(200) + 0.3).value > 10 * abs(r.value)


def test_kad_bootstrap_is_seeded(rng):
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 0.2
    a = kernel_audio_distance(x, y, n_bootstrap=50, seed=3)
    b = kernel_audio_distance(x, y, n_bootstrap=50, seed=3)
    c = kernel_audio_distance(x, y, n_bootstrap=50, seed=4)
    assert a.ci == b.ci and a.ci != c.ci
    assert a.ci[0] < a.value < a.ci[1]


def test_kad_class_merge_equals_single_pass(rng):
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 0.2
    one = KernelAudioDistance()
    one.update(x, real=True)
    one.update(y, real=False)
    a, b = KernelAudioDistance(), KernelAudioDistance()
    a.update(x[:30], real=True)
    a.update(y[:20], real=False)
    b.update(x[30:], real=True)
    b.update(y[20:], real=False)
    assert a.merge_state(b).compute().value == pytest.approx(one.compute().value, rel=1e-12)


def test_fad_inf_removes_the_small_sample_bias(rng):
    d = 16
    ref = rng.normal(size=(20000, d))
    same = rng.normal(size=(3000, d))
    r = frechet_distance_inf(same, ref, min_n=100, steps=15, seed=0, n_bootstrap=200)
    biased = frechet_distance_from_samples(ref[:100], same[:100]).value
    assert abs(r.value) < 0.1 * biased
    assert r.ci[0] <= r.value <= r.ci[1]
    assert r.details["r2"] > 0.8
    mu = np.full(d, 0.5)  # true FD = ||mu||^2 = 4
    shifted = frechet_distance_inf(rng.normal(size=(3000, d)) + mu, ref, min_n=100, steps=15, seed=1)
    assert shifted.value == pytest.approx(4.0, abs=0.25)


def test_fad_inf_is_deterministic_and_checks_sizes(rng):
    ref, gen = rng.normal(size=(2000, 4)), rng.normal(size=(600, 4))
    a = frechet_distance_inf(gen, ref, min_n=50, steps=5, n_bootstrap=20)
    b = frechet_distance_inf(gen, ref, min_n=50, steps=5, n_bootstrap=20)
    assert a.value == b.value and a.ci == b.ci
    with pytest.raises(ValueError, match="min_n=500, max_n=300"):
        frechet_distance_inf(gen[:300], ref)


@requires_cuda
def test_kad_cuda_matches_cpu(rng):
    x, y = rng.normal(size=(80, 8)), rng.normal(size=(70, 8)) + 0.1
    assert kernel_audio_distance(x, y, device="cuda").value == pytest.approx(
        kernel_audio_distance(x, y).value, rel=1e-9
    )
