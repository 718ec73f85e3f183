import numpy as np
import pytest
import torch

from metrics.functional.speech import crepe_pitch_metrics, dnsmos, pesq_wb, resample, si_sdr, stoi


@pytest.fixture
def speech_pair(speech_like):
    ref = speech_like(150.0, dur=1.5, pause=True)
    noise = np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)
    return ref + 0.02 * noise, ref


def test_si_sdr_of_orthogonal_noise_is_hand_computable():
    s = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    n = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)  # zero mean, orthogonal to s
    r = si_sdr(s + 0.1 * n, s)
    assert r.value == pytest.approx(10 * np.log10(1 / 0.01), abs=1e-10)
    # scale invariance: scaling the estimate does not change SI-SDR
    assert si_sdr(3 * (s + 0.1 * n), s).value == pytest.approx(20.0, abs=1e-10)


def test_si_sdr_perfect_estimate_is_infinite_and_excluded_from_mean():
    s = torch.tensor([1.0, -2.0, 3.0, -2.0])
    r = si_sdr({"a": s, "b": s + torch.tensor([0.1, 0.1, -0.1, -0.1])}, {"a": s, "b": s})
    assert r.per_item["a"] == float("inf") and np.isfinite(r.value)
    assert any("no finite value" in w for w in r.warnings)


def test_pesq_matches_the_pesq_package(speech_pair):
    pesq = pytest.importorskip("pesq")
    gen, ref = speech_pair
    r = pesq_wb({"a": gen}, {"a": ref}, 16000)
    assert r.per_item["a"] == pytest.approx(pesq.pesq(16000, ref, gen, "wb"), abs=1e-6)
    # at 24 kHz input the metric resamples with torchaudio before calling pesq
    g24, r24 = (resample(torch.as_tensor(x), 16000, 24000) for x in (gen, ref))
    r2 = pesq_wb({"a": g24}, {"a": r24}, 24000)
    expected = pesq.pesq(
        16000, resample(r24, 24000, 16000).numpy(), resample(g24, 24000, 16000).numpy(), "wb"
    )
    assert r2.per_item["a"] == pytest.approx(expected, abs=1e-6)
    assert r.name == "pesq/wb-16k-torchaudio"


def test_pesq_errors_become_nan_not_minus_one():
    silent = np.zeros(16000, dtype=np.float32)
    r = pesq_wb({"s": silent + 1e-9}, {"s": silent}, 16000)
    assert np.isnan(r.per_item["s"]) and "s" in r.details["errors"]


def test_stoi_matches_pystoi(speech_pair):
    pystoi = pytest.importorskip("pystoi")
    gen, ref = speech_pair
    assert stoi(gen, ref, 16000).value == pytest.approx(pystoi.stoi(ref, gen, 16000), abs=1e-9)
    assert stoi(gen, ref, 16000, extended=True).value == pytest.approx(
        pystoi.stoi(ref, gen, 16000, extended=True), abs=1e-9
    )


def test_crepe_pitch_metrics_identical_and_shifted(speech_like):
    pytest.importorskip("torchcrepe")
    ref = speech_like(150.0, sr=22050, dur=0.5)
    shifted = speech_like(150.0 * 2 ** (100 / 1200), sr=22050, dur=0.5)
    out = crepe_pitch_metrics({"a": ref, "b": shifted}, {"a": ref, "b": ref}, 22050, model="tiny")
    assert out["f0_rmse_cents"].per_item["a"] == pytest.approx(0.0, abs=1e-6)
    assert out["f0_rmse_cents"].per_item["b"] == pytest.approx(100.0, abs=25.0)
    assert out["vuv_f1"].per_item["a"] == 1.0
    assert out["periodicity_rmse"].per_item["a"] == pytest.approx(0.0, abs=1e-6)
    assert out["vuv_f1"].name == "vuv_f1/cargan-crepe-tiny" and out["vuv_f1"].higher_is_better


def test_dnsmos_runs_offline_from_the_wheel(speech_like):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("speechmos")
    out = dnsmos({"a": speech_like(150.0, dur=1.0)}, 16000)
    for key in ("ovrl", "sig", "bak", "p808"):
        assert 1.0 <= out[key].value <= 5.0
        assert out[key].name == f"dnsmos/{key}"
