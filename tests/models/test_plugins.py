"""Researchers' own architectures through a dotted path or the ``evalsite.models`` entry-point group.

A dotted path is honoured only when the caller lists it in ``plugins``; a checkpoint file may name
only a registered family (built-in or entry point).
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
import torch

import models
from models import ModelLoadError

PLUGIN_SOURCE = textwrap.dedent(
    """
    from dataclasses import dataclass
    from typing import ClassVar

    import torch
    from torch import nn

    from models.base import Vocoder


    @dataclass(frozen=True)
    class FrameConfig:
        n_mels: int = 8
        hop: int = 4
        sample_rate: int = 8000


    class FrameVocoder(Vocoder):
        family: ClassVar[str] = "{module}:FrameVocoder"
        config_class: ClassVar[type] = FrameConfig
        presets: ClassVar[dict] = {{"tiny": FrameConfig}}

        def __init__(self, config: FrameConfig) -> None:
            super().__init__()
            self.config = config
            self.proj = nn.Linear(config.n_mels, config.hop)

        @property
        def sample_rate(self) -> int:
            return self.config.sample_rate

        @property
        def hop_length(self) -> int:
            return self.config.hop

        @property
        def n_mels(self) -> int:
            return self.config.n_mels

        @torch.inference_mode()
        def mel(self, wav):
            frames = wav.shape[1] // self.hop_length
            framed = wav[:, : frames * self.hop_length].reshape(wav.shape[0], frames, self.hop_length)
            return framed.mean(-1, keepdim=True).expand(-1, -1, self.n_mels).transpose(1, 2)

        @torch.inference_mode()
        def forward(self, mel):
            return torch.tanh(self.proj(mel.transpose(1, 2))).reshape(mel.shape[0], -1)


    def make_vocoder(n_mels: int = 8, hop: int = 4, sample_rate: int = 8000) -> FrameVocoder:
        return FrameVocoder(FrameConfig(n_mels, hop, sample_rate))


    def not_a_model(**kwargs):
        return "not a model"
    """
)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write an importable plug-in module and return its (unique) name."""
    name = f"evalsite_test_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE.format(module=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def entry_point(plugin_module: str, tmp_path: Path) -> str:
    """Register ``make_vocoder`` under a fresh entry-point name in ``evalsite.models``."""
    name = f"framevoc_{plugin_module[-8:]}"
    dist = tmp_path / f"evalsite_fake_plugin_{plugin_module[-8:]}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: evalsite-fake-plugin-{plugin_module[-8:]}\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(f"[evalsite.models]\n{name} = {plugin_module}:make_vocoder\n")
    return name


def _wav() -> torch.Tensor:
    return torch.linspace(-0.5, 0.5, 2 * 37).reshape(2, 37)


def test_dotted_path_class_plugin_round_trips_through_a_checkpoint_when_named_and_allowed(
    plugin_module: str, tmp_path: Path
) -> None:
    family = f"{plugin_module}:FrameVocoder"
    model = models.build_model(family, {"hop": 5}, plugins=[family]).eval()
    loaded = models.load(
        models.save_checkpoint(model, tmp_path / "plugin.pt"), family=family, plugins=[family]
    )
    assert type(loaded).__name__ == "FrameVocoder" and loaded.config.hop == 5
    assert loaded.family == f"{plugin_module}:FrameVocoder" and loaded.kind == "vocoder"
    assert torch.equal(loaded.copy_synthesis(_wav()), model.copy_synthesis(_wav()))
    assert loaded.copy_synthesis(_wav()).shape == (2, 37)


def test_dotted_path_factory_is_given_the_stored_kwargs(plugin_module: str, tmp_path: Path) -> None:
    family = f"{plugin_module}:make_vocoder"
    model = models.build_model(family, {"n_mels": 6}, plugins=[family])
    path = models.save_checkpoint(model, tmp_path / "factory.pt")
    loaded = models.load(path, family=family, plugins=[family])
    assert loaded.config.n_mels == 6 and loaded.family == family


def test_a_checkpoint_naming_a_dotted_path_is_refused_unless_the_caller_names_the_family(
    plugin_module: str, tmp_path: Path
) -> None:
    family = f"{plugin_module}:make_vocoder"
    path = models.save_checkpoint(models.build_model(family, {}, plugins=[family]), tmp_path / "factory.pt")
    with pytest.raises(ModelLoadError, match="not a registered family"):
        models.load(path, plugins=[family])  # the file's choice is never taken, allowed or not
    with pytest.raises(ModelLoadError, match="not a registered family"):
        models.config_from_checkpoint(path)


def test_a_dotted_path_not_on_the_allow_list_is_refused_before_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"evalsite_test_side_effect_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make(**kw): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not on the plug-in allow-list"):
        models.build_model(f"{name}:make", {})
    with pytest.raises(ModelLoadError, match="not on the plug-in allow-list"):
        models.build_model(f"{name}:make", {}, plugins=[f"{name}:other"])
    assert not marker.exists()


def test_entry_point_plugin_is_listed_and_loadable_by_name(entry_point: str, tmp_path: Path) -> None:
    assert entry_point in models.available_families()
    model = models.build_model(entry_point, {"hop": 3})
    assert model.family == entry_point
    loaded = models.load(models.save_checkpoint(model, tmp_path / "ep.pt"))
    assert loaded.family == entry_point and loaded.hop_length == 3


def test_factory_that_returns_something_else_is_a_model_load_error(plugin_module: str) -> None:
    family = f"{plugin_module}:not_a_model"
    with pytest.raises(ModelLoadError, match="not a models.base.AudioModel"):
        models.build_model(family, {}, plugins=[family])


def test_dotted_path_to_a_missing_module_or_attribute_is_a_model_load_error(plugin_module: str) -> None:
    allowed = ["no_such_package_xyz.models:Factory", f"{plugin_module}:Missing"]
    with pytest.raises(ModelLoadError, match="cannot import module"):
        models.resolve_family("no_such_package_xyz.models:Factory", plugins=allowed)
    with pytest.raises(ModelLoadError, match="has no attribute 'Missing'"):
        models.resolve_family(f"{plugin_module}:Missing", plugins=allowed)


def test_plugin_kwargs_that_do_not_fit_are_reported(plugin_module: str, tmp_path: Path) -> None:
    family = f"{plugin_module}:FrameVocoder"
    with pytest.raises(ModelLoadError, match="cannot build"):
        models.build_model(family, {"channels": 3}, plugins=[family])
