"""``python -m models.init_checkpoint`` writes loadable, seeded random checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from models.init_checkpoint import main

REPO = Path(__file__).resolve().parents[2]


def test_command_writes_a_loadable_hifigan_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ckpt" / "hifigan_tiny.pt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "models.init_checkpoint",
            "--family",
            "hifigan",
            "--config",
            "tiny",
            "--out",
            str(out),
            "--seed",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "family=hifigan" in result.stdout
    model = models.load(out)
    assert model.config == models.HiFiGANVocoder.preset("tiny")
    raw = torch.load(out, weights_only=True)
    assert raw["family"] == "hifigan" and raw["metadata"]["seed"] == 3


@pytest.mark.parametrize(
    ("family", "preset"), [("evagan", "tiny"), ("sat", "tiny"), ("aar", "tiny"), ("aar", "tiny-class")]
)
def test_every_family_has_a_tiny_preset_the_command_can_write(
    family: str, preset: str, tmp_path: Path
) -> None:
    out = tmp_path / f"{family}.pt"
    assert main(["--family", family, "--config", preset, "--out", str(out)]) == 0
    assert models.load(out).family == family


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path: Path) -> None:
    paths = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        paths[name] = tmp_path / f"{name}.pt"
        assert (
            main(["--family", "sat", "--config", "tiny", "--out", str(paths[name]), "--seed", str(seed)]) == 0
        )
    a, b, c = (torch.load(paths[n], weights_only=True)["state_dict"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_preset_exits_with_status_2_and_lists_presets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--family", "hifigan", "--config", "v9", "--out", str(tmp_path / "x.pt")]) == 2
    assert "known: ['tiny', 'v1', 'v2', 'v3']" in capsys.readouterr().err
