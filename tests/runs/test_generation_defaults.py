"""Generation defaults reproduce the official AAR sampler, and the sampling settings key the outputs."""

from evalsite.runs.params import GENERATION_DEFAULTS, generation_params
from models import aar


def test_the_default_sampling_settings_are_the_official_aar_samplers():
    """qiuk2/AAR's inference CLI: cfg 4.0, top-k 200, top-p 0.95 (reference/seed_models.md §7)."""
    full, _ = generation_params({})
    assert (full["cfg_scale"], full["top_k"], full["top_p"], full["temperature"]) == (4.0, 200, 0.95, 1.0)
    # The web tier restates the model's constants (it does not import torch): the two must agree.
    assert (aar.OFFICIAL_CFG_SCALE, aar.OFFICIAL_TOP_K, aar.OFFICIAL_TOP_P) == (
        GENERATION_DEFAULTS["cfg_scale"],
        GENERATION_DEFAULTS["top_k"],
        GENERATION_DEFAULTS["top_p"],
    )


def test_every_sampling_setting_changes_the_params_hash_and_the_defaults_equal_their_explicit_values():
    _, default_hash = generation_params({})
    assert generation_params({"cfg_scale": 4.0, "top_k": 200, "top_p": 0.95})[1] == default_hash
    changed = [
        {"cfg_scale": 3.0},
        {"top_k": None},
        {"top_k": 900},
        {"top_p": None},
        {"temperature": 0.9},
    ]
    hashes = {generation_params(p)[1] for p in changed}
    assert len(hashes) == len(changed) and default_hash not in hashes
