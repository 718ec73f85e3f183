"""Shared fixtures for the models tests: tiny models, built once per seed and reused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import models
from models.base import AudioModel


def tiny(family: str, preset: str = "tiny", seed: int = 0) -> AudioModel:
    """A randomly initialised tiny model in eval mode (weight norm still parametrised)."""
    torch.manual_seed(seed)
    return models.build_model(family, models.BUILTIN_FAMILIES[family].preset(preset)).eval()


def sine(sample_rate: int, seconds: float, batch: int = 2, freq: float = 440.0) -> torch.Tensor:
    """(batch, T) sines at ``freq * (1 + b)`` Hz with amplitude 0.5."""
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    return torch.stack([0.5 * torch.sin(2 * math.pi * freq * (b + 1) * t) for b in range(batch)])


@pytest.fixture
def tiny_checkpoint(tmp_path: Path):
    """Factory: write a tiny model of ``family`` in our format and return (model, path)."""

    def make(family: str, preset: str = "tiny", seed: int = 0) -> tuple[AudioModel, Path]:
        model = tiny(family, preset, seed)
        path = models.save_checkpoint(model, tmp_path / f"{family}-{preset}-{seed}.pt")
        return model, path

    return make
