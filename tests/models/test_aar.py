"""AAR-style next-scale generator: size, shapes, seeding, guidance, masking and sampling."""

from __future__ import annotations

import inspect

import pytest
import torch

from models.aar import AARConfig, AARGenerator
from models.sampling import filter_logits, sample_tokens

from .conftest import tiny


def test_d16_transformer_has_the_published_307_6m_parameters() -> None:
    with torch.device("meta"):
        model = AARGenerator(AARConfig())
    assert round(model.transformer_parameters() / 1e6, 1) == 307.6
    assert model.seq_len == 455


def test_generate_returns_one_window_at_the_tokenizer_rate_by_default() -> None:
    model = tiny("aar")
    out = model.generate(torch.randn(3, 512), seed=0, top_k=10, top_p=0.9)
    assert (model.kind, model.family, model.sample_rate) == ("generator", "aar", 16000)
    assert out.shape == (3, model.window_samples)


@pytest.mark.parametrize(("kwargs", "samples"), [({"duration_s": 0.07}, 1120), ({"num_frames": 40}, 40 * 32)])
def test_generate_honours_duration_and_frame_counts(kwargs: dict, samples: int) -> None:
    assert tiny("aar").generate(torch.randn(1, 512), seed=0, **kwargs).shape == (1, samples)


def test_same_seed_gives_identical_audio_and_different_seeds_differ() -> None:
    model = tiny("aar")
    cond = torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    first = model.generate(cond, seed=7, top_k=20)
    assert torch.equal(first, model.generate(cond, seed=7, top_k=20))
    assert not torch.equal(first, model.generate(cond, seed=8, top_k=20))


def test_generation_is_decoding_the_sampled_tokens_through_the_bundled_tokenizer() -> None:
    model = tiny("aar")
    cond = torch.randn(2, 512)
    tokens = model.generate_tokens(cond, seed=3, cfg_scale=2.0)
    assert [tuple(t.shape) for t in tokens] == [(2, 1, s) for s in model.scales]
    torch.testing.assert_close(model.generate(cond, seed=3, cfg_scale=2.0), model.tokenizer.decode(tokens))


def test_class_conditional_generator_takes_class_ids() -> None:
    model = tiny("aar", "tiny-class")
    out = model.generate(torch.tensor([0, 9]), seed=0)
    assert out.shape == (2, model.window_samples)
    with pytest.raises(ValueError, match=r"LongTensor of shape \(B,\).*\(2, 512\)"):
        model.generate(torch.randn(2, 512), seed=0)


def test_condition_of_the_wrong_size_is_rejected_naming_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, 512\).*\(2, 256\)"):
        tiny("aar").generate(torch.randn(2, 256), seed=0)


def test_kv_cached_greedy_decoding_agrees_with_the_block_causal_teacher_forced_pass() -> None:
    model = tiny("aar")
    cond = torch.randn(2, 512)
    tokens = model.generate_tokens(cond, seed=0, cfg_scale=0.0, top_k=1)
    with torch.no_grad():
        logits = model(cond, [t[:, 0] for t in tokens])
    assert torch.equal(logits.argmax(-1), torch.cat([t[:, 0] for t in tokens], dim=1))


def test_later_scales_cannot_influence_earlier_logits() -> None:
    model = tiny("aar")
    cond = torch.randn(1, 512)
    tokens = [t[:, 0] for t in model.generate_tokens(cond, seed=0)]
    changed = [t.clone() for t in tokens]
    changed[-2] = (changed[-2] + 1) % model.config.tokenizer.codebook_size
    with torch.no_grad():
        a, b = model(cond, tokens), model(cond, changed)
    before_last = sum(model.scales[:-1])
    torch.testing.assert_close(a[:, :before_last], b[:, :before_last])
    assert not torch.allclose(a[:, before_last:], b[:, before_last:])


def test_guidance_ramps_linearly_so_the_first_scale_ignores_cfg() -> None:
    model = tiny("aar")
    cond = torch.randn(2, 512)
    weak = model.generate_tokens(cond, seed=5, cfg_scale=0.0)
    strong = model.generate_tokens(cond, seed=5, cfg_scale=50.0)
    assert torch.equal(weak[0], strong[0])
    assert any(not torch.equal(w, s) for w, s in zip(weak[1:], strong[1:]))


def test_top_k_and_top_p_keep_only_the_most_likely_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    draws = sample_tokens(logits.expand(1, 500, 4), generator=torch.Generator().manual_seed(0), top_k=2)
    assert set(draws.unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(logits[None], generator=torch.Generator(), temperature=0.0)


def test_sampling_defaults_are_the_official_samplers() -> None:
    """qiuk2/AAR's inference CLI samples with cfg 4.0, top-k 200, top-p 0.95 (reference/seed_models.md §7)."""
    for method in (AARGenerator.generate, AARGenerator.generate_tokens):
        defaults = {k: p.default for k, p in inspect.signature(method).parameters.items()}
        assert (defaults["cfg_scale"], defaults["top_k"], defaults["top_p"]) == (4.0, 200, 0.95)
    model = tiny("aar")
    cond = torch.randn(2, 512, generator=torch.Generator().manual_seed(4))
    implicit = model.generate_tokens(cond, seed=9)
    explicit = model.generate_tokens(cond, seed=9, cfg_scale=4.0, top_k=200, top_p=0.95)
    assert all(torch.equal(a, b) for a, b in zip(implicit, explicit))
