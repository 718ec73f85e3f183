"""Mel front ends against librosa (an independent implementation) and the frame-count contract."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from models.evagan import EVAGANVocoder
from models.hifigan import HiFiGANVocoder
from models.mel import MelConfig, MelFrontEnd, mel_filterbank

from .conftest import sine


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [(22050, 1024, 80, 0.0, 8000.0), (44100, 2048, 128, 0.0, None), (16000, 1024, 64, 0.0, 8000.0)],
)
def test_slaney_mel_basis_matches_librosa(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> None:
    config = MelConfig(
        sample_rate=sr,
        n_fft=n_fft,
        win_length=n_fft,
        hop_length=n_fft // 4,
        n_mels=n_mels,
        f_min=fmin,
        f_max=fmax,
    )
    ours = mel_filterbank(config).numpy()
    reference = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-7)


def _librosa_log_mel(wav: np.ndarray, config: MelConfig) -> np.ndarray:
    left, right = config.pad
    padded = np.pad(wav, (left, right), mode="reflect")
    spec = librosa.stft(
        padded,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window="hann",
        center=False,
    )
    magnitude = np.sqrt(spec.real**2 + spec.imag**2 + config.magnitude_eps)
    basis = librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.f_min, fmax=config.f_max
    )
    return np.log(np.clip(basis @ magnitude, config.log_floor, None))


@pytest.mark.parametrize("family_cls", [HiFiGANVocoder, EVAGANVocoder])
def test_log_mel_matches_a_librosa_recomputation_on_a_sine(family_cls: type) -> None:
    config = family_cls.preset("tiny").mel
    wav = sine(config.sample_rate, 0.25, batch=1)
    ours = MelFrontEnd(config)(wav)[0].numpy()
    reference = _librosa_log_mel(wav[0].double().numpy(), config)
    assert ours.shape == reference.shape
    # float32 STFT vs float64 librosa: log-domain differences stay below 5e-3 even near the floor
    np.testing.assert_allclose(ours, reference, atol=5e-3)


def test_hifigan_and_firefly_paddings_give_one_frame_per_hop() -> None:
    hifigan = MelConfig()
    firefly = EVAGANVocoder.preset("base").mel
    assert hifigan.pad == (384, 384)
    assert firefly.pad == (768, 768)
    odd = MelConfig(n_fft=1024, win_length=1024, hop_length=255, padding="firefly")
    assert odd.pad == (384, 385)
    for config in (hifigan, firefly):
        for frames in (3, 7):
            out = MelFrontEnd(config)(torch.zeros(1, frames * config.hop_length) + 0.01)
            assert out.shape == (1, config.n_mels, frames)


def test_front_end_rejects_non_batched_input_naming_the_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, T\).*\(1024,\)"):
        MelFrontEnd(MelConfig())(torch.zeros(1024))
