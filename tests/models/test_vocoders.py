"""HiFi-GAN and EVA-GAN-style vocoders: sizes, shapes, sample rates, copy-synthesis contract."""

from __future__ import annotations

import pytest
import torch

from models.evagan import EVAGANConfig, EVAGANVocoder
from models.hifigan import HiFiGANConfig, HiFiGANVocoder
from models.mel import MelConfig

from .conftest import sine, tiny


def _folded_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.fold_weight_norm().parameters())


@pytest.mark.parametrize(("preset", "millions"), [("v1", 13.93), ("v2", 0.93), ("v3", 1.46)])
def test_hifigan_parameter_counts_match_the_published_ones(preset: str, millions: float) -> None:
    model = HiFiGANVocoder.from_config(HiFiGANVocoder.preset(preset))
    assert round(_folded_params(model) / 1e6, 2) == millions


def test_hifigan_presets_follow_the_reference_configs() -> None:
    v1, v2, v3 = (HiFiGANVocoder.preset(n) for n in ("v1", "v2", "v3"))
    assert (v1.upsample_rates, v1.upsample_kernel_sizes, v1.upsample_initial_channel) == (
        (8, 8, 2, 2),
        (16, 16, 4, 4),
        512,
    )
    assert v2.upsample_initial_channel == 128 and v2.resblock == "1"
    assert (v3.resblock, v3.upsample_rates, v3.upsample_kernel_sizes) == ("2", (8, 8, 4), (16, 16, 8))
    assert v3.resblock_dilation_sizes == ((1, 2), (2, 6), (3, 12))
    assert v1.mel == MelConfig(
        sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=80, f_max=8000.0
    )


def test_evagan_base_matches_the_firefly_gan_base_size() -> None:
    model = EVAGANVocoder.from_config(EVAGANVocoder.preset("base")).fold_weight_norm()
    assert round(sum(p.numel() for p in model.backbone.parameters()) / 1e6, 2) == 19.42
    assert round(sum(p.numel() for p in model.head.parameters()) / 1e6, 2) == 17.08


def test_evagan_front_end_is_44k_with_hop_512_and_configurable_mels() -> None:
    config = EVAGANConfig(mel=MelConfig(**{**EVAGANVocoder.preset("base").mel.__dict__, "n_mels": 100}))
    assert (config.mel.sample_rate, config.mel.n_fft, config.mel.hop_length, config.mel.n_mels) == (
        44100,
        2048,
        512,
        100,
    )
    assert EVAGANVocoder.preset("base-160").mel.n_mels == 160
    assert config.mel.padding == "firefly" and config.mel.magnitude_eps == 1e-6


@pytest.mark.parametrize(("family", "rate", "hop"), [("hifigan", 22050, 256), ("evagan", 44100, 512)])
def test_vocoders_turn_f_frames_into_f_times_hop_samples(family: str, rate: int, hop: int) -> None:
    model = tiny(family)
    assert (model.kind, model.family, model.sample_rate, model.hop_length) == ("vocoder", family, rate, hop)
    out = model(torch.randn(3, model.n_mels, 5))
    assert out.shape == (3, 5 * hop)
    assert out.abs().max() <= 1.0


def test_hifigan_v3_with_type_2_resblocks_runs() -> None:
    model = HiFiGANVocoder.from_config(HiFiGANVocoder.preset("v3")).eval()
    assert model(torch.randn(1, 80, 2)).shape == (1, 512)


@pytest.mark.parametrize("family", ["hifigan", "evagan"])
@pytest.mark.parametrize("seconds", [0.2, 0.2371])
def test_copy_synthesis_returns_exactly_the_input_length(family: str, seconds: float) -> None:
    model = tiny(family)
    wav = sine(model.sample_rate, seconds)
    out = model.copy_synthesis(wav)
    assert out.shape == wav.shape
    assert model.mel(wav).shape == (2, model.n_mels, wav.shape[1] // model.hop_length)


def test_vocoder_rejects_wrong_mel_bands_naming_both_shapes() -> None:
    model = tiny("hifigan")
    with pytest.raises(ValueError, match=r"\(B, 80, F\).*\(1, 64, 5\)"):
        model(torch.zeros(1, 64, 5))


def test_inference_runs_without_building_an_autograd_graph() -> None:
    model = tiny("hifigan")
    out = model(torch.randn(1, 80, 2, requires_grad=True))
    assert not out.requires_grad
    assert model.train_forward(torch.randn(1, 80, 2)).requires_grad


def test_config_validation_names_the_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="must equal the mel hop_length 256"):
        HiFiGANConfig(upsample_rates=(8, 8, 2), upsample_kernel_sizes=(16, 16, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["hifigan", "evagan"])
def test_vocoders_give_the_same_audio_on_cuda_as_on_cpu(family: str) -> None:
    model = tiny(family).fold_weight_norm()
    wav = sine(model.sample_rate, 0.2)
    expected = model.copy_synthesis(wav)
    got = model.to("cuda").copy_synthesis(wav.to("cuda")).cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)
