"""The released SAT / AAR training files (qiuk2/AAR, HF qiuk6/AAR) load through ``models.load``.

No weights are downloaded: the files are rebuilt with the released key layout and random values.
The SEANet halves come from EnCodec's own ``SEANetEncoder`` / ``SEANetDecoder`` (the peer
implementation SAT uses), which also serve as the independent reference for the numerics. The
quantizer and transformer references below follow SAT's ``core_vq.py`` and AAR's
``basic_var.py`` directly on the raw tensors.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models import ModelLoadError
from models.aar import AARConfig, AARGenerator
from models.quantizer import phi_ticks
from models.sat import SATTokenizer

encodec_modules = pytest.importorskip("encodec.modules")

SAT_SCALES = (1, 2, 4, 6, 9, 12, 16, 20, 25, 31, 37, 43, 50, 58, 66, 75)


def _encodec_seanet(config: models.SATConfig, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    kwargs = {
        "dimension": config.dimension,
        "n_filters": config.n_filters,
        "ratios": list(config.ratios),
        "n_residual_layers": config.n_residual_layers,
        "lstm": config.lstm_layers,
        "causal": False,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        return encodec_modules.SEANetEncoder(**kwargs).eval(), encodec_modules.SEANetDecoder(**kwargs).eval()


def _quantizer_state(config: models.SATConfig, seed: int) -> dict[str, torch.Tensor]:
    """SAT's ``quantizer.vq.*`` keys with random values, EMA statistics included."""
    gen = torch.Generator().manual_seed(seed)
    dim, lat, size = config.dimension, config.latent_dim, config.codebook_size
    state: dict[str, torch.Tensor] = {}
    if dim != lat:
        state["quantizer.vq.project_in.weight"] = torch.randn(lat, dim, generator=gen) / math.sqrt(dim)
        state["quantizer.vq.project_in.bias"] = 0.01 * torch.randn(lat, generator=gen)
        state["quantizer.vq.project_out.weight"] = torch.randn(dim, lat, generator=gen) / math.sqrt(lat)
        state["quantizer.vq.project_out.bias"] = 0.01 * torch.randn(dim, generator=gen)
    for j in range(config.phi_count):
        k = config.phi_kernel
        state[f"quantizer.vq.quant_resi.qresi_ls.{j}.weight"] = torch.randn(
            lat, lat, k, generator=gen
        ) / math.sqrt(lat * k)
        state[f"quantizer.vq.quant_resi.qresi_ls.{j}.bias"] = 0.01 * torch.randn(lat, generator=gen)
    for i in range(len(config.resolved_scales)):
        embed = 0.05 * torch.randn(size, lat, generator=gen)
        prefix = f"quantizer.vq.layers.{i}._codebook."
        state[prefix + "inited"] = torch.ones(1)
        state[prefix + "cluster_size"] = torch.rand(size, generator=gen)
        state[prefix + "embed"] = embed
        state[prefix + "embed_avg"] = embed * 3.0
    return state


def _write_sat_file(path: Path, config: models.SATConfig, seed: int = 0):
    encoder, decoder = _encodec_seanet(config, seed)
    generator = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    generator |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    generator |= _quantizer_state(config, seed + 1)
    torch.save({"generator_state_dict": {f"module.{k}": v for k, v in generator.items()}, "epoch": 9}, path)
    return encoder, decoder, generator


