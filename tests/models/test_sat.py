"""SAT-style multi-scale tokenizer: schedule, token shapes, bitrate, decode contract."""

from __future__ import annotations

import math

import pytest
import torch

from models.quantizer import MultiScaleResidualQuantizer, scale_schedule
from models.sat import SATConfig, SATTokenizer

from .conftest import sine, tiny

SAT_SCALES = (1, 2, 4, 6, 9, 12, 16, 20, 25, 31, 37, 43, 50, 58, 66, 75)


def test_default_schedule_is_sats_quadratic_16_scales_over_75_frames() -> None:
    config = SATConfig()
    assert config.resolved_scales == SAT_SCALES
    assert sum(SAT_SCALES) == 455
    assert config.hop_length == 320 and config.window_samples == 24000
    assert all(s <= config.window_frames for s in SAT_SCALES)


def test_default_tokenizer_reports_455_tokens_and_4550_bits_per_second() -> None:
    with torch.device("meta"):
        model = SATTokenizer(SATConfig())
    assert model.tokens_per_second == pytest.approx(455.0)
    assert model.bits_per_second == pytest.approx(455.0 * math.log2(1024))
    assert model.sample_rate == 24000 and model.kind == "tokenizer"


def test_linear_schedule_and_explicit_scales_are_accepted() -> None:
    assert scale_schedule(16, 4, "linear") == (1, 6, 11, 16)
    assert SATConfig(window_frames=8, scales=(1, 3, 8)).resolved_scales == (1, 3, 8)
    with pytest.raises(ValueError, match="last scale must equal window_frames"):
        SATConfig(window_frames=8, scales=(1, 3, 7))


def test_encode_returns_one_token_map_per_scale_per_window() -> None:
    model = tiny("sat")
    wav = sine(model.sample_rate, 2.5 * model.window_samples / model.sample_rate)
    tokens = model.encode(wav)
    assert [tuple(t.shape) for t in tokens] == [(2, 3, s) for s in model.scales]
    assert all(t.dtype == torch.long and int(t.max()) < model.config.codebook_size for t in tokens)


def test_decode_inverts_encode_shapes_and_reconstruct_keeps_the_length() -> None:
    model = tiny("sat")
    wav = sine(model.sample_rate, 0.05)
    tokens = model.encode(wav)
    assert model.decode(tokens).shape == (2, len(tokens[0][0]) * model.window_samples)
    assert model.reconstruct(wav).shape == wav.shape
    single = [t[:, 0] for t in tokens]
    torch.testing.assert_close(model.decode(single), model.decode(tokens)[:, : model.window_samples])


def test_decode_rejects_token_maps_of_the_wrong_shape_naming_both() -> None:
    model = tiny("sat")
    tokens = model.encode(sine(model.sample_rate, 0.01))
    tokens[2] = tokens[2][..., :-1]
    with pytest.raises(ValueError, match=r"token map 2 must have shape \(2, 1, 9\), got \(2, 1, 8\)"):
        model.decode(tokens)
    with pytest.raises(ValueError, match="list of 4 token maps"):
        model.decode(tokens[:3])


def test_each_scale_reduces_the_residual_of_a_latent_built_from_the_codebooks() -> None:
    torch.manual_seed(0)
    quantizer = MultiScaleResidualQuantizer(8, (1, 2, 4), 32, phi_count=2, phi_kernel=3)
    for k in range(len(quantizer.scales)):
        torch.nn.init.normal_(quantizer.codebook(k))
    target = [torch.randint(0, 32, (3, s)) for s in quantizer.scales]
    with torch.no_grad():
        z = quantizer.dequantize(target)
        tokens, f_hat = quantizer.quantize(z)
        torch.testing.assert_close(quantizer.dequantize(tokens), f_hat)
        assert (z - f_hat).pow(2).mean() < z.pow(2).mean()
