"""Saving and loading: round trips, third-party layouts, key normalisation and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from models import CheckpointNotFoundError, ModelLoadError

from .conftest import sine, tiny

FAMILIES = ["hifigan", "evagan", "sat", "aar"]


def _run(model: models.AudioModel) -> torch.Tensor:
    if model.kind == "vocoder":
        return model.copy_synthesis(sine(model.sample_rate, 0.1))
    if model.kind == "tokenizer":
        return model.reconstruct(sine(model.sample_rate, 0.05))
    return model.generate(torch.ones(2, 512), seed=0, top_k=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_gives_bit_identical_outputs(family: str, tiny_checkpoint, tmp_path: Path) -> None:
    _, path = tiny_checkpoint(family)
    first = models.load(path)
    second = models.load(models.save_checkpoint(first, tmp_path / "again.pt"))
    assert (second.family, second.kind, second.config) == (family, first.kind, first.config)
    assert not second.training
    assert torch.equal(_run(first), _run(second))


@pytest.mark.parametrize("family", FAMILIES)
def test_loading_folds_weight_norm_without_changing_the_output(family: str, tiny_checkpoint) -> None:
    model, path = tiny_checkpoint(family)
    loaded = models.load(path)
    assert not any("parametrizations" in k for k in loaded.state_dict())
    torch.testing.assert_close(_run(loaded), _run(model), atol=1e-5, rtol=1e-4)


def _jik876_state_dict(model: models.HiFiGANVocoder, *, legacy: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        key = key.removeprefix("head.")
        if legacy:
            key = key.replace(".parametrizations.weight.original0", ".weight_g")
            key = key.replace(".parametrizations.weight.original1", ".weight_v")
        out[key] = value.clone()
    return out


def _write_jik876(directory: Path, model: models.HiFiGANVocoder, step: int, *, legacy: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps({**model.config.to_jik876(), "batch_size": 16, "num_gpus": 0})
    )
    path = directory / f"g_{step:08d}"
    torch.save({"generator": _jik876_state_dict(model, legacy=legacy)}, path)
    return path


def test_jik876_checkpoint_with_weight_g_v_loads_like_the_new_parametrization_names(tmp_path: Path) -> None:
    model = tiny("hifigan")
    legacy = models.load(_write_jik876(tmp_path / "legacy", model, 0, legacy=True))
    modern = models.load(_write_jik876(tmp_path / "modern", model, 0, legacy=False))
    assert isinstance(legacy, models.HiFiGANVocoder) and legacy.config == model.config
    wav = sine(22050, 0.1)
    assert torch.equal(legacy.copy_synthesis(wav), modern.copy_synthesis(wav))
    torch.testing.assert_close(legacy.copy_synthesis(wav), model.copy_synthesis(wav), atol=1e-5, rtol=1e-4)


def test_folded_plain_weight_checkpoint_loads(tmp_path: Path) -> None:
    model = tiny("hifigan").fold_weight_norm()
    path = tmp_path / "g_00000010"
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_jik876()))
    torch.save({"generator": {k.removeprefix("head."): v for k, v in model.state_dict().items()}}, path)
    wav = sine(22050, 0.1)
    assert torch.equal(models.load(path).copy_synthesis(wav), model.copy_synthesis(wav))


def test_a_directory_loads_its_highest_g_file(tmp_path: Path) -> None:
    _write_jik876(tmp_path, tiny("hifigan", seed=1), 5000, legacy=True)
    newest = tiny("hifigan", seed=2)
    _write_jik876(tmp_path, newest, 10000, legacy=True)
    mel = torch.randn(1, 80, 3)
    torch.testing.assert_close(models.load(tmp_path)(mel), newest(mel), atol=1e-5, rtol=1e-4)


def test_g_file_without_config_json_is_matched_to_a_preset_by_shapes(tmp_path: Path) -> None:
    model = tiny("hifigan")
    torch.save({"generator": _jik876_state_dict(model, legacy=True)}, tmp_path / "g_00000001")
    loaded = models.load(tmp_path / "g_00000001")
    assert loaded.family == "hifigan" and loaded.config == models.HiFiGANVocoder.preset("tiny")


def test_bigvgan_config_json_is_refused_clearly(tmp_path: Path) -> None:
    path = _write_jik876(tmp_path, tiny("hifigan"), 0, legacy=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation": "snakebeta"}))
    with pytest.raises(ModelLoadError, match="BigVGAN"):
        models.load(path)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(prefix: str, tmp_path: Path) -> None:
    model = tiny("sat")
    torch.save(
        {"generator_state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, tmp_path / "c.pth"
    )
    loaded = models.load(tmp_path / "c.pth", family="sat", config="tiny")
    wav = sine(16000, 0.03)
    torch.testing.assert_close(loaded.reconstruct(wav), model.reconstruct(wav), atol=1e-5, rtol=1e-4)


def test_lightning_checkpoint_with_generator_prefix_and_discriminators_loads(tmp_path: Path) -> None:
    model = tiny("evagan")
    state = {f"generator.{k}": v for k, v in model.state_dict().items()}
    state["discriminators.mpd.convs.0.weight"] = torch.zeros(3)
    torch.save({"state_dict": state, "global_step": 10, "epoch": 0}, tmp_path / "step_000000010.ckpt")
    loaded = models.load(tmp_path / "step_000000010.ckpt")
    assert loaded.family == "evagan" and loaded.config == models.EVAGANVocoder.preset("tiny")
    mel = torch.randn(1, 64, 2)
    torch.testing.assert_close(loaded(mel), model(mel), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_state_dicts_are_recognised_by_their_keys(family: str, tmp_path: Path) -> None:
    torch.save(tiny(family).state_dict(), tmp_path / "plain.pt")
    assert models.load(tmp_path / "plain.pt", config="tiny").family == family


def test_key_mismatch_lists_missing_unexpected_and_mis_shaped_keys(tmp_path: Path) -> None:
    state = tiny("sat").state_dict()
    state.pop("quantizer.vq.layers.0._codebook.embed")
    state["quantizer.extra.weight"] = torch.zeros(1)
    state["quantizer.vq.layers.1._codebook.embed"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError) as info:
        models.load(tmp_path / "bad.pt", family="sat", config="tiny")
    message = str(info.value)
    assert "missing keys (1):\n    quantizer.vq.layers.0._codebook.embed" in message
    assert "unexpected keys (1):\n    quantizer.extra.weight" in message
    assert "quantizer.vq.layers.1._codebook.embed: checkpoint (3, 3) vs model (64, 16)" in message
    assert "expected family: sat" in message
    assert info.value.missing_keys == ["quantizer.vq.layers.0._codebook.embed"]


def test_checkpoint_of_another_config_is_a_mismatch_not_a_crash(tiny_checkpoint) -> None:
    _, path = tiny_checkpoint("hifigan")
    with pytest.raises(ModelLoadError, match="shape mismatches"):
        models.load(path, config="v2")


def test_missing_file_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="nope.pt") as info:
        models.load(tmp_path / "nope.pt")
    assert isinstance(info.value, FileNotFoundError)


def test_truncated_file_raises_a_model_load_error(tiny_checkpoint, tmp_path: Path) -> None:
    _, path = tiny_checkpoint("hifigan")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt, truncated"):
        models.load(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ModelLoadError, match="cut.pt|junk.pt"):
        models.load(junk)


@pytest.mark.parametrize(
    "payload", [[1, 2, 3], torch.zeros(3), {"generator": {"conv_pre.weight": "text"}}, {"epoch": 3}]
)
def test_pickles_of_the_wrong_type_raise_a_model_load_error(payload: object, tmp_path: Path) -> None:
    torch.save(payload, tmp_path / "wrong.pt")
    with pytest.raises(ModelLoadError):
        models.load(tmp_path / "wrong.pt")


class _Arbitrary:
    pass


def test_arbitrary_python_objects_are_not_unpickled_by_default(tmp_path: Path) -> None:
    path = tmp_path / "obj.pt"
    torch.save({"generator": tiny("hifigan").state_dict(), "extra": _Arbitrary()}, path)
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        models.load(path)
    assert models.load(path, trust_pickle=True).family == "hifigan"


def test_unknown_family_lists_the_available_ones(tiny_checkpoint) -> None:
    _, path = tiny_checkpoint("sat")
    with pytest.raises(
        ModelLoadError, match=r"unknown model family 'wavenet'.*'hifigan', 'evagan', 'sat', 'aar'"
    ):
        models.load(path, family="wavenet")


def test_generator_checkpoint_bundles_its_tokenizer(tiny_checkpoint) -> None:
    model, path = tiny_checkpoint("aar")
    raw = torch.load(path, weights_only=True)
    assert raw["kwargs"]["tokenizer"]["latent_dim"] == model.tokenizer.config.latent_dim
    assert any(k.startswith("tokenizer.quantizer.vq.layers.") for k in raw["state_dict"])
    assert models.load(path).tokenizer.config == model.tokenizer.config


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_puts_the_model_on_the_requested_cuda_device(tiny_checkpoint) -> None:
    _, path = tiny_checkpoint("aar")
    model = models.load(path, device="cuda")
    assert model.device.type == "cuda"
    out = model.generate(torch.ones(2, 512, device="cuda"), seed=0)
    assert out.device.type == "cuda" and torch.equal(
        out, model.generate(torch.ones(2, 512, device="cuda"), seed=0)
    )
