"""Fixtures for the metrics tests: deterministic signals and a simple log-mel embedding."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # laion_clap / frechet_audio_distance hang offline otherwise

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _log_mel_frames(wav: np.ndarray, sr: int = 16000, n_mels: int = 40) -> np.ndarray:
    """A deterministic stand-in embedder: one log-mel frame per 10 ms hop, shape (frames, n_mels)."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate=sr, n_fft=400, hop_length=160, n_mels=n_mels)
    spec = mel(torch.as_tensor(wav, dtype=torch.float32))
    return torch.log(spec + 1e-6).T.double().numpy()


def _speech_like(f0: float = 150.0, sr: int = 16000, dur: float = 1.0, pause: bool = False) -> np.ndarray:
    """A deterministic voiced, syllable-modulated harmonic signal (speech stand-in)."""
    t = np.arange(int(sr * dur)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 15))
    env = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 0.5
    x = 0.3 * x * env / np.max(np.abs(x))
    if pause:
        x = np.concatenate([x, np.zeros(sr // 2), x[::-1]])
    return x.astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def log_mel_frames():
    return _log_mel_frames


@pytest.fixture
def speech_like():
    return _speech_like
