import numpy as np
import pytest
import torch

from metrics.functional.spectral import log_spectral_distance, mel_distance, mrstft_distance
from metrics.paired import MelDistance, MRSTFTDistance

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    ref = {f"u{i}": torch.randn(8000 + 2000 * i, generator=g) * 0.3 for i in range(3)}
    gen = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in ref.items()}
    return gen, ref


def test_mrstft_matches_auraloss_per_item(pairs):
    auraloss = pytest.importorskip("auraloss")
    gen, ref = pairs
    loss = auraloss.freq.MultiResolutionSTFTLoss()
    r = mrstft_distance(gen, ref)
    assert r.name == "mrstft/auraloss-default"
    for k in ref:
        expected = float(loss(gen[k][None, None], ref[k][None, None]))
        assert r.per_item[k] == pytest.approx(expected, rel=1e-5)


def _librosa_hifigan_mel(y, sr, n_fft=1024, hop=256, n_mels=80):
    librosa = pytest.importorskip("librosa")
    pad = (n_fft - hop) // 2
    y = np.pad(y, (pad, pad), mode="reflect")
    spec = librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=n_fft, window="hann", center=False)
    mag = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0, fmax=None)
    return np.log(np.maximum(basis @ mag, 1e-5))


def test_mel_distance_matches_an_independent_librosa_hifigan_mel(pairs):
    gen, ref = pairs
    r = mel_distance(gen, ref, 22050)
    assert r.name == "mel_l1/hifigan-22.05k-n1024-h256-m80"
    for k in ref:
        g, x = gen[k].double().numpy(), ref[k].double().numpy()
        expected = np.abs(_librosa_hifigan_mel(g, 22050) - _librosa_hifigan_mel(x, 22050)).mean()
        assert r.per_item[k] == pytest.approx(expected, rel=1e-4)
    assert r.details["n_mels"] == 80 and r.details["hop_length"] == 256


def test_log_spectral_distance_of_a_gain_is_exact():
    x = torch.randn(16000, generator=torch.Generator().manual_seed(1))
    assert log_spectral_distance(10 * x, x).value == pytest.approx(2.0, abs=1e-4)
    assert log_spectral_distance(x, x).value == 0.0


def test_length_mismatch_beyond_tolerance_names_both_lengths():
    x = torch.zeros(16000)
    for fn in (mrstft_distance, log_spectral_distance):
        with pytest.raises(ValueError, match="16000.*15000"):
            fn({"a": x}, {"a": torch.zeros(15000)})
    with pytest.raises(ValueError, match="16000.*15000"):
        mel_distance({"a": x}, {"a": torch.zeros(15000)}, 16000)
    r = mrstft_distance({"a": torch.randn(16000)}, {"a": torch.randn(15900)})
    assert r.details["cropped"] == {"a": [16000, 15900]}


def test_distances_grow_with_distortion_and_are_zero_for_identical_audio():
    x = torch.randn(16000, generator=torch.Generator().manual_seed(2)) * 0.3
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(3))
    for fn in (lambda g, r: mel_distance(g, r, 16000), mrstft_distance, log_spectral_distance):
        vals = [fn(x + a * noise, x).value for a in (0.0, 0.01, 0.1, 0.5)]
        assert vals[0] == 0.0 and all(b > a for a, b in zip(vals, vals[1:]))


def test_accumulating_classes_merge_equals_single_pass(pairs):
    gen, ref = pairs
    single = MRSTFTDistance()
    single.update(gen, ref)
    a, b = MRSTFTDistance(), MRSTFTDistance()
    keys = sorted(ref)
    a.update({k: gen[k] for k in keys[:1]}, {k: ref[k] for k in keys[:1]})
    b.update({k: gen[k] for k in keys[1:]}, {k: ref[k] for k in keys[1:]})
    merged = a.merge_state(b).compute()
    assert merged.value == pytest.approx(single.compute().value, rel=1e-12)
    assert merged.per_item == single.compute().per_item
    m = MelDistance(sample_rate=16000)
    m.update(gen, ref)
    assert m.compute().name == "mel_l1/hifigan-16k-n1024-h256-m80" and MelDistance.higher_is_better is False


@requires_cuda
def test_spectral_cuda_matches_cpu(pairs):
    gen, ref = pairs
    cpu = mrstft_distance(gen, ref).per_item
    gpu = mrstft_distance(gen, ref, device="cuda").per_item
    for k in cpu:
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-4)