def _reference_quantize(state: dict[str, torch.Tensor], e: torch.Tensor, scales, phi_count: int):
    """SAT ``Multiscale_ResidualVectorQuantization.forward`` in eval mode, on raw tensors."""
    x = e.permute(0, 2, 1)
    if "quantizer.vq.project_in.weight" in state:
        x = F.linear(x, state["quantizer.vq.project_in.weight"], state["quantizer.vq.project_in.bias"])
    frames, n_q = x.shape[1], len(scales)
    ticks = (
        np.linspace(1 / 3 / phi_count, 1 - 1 / 3 / phi_count, phi_count)
        if phi_count == 4
        else np.linspace(1 / 2 / phi_count, 1 - 1 / 2 / phi_count, phi_count)
    )
    residual, out, tokens = x, torch.zeros_like(x), []
    for i, size in enumerate(scales):
        inter = residual
        if size != frames:
            inter = F.interpolate(residual.permute(0, 2, 1), size=size, mode="area").permute(0, 2, 1)
        embed = state[f"quantizer.vq.layers.{i}._codebook.embed"]
        flat = inter.reshape(-1, inter.shape[-1])
        dist = -(
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.t() + embed.t().pow(2).sum(0, keepdim=True)
        )
        idx = dist.max(dim=-1).indices.view(inter.shape[:-1])
        q = F.embedding(idx, embed).permute(0, 2, 1)
        if size != frames:
            q = F.interpolate(q, size=frames, mode="linear")
        j = int(np.argmin(np.abs(ticks - i / (n_q - 1))))
        weight = state[f"quantizer.vq.quant_resi.qresi_ls.{j}.weight"]
        bias = state[f"quantizer.vq.quant_resi.qresi_ls.{j}.bias"]
        q = (q * 0.5 + F.conv1d(q, weight, bias, padding=weight.shape[-1] // 2) * 0.5).permute(0, 2, 1)
        residual, out = residual - q, out + q
        tokens.append(idx)
    if "quantizer.vq.project_out.weight" in state:
        out = F.linear(out, state["quantizer.vq.project_out.weight"], state["quantizer.vq.project_out.bias"])
    return tokens, out.permute(0, 2, 1)


@pytest.mark.parametrize("preset", ["sat-d1024-lat64", "sat-d128-lat128"])
def test_released_sat_file_loads_strictly_and_matches_encodec_and_the_sat_quantizer(
    preset: str, tmp_path: Path
) -> None:
    config = SATTokenizer.preset(preset)
    assert (config.sample_rate, config.n_filters, config.ratios, config.lstm_layers) == (
        24000,
        32,
        (8, 5, 4, 2),
        2,
    )
    assert config.resolved_scales == SAT_SCALES and (
        config.phi_count,
        config.phi_kernel,
        config.quant_resi,
    ) == (6, 9, 0.5)
    encoder, decoder, state = _write_sat_file(tmp_path / "checkpoint_step_1000.pth", config)

    model = models.load(tmp_path / "checkpoint_step_1000.pth")  # family and preset from the keys alone

    assert isinstance(model, SATTokenizer) and model.config == config
    gen = torch.Generator().manual_seed(5)
    clip = 0.3 * torch.randn(1, 1, 9611, generator=gen)  # not a whole number of hops
    wav = 0.3 * torch.randn(1, 1, 24000, generator=gen)  # one SAT window
    with torch.inference_mode():
        torch.testing.assert_close(model.encoder(clip), encoder(clip), atol=1e-5, rtol=1e-5)
        tokens = model.encode(wav[:, 0])
        ref_tokens, ref_latent = _reference_quantize(state, encoder(wav), SAT_SCALES, 6)
        assert [tuple(t.shape) for t in tokens] == [(1, 1, s) for s in SAT_SCALES]
        assert all(torch.equal(t[:, 0], r) for t, r in zip(tokens, ref_tokens))
        out = model.decode(tokens)
        assert out.shape == (1, 24000)
        torch.testing.assert_close(out, decoder(ref_latent)[:, 0], atol=1e-5, rtol=1e-4)


def test_phi_ticks_equal_numpy_linspace_including_the_four_conv_case() -> None:
    for count in (1, 2, 4, 6):
        denominator = 3 * count if count == 4 else 2 * count
        expected = np.linspace(1 / denominator, 1 - 1 / denominator, count)
        assert phi_ticks(count) == expected.tolist()


def test_released_layout_mismatch_names_the_keys_and_shapes(tmp_path: Path) -> None:
    _, _, state = _write_sat_file(tmp_path / "sat.pth", SATTokenizer.preset("sat-d128-lat128"))
    state["quantizer.vq.layers.3._codebook.embed"] = torch.zeros(512, 128)
    torch.save({"generator_state_dict": state}, tmp_path / "sat.pth")
    with pytest.raises(
        ModelLoadError, match=r"layers.3._codebook.embed: checkpoint \(512, 128\) vs model \(1024, 128\)"
    ):
        models.load(tmp_path / "sat.pth", config="sat-d128-lat128")


# -- AAR -----------------------------------------------------------------------------------


def _aar_shapes(depth: int, scales, latent_dim: int, vocab: int, cond_dim: int = 512, cos_attn: bool = True):
    """AAR's ``model_state_dict`` keys and shapes (``build_aar``: C = 64·depth, heads = depth)."""
    c, length, heads = 64 * depth, sum(scales), depth
    shapes = {
        "word_embed.weight": (c, latent_dim),
        "word_embed.bias": (c,),
        "class_emb.fc1.weight": (c, cond_dim),
        "class_emb.fc2.weight": (c, c),
        "uncond_embedding": (1, cond_dim),
        "pos_start": (1, scales[0], c),
        "pos_1LC": (1, length, c),
        "lvl_embed.weight": (len(scales), c),
        "lvl_1L": (1, length),
        "attn_bias_for_masking": (1, 1, length, length),
        "head_nm.ada_lin.1.weight": (2 * c, c),
        "head_nm.ada_lin.1.bias": (2 * c,),
        "head.weight": (vocab, c),
        "head.bias": (vocab,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {
            b + "attn.q_bias": (c,),
            b + "attn.v_bias": (c,),
            b + "attn.zero_k_bias": (c,),
            b + "attn.mat_qkv.weight": (3 * c, c),
            b + "attn.proj.weight": (c, c),
            b + "attn.proj.bias": (c,),
            b + "ffn.fc1.weight": (4 * c, c),
            b + "ffn.fc1.bias": (4 * c,),
            b + "ffn.fc2.weight": (c, 4 * c),
            b + "ffn.fc2.bias": (c,),
            b + "ada_lin.1.weight": (6 * c, c),
            b + "ada_lin.1.bias": (6 * c,),
        }
        if cos_attn:
            shapes[b + "attn.scale_mul_1H11"] = (1, heads, 1, 1)
    return shapes


def _aar_state(depth: int, scales, latent_dim: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    levels = torch.cat([torch.full((s,), k) for k, s in enumerate(scales)])
    state = {}
    for key, shape in _aar_shapes(depth, scales, latent_dim, vocab).items():
        state[key] = 0.05 * torch.randn(shape, generator=gen)
    state["lvl_1L"] = levels.view(1, -1)
    state["attn_bias_for_masking"] = torch.where(levels.view(-1, 1) >= levels.view(1, -1), 0.0, -torch.inf)[
        None, None
    ]
    for i in range(depth):
        state[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(64 * depth)
        state[f"blocks.{i}.attn.scale_mul_1H11"] = torch.full(
            (1, depth, 1, 1), 4.0
        ).log() + 0.1 * torch.randn(1, depth, 1, 1, generator=gen)
    return state


def _reference_logits(
    state: dict[str, torch.Tensor], depth: int, cond: torch.Tensor, inputs: torch.Tensor
) -> torch.Tensor:
    """AAR.forward (eval, no fused kernels) from raw tensors: cond (B, 512), inputs (B, L - s0, C)."""
    c, heads = 64 * depth, depth
    hidden = F.gelu(F.linear(cond, state["class_emb.fc1.weight"]), approximate="tanh")
    cond_bd = F.linear(hidden, state["class_emb.fc2.weight"])
    first = state["pos_start"].shape[1]
    x = torch.cat([cond_bd[:, None].expand(-1, first, -1) + state["pos_start"], inputs], dim=1)
    x = x + F.embedding(state["lvl_1L"], state["lvl_embed.weight"]) + state["pos_1LC"]
    batch, length, _ = x.shape
    mask = state["attn_bias_for_masking"]
    for i in range(depth):
        p = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        ada = F.linear(F.silu(cond_bd), p["ada_lin.1.weight"], p["ada_lin.1.bias"]).view(-1, 1, 6, c)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)
        h = F.layer_norm(x, (c,), eps=1e-6) * (scale1 + 1) + shift1
        bias = torch.cat([p["attn.q_bias"], p["attn.zero_k_bias"], p["attn.v_bias"]])
        q, k, v = (
            F.linear(h, p["attn.mat_qkv.weight"], bias)
            .view(batch, length, 3, heads, c // heads)
            .permute(2, 0, 3, 1, 4)
        )
        q = F.normalize(q, dim=-1) * p["attn.scale_mul_1H11"].clamp_max(math.log(100)).exp()
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) + mask).softmax(dim=-1) @ v
        x = (
            x
            + F.linear(
                attn.transpose(1, 2).reshape(batch, length, c), p["attn.proj.weight"], p["attn.proj.bias"]
            )
            * gamma1
        )
        h = F.layer_norm(x, (c,), eps=1e-6) * (scale2 + 1) + shift2
        hidden = F.gelu(F.linear(h, p["ffn.fc1.weight"], p["ffn.fc1.bias"]), approximate="tanh")
        x = x + F.linear(hidden, p["ffn.fc2.weight"], p["ffn.fc2.bias"]) * gamma2
    ada = F.linear(F.silu(cond_bd), state["head_nm.ada_lin.1.weight"], state["head_nm.ada_lin.1.bias"])
    scale, shift = ada.view(-1, 1, 2, c).unbind(2)
    return F.linear(
        F.layer_norm(x, (c,), eps=1e-6) * (scale + 1) + shift, state["head.weight"], state["head.bias"]
    )


@pytest.mark.parametrize(("preset", "cos_attn"), [("aar-d16", True), ("aar-d16-dotattn", False)])
def test_aar_d16_presets_have_exactly_the_released_keys_and_shapes(preset: str, cos_attn: bool) -> None:
    with torch.device("meta"):
        model = AARGenerator(AARGenerator.preset(preset))
    assert model.config.tokenizer == SATTokenizer.preset("sat-d128-lat128")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("tokenizer.")}
    released = _aar_shapes(16, SAT_SCALES, 128, 1024, cos_attn=cos_attn)
    assert AARGenerator.matches_state_dict(set(released))
    assert {k: released[k] for k in AARGenerator.remap_state_dict(dict.fromkeys(released))} == ours


def test_released_aar_file_loads_with_its_sat_file_and_generates_reproducibly(tmp_path: Path) -> None:
    tiny_sat = SATTokenizer.preset("tiny")
    sat_path = tmp_path / "SAT_tiny.pth"
    _write_sat_file(sat_path, tiny_sat)
    depth = 2
    state = _aar_state(depth, tiny_sat.resolved_scales, tiny_sat.latent_dim, tiny_sat.codebook_size)
    aar_path = tmp_path / "checkpoint_step_1000.pth"
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3, "step": 1000}, aar_path
    )
    reduced = AARConfig(depth=depth)  # build_aar(depth=2): C = 128, 2 heads

    explicit = models.load(aar_path, config=reduced, tokenizer=sat_path)
    found = models.load(aar_path, config=reduced)  # the single SAT* file next to it

    assert isinstance(explicit, AARGenerator) and explicit.config == AARConfig(
        depth=depth, tokenizer=tiny_sat
    )
    assert torch.equal(explicit.head.weight, state["head.weight"])
    assert torch.equal(explicit.tokenizer.rvq.codebook(2), models.load(sat_path).rvq.codebook(2))
    cond = torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    tokens = [torch.randint(0, tiny_sat.codebook_size, (2, s), generator=gen) for s in explicit.scales]
    with torch.inference_mode():
        reference = _reference_logits(state, depth, cond, explicit.teacher_forcing_inputs(tokens))
        torch.testing.assert_close(explicit(cond, tokens), reference, atol=1e-5, rtol=1e-4)
        first = explicit.generate(cond, seed=11, top_k=16, top_p=0.95)
    assert first.shape == (2, explicit.window_samples)
    assert torch.equal(first, found.generate(cond, seed=11, top_k=16, top_p=0.95))


def test_transformer_only_aar_file_without_a_sat_file_says_how_to_pair_it(tmp_path: Path) -> None:
    tiny_sat = SATTokenizer.preset("tiny")
    state = _aar_state(2, tiny_sat.resolved_scales, tiny_sat.latent_dim, tiny_sat.codebook_size)
    torch.save({"model_state_dict": state}, tmp_path / "AAR_d2.pth")
    with pytest.raises(
        ModelLoadError, match=r"holds only the transformer.*tokenizer='path/to/SAT_d128_lat128.pth'"
    ) as info:
        models.load(tmp_path / "AAR_d2.pth", config=AARConfig(depth=2))
    assert info.value.family == "aar"
