import math

import numpy as np
import pytest

from metrics.functional.clap_score import clap_score
from metrics.functional.classifier import inception_score, kl_divergence


def test_inception_score_of_uniform_predictions_is_one():
    r = inception_score(np.zeros((50, 10)), n_splits=5)
    assert r.value == pytest.approx(1.0, abs=1e-12)
    assert r.higher_is_better is True


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    probs = np.eye(8)[np.arange(160) % 8]
    r = inception_score(probs, from_logits=False, n_splits=1)
    assert r.value == pytest.approx(8.0, rel=1e-9)


def test_inception_score_with_dict_input_ignores_insertion_order(rng):
    logits = {f"id{i}": rng.normal(size=5) * 3 for i in range(40)}
    reversed_logits = dict(reversed(list(logits.items())))
    assert inception_score(logits, n_splits=4).value == inception_score(reversed_logits, n_splits=4).value


def test_kl_softmax_matches_hand_computation_in_both_directions():
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.5, 0.25, 0.25])
    ref, gen = {"a": p}, {"a": q}
    ref_gen = kl_divergence(ref, gen, from_logits=False, eps=0.0)
    gen_ref = kl_divergence(ref, gen, from_logits=False, eps=0.0, direction="gen||ref")
    assert ref_gen.value == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)
    assert gen_ref.value == pytest.approx(float(np.sum(q * np.log(q / p))), rel=1e-12)
    assert ref_gen.name == "kl/softmax-ref-gen" and gen_ref.name == "kl/softmax-gen-ref"


def test_kl_pairs_by_id_not_by_order_and_reports_unpaired(rng):
    ref = {k: rng.normal(size=6) for k in ("a", "b", "c")}
    gen = {k: rng.normal(size=6) for k in ("c", "b", "x")}
    r = kl_divergence(ref, gen)
    assert set(r.per_item) == {"b", "c"}
    single = kl_divergence({"b": ref["b"]}, {"b": gen["b"]})
    assert r.per_item["b"] == pytest.approx(single.value)
    assert r.details["unpaired_ref"] == ["a"] and r.details["unpaired_gen"] == ["x"]
    assert any("a" in w for w in r.warnings)
    with pytest.raises(ValueError, match="no item id"):
        kl_divergence({"a": [0.0]}, {"b": [0.0]})


def test_kl_sigmoid_variants():
    logit = np.array([2.0, -1.0])
    p = 1 / (1 + np.exp(-logit))
    q = 1 / (1 + np.exp(-np.array([0.0, 0.0])))
    r = kl_divergence({"a": logit}, {"a": [0.0, 0.0]}, activation="sigmoid", eps=0.0)
    assert r.value == pytest.approx(float(np.sum(p * np.log(p / q))))
    b = kl_divergence({"a": logit}, {"a": [0.0, 0.0]}, activation="sigmoid-bernoulli", eps=0.0)
    expected = float(np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))))
    assert b.value == pytest.approx(expected)
    assert b.name == "kl/sigmoid-bernoulli-ref-gen"


def test_clap_score_is_mean_cosine_paired_by_id():
    text = {"a": [1.0, 0.0], "b": [0.0, 2.0], "t-only": [1.0, 1.0]}
    audio = {"b": [0.0, 5.0], "a": [1.0, 1.0], "audio-only": [1.0, 0.0]}
    r = clap_score(text, audio)
    assert r.per_item == pytest.approx({"a": 1 / math.sqrt(2), "b": 1.0})
    assert r.value == pytest.approx((1 / math.sqrt(2) + 1.0) / 2)
    assert r.details["unpaired_text"] == ["t-only"] and r.details["unpaired_audio"] == ["audio-only"]
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        clap_score({"a": [1.0, 0.0]}, {"a": [1.0, 0.0, 0.0]})
