import json
import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from evalsite.analysis import stats
from evalsite.analysis.stats import (
    ab_preference,
    crossed_mixed_model,
    holm_adjust,
    mixed_effects,
    pairwise_tests,
    system_scores,
)


def crossed_ratings(
    rng, *, listeners=20, items=12, effects=None, listener_sd=0.5, item_sd=0.3, noise_sd=0.5, mean=3.0
):
    """Every listener rates every item for every system: mean + effect + listener + item + noise."""
    effects = effects or {"a": 0.0}
    le, ie = rng.normal(0, listener_sd, listeners), rng.normal(0, item_sd, items)
    rows = [
        (f"l{l:02d}", f"i{i:02d}", s, mean + e + le[l] + ie[i] + rng.normal(0, noise_sd))
        for l in range(listeners)
        for i in range(items)
        for s, e in effects.items()
    ]
    return pd.DataFrame(rows, columns=["listener", "item", "system", "score"])


# --- system_scores -----------------------------------------------------------------------------------------


def test_t_interval_matches_scipy_over_all_votes():
    r = crossed_ratings(np.random.default_rng(1), effects={"a": 0.0, "b": 1.0})
    out = system_scores(r, kind="mos", n_boot=0).set_index("system")
    for s in ("a", "b"):
        x = r.loc[r["system"] == s, "score"]
        lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
        assert out.loc[s, "n"] == len(x) == 240
        assert out.loc[s, "listeners"] == 20 and out.loc[s, "items"] == 12
        assert out.loc[s, "mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert out.loc[s, "sd"] == pytest.approx(x.std(ddof=1), abs=1e-12)
        assert (out.loc[s, "ci_low"], out.loc[s, "ci_high"]) == pytest.approx((lo, hi), abs=1e-12)


def test_mushra_rows_carry_median_and_quartiles_and_the_role():
    r = crossed_ratings(np.random.default_rng(2), mean=60, noise_sd=10)
    r["role"] = "system"
    out = system_scores(r, kind="mushra", n_boot=0).iloc[0]
    q1, med, q3 = np.percentile(r["score"], [25, 50, 75])
    assert (out["q1"], out["median"], out["q3"], out["iqr"]) == pytest.approx(
        (q1, med, q3, q3 - q1), abs=1e-12
    )
    assert out["role"] == "system"
    assert "median" not in system_scores(r, kind="mos", n_boot=0)


def test_cluster_bootstrap_equals_explicit_resampling_of_listeners_and_items():
    rng = np.random.default_rng(3)
    r = crossed_ratings(rng, listeners=5, items=4, effects={"a": 0.0, "b": 0.5}).sample(
        frac=0.8, random_state=1
    )
    n_boot, seed = 50, 11
    draws = np.random.default_rng(seed)
    listeners, items = sorted(r["listener"].unique()), sorted(r["item"].unique())
    dl = draws.integers(0, len(listeners), size=(n_boot, len(listeners)))
    di = draws.integers(0, len(items), size=(n_boot, len(items)))
    explicit = {"a": [], "b": []}
    for b in range(n_boot):
        resample = pd.concat(
            [r.loc[(r["listener"] == listeners[l]) & (r["item"] == items[i])] for l in dl[b] for i in di[b]]
        )
        for s in explicit:
            x = resample.loc[resample["system"] == s, "score"]
            explicit[s].append(x.mean() if len(x) else np.nan)
    out = system_scores(r, kind="mos", n_boot=n_boot, seed=seed).set_index("system")
    for s, means in explicit.items():
        lo, hi = np.nanpercentile(means, [2.5, 97.5])
        assert (out.loc[s, "boot_low"], out.loc[s, "boot_high"]) == pytest.approx((lo, hi), abs=1e-12)


def test_bootstrap_is_deterministic_for_a_seed():
    r = crossed_ratings(np.random.default_rng(4))
    a = system_scores(r, kind="mos", n_boot=300, seed=7)
    b = system_scores(r, kind="mos", n_boot=300, seed=7)
    c = system_scores(r, kind="mos", n_boot=300, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert a["boot_low"].iloc[0] != c["boot_low"].iloc[0]


def test_bootstrap_interval_covers_the_true_mean_while_the_vote_t_interval_does_not():
    rng = np.random.default_rng(5)
    reps, boot_hits, t_hits = 120, 0, 0
    for _ in range(reps):
        r = crossed_ratings(rng, listeners=20, items=12, listener_sd=0.6, item_sd=0.5, noise_sd=0.6)
        row = system_scores(r, kind="mos", n_boot=300, seed=int(rng.integers(1 << 30))).iloc[0]
        boot_hits += row["boot_low"] <= 3.0 <= row["boot_high"]
        t_hits += row["ci_low"] <= 3.0 <= row["ci_high"]
    # 95 % nominal; 120 replications give a binomial SD of about 2 points. The pigeonhole bootstrap is
    # known to be mildly conservative; votes treated as independent are far too narrow here.
    assert 0.87 <= boot_hits / reps <= 1.0
    assert t_hits / reps < 0.6


def test_bootstrap_interval_widens_when_listeners_disagree():
    agree = crossed_ratings(np.random.default_rng(6), listener_sd=0.05)
    disagree = crossed_ratings(np.random.default_rng(6), listener_sd=1.0)
    w = [
        float((s := system_scores(r, kind="mos", n_boot=500)).loc[0, "boot_high"] - s.loc[0, "boot_low"])
        for r in (agree, disagree)
    ]
    assert w[1] > 2 * w[0]


def test_the_bootstrap_handles_50000_ratings_of_ten_systems():
    # Its speed is measured in benchmarks/analysis_pages.py, not asserted here.
    r = crossed_ratings(
        np.random.default_rng(7), listeners=100, items=50, effects={f"s{k}": 0.1 * k for k in range(10)}
    )
    assert len(r) == 50_000
    out = system_scores(r, kind="mos", n_boot=2000)
    assert (
        out["boot_low"].notna().all()
        and (out["boot_low"] < out["mean"]).all()
        and (out["mean"] < out["boot_high"]).all()
    )


def test_cmos_scores_are_reported_per_system_and_comparison():
    r = crossed_ratings(np.random.default_rng(8), effects={"x": 0.0}, mean=0.5)
    r = pd.concat([r.assign(comparison="ref"), r.assign(comparison="base", score=r["score"] - 1)])
    out = system_scores(r, kind="cmos", n_boot=100)
    assert list(zip(out["system"], out["comparison"])) == [("x", "base"), ("x", "ref")]
    assert out["mean"].to_numpy() == pytest.approx(
        [r["score"].mean() - 0.5, r["score"].mean() + 0.5], abs=1e-9
    )


def test_unknown_kind_and_missing_columns_are_refused_with_names():
    with pytest.raises(ValueError, match="kind must be one of"):
        system_scores(pd.DataFrame(columns=["listener", "item", "system", "score"]), kind="acr")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['score'\]"):
        system_scores(pd.DataFrame(columns=["listener", "item", "system"]), kind="mos")


# --- ab_preference -----------------------------------------------------------------------------------------


def ab_frame(wins, losses, ties, a="x", b="y"):
    """AB answers presented half as (a, b) and half as (b, a)."""
    labels = [a] * wins + [b] * losses + [None] * ties
    return pd.DataFrame(
        {
            "listener": range(len(labels)),
            "item": "i",
            "a": [a if k % 2 else b for k in range(len(labels))],
            "b": [b if k % 2 else a for k in range(len(labels))],
            "preferred": labels,
        }
    )


@pytest.mark.parametrize(
    ("wins", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombe_1998_table_1(wins, n, low, high):
    row = ab_preference(ab_frame(wins, n - wins, ties=5)).iloc[0]
    assert row["decided"] == n and row["ties"] == 5
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=5e-5)
    z, p = sps.norm.ppf(0.975), wins / n  # Wilson (1927) score interval, closed form
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        (max(0.0, centre - half), centre + half), abs=1e-12
    )


def test_sign_test_drops_ties_and_pairs_are_put_in_canonical_order():
    ab = pd.concat([ab_frame(14, 4, 9, a="vocos", b="hifigan"), ab_frame(3, 3, 0, a="bigvgan", b="vocos")])
    out = ab_preference(ab).set_index(["system_a", "system_b"])
    row = out.loc[("hifigan", "vocos")]
    assert (row["wins"], row["losses"], row["ties"], row["n"]) == (4, 14, 9, 27)
    assert row["preference_rate"] == pytest.approx(4 / 18)
    assert row["p_sign"] == pytest.approx(sps.binomtest(4, 18, 0.5).pvalue, abs=1e-15)
    assert out.loc[("bigvgan", "vocos"), "p_sign"] == pytest.approx(1.0)
    assert list(out["p_holm"]) == pytest.approx(list(holm_adjust(out["p_sign"])))


def test_all_tie_pairs_get_nan_and_a_note():
    row = ab_preference(ab_frame(0, 0, 4)).iloc[0]
    assert math.isnan(row["preference_rate"]) and math.isnan(row["p_sign"]) and "ties" in row["note"]


def test_a_preferred_label_that_is_neither_system_is_refused():
    ab = ab_frame(2, 2, 0)
    ab.loc[0, "preferred"] = "z"
    with pytest.raises(ValueError, match="must equal 'a' or 'b'"):
        ab_preference(ab)


# --- pairwise_tests ----------------------------------------------------------------------------------------


def test_holm_adjust_reproduces_the_textbook_example():
    # Holm (1979) as worked on Wikipedia's "Holm–Bonferroni method": p = .01, .04, .03, .005 at alpha .05
    # rejects H1 and H4; the adjusted p-values are 4·.005, 3·.01, max(2·.03, ·), max(1·.04, .06).
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005, np.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    assert math.isnan(adjusted[4])
    assert list(adjusted[:4] < 0.05) == [True, False, False, True]


def test_pairwise_wilcoxon_matches_scipy_on_listener_item_pairs():
    rng = np.random.default_rng(9)
    r = crossed_ratings(rng, listeners=15, items=6, effects={"a": 0.0, "b": 0.3, "c": 0.31})
    r["score"] = r["score"].round()  # 5-point-like: ties and zero differences
    r = pd.concat(
        [r, r.sample(30, random_state=2).assign(score=lambda d: d["score"] + 1)]
    )  # repeats get averaged
    out = pairwise_tests(r, kind="mos").set_index(["system_a", "system_b"])
    wide = r.pivot_table(index=["listener", "item"], columns="system", values="score", aggfunc="mean")
    raw = []
    for a, b in [("a", "b"), ("a", "c"), ("b", "c")]:
        d = (wide[a] - wide[b]).dropna()
        ref = sps.wilcoxon(d, zero_method="pratt")
        row = out.loc[(a, b)]
        assert row["n_pairs"] == len(d) == 90 and row["n_zero"] == int((d == 0).sum()) > 0
        assert row["mean_diff"] == pytest.approx(d.mean())
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-12)
        assert row["method"] == "normal approximation with tie and zero correction"
        raw.append(ref.pvalue)
    assert list(out["p_holm"]) == pytest.approx(list(multipletests(raw, method="holm")[1]), rel=1e-12)
    assert list(out["significant"]) == list(out["p_holm"] < 0.05)


def test_a_pair_with_too_few_pairs_gets_nan_and_a_note_not_an_exception():
    r = crossed_ratings(np.random.default_rng(10), listeners=5, items=1, effects={"a": 0.0, "b": 1.0})
    r = pd.concat([r, crossed_ratings(np.random.default_rng(11), listeners=3, items=1, effects={"c": 0.0})])
    out = pairwise_tests(r, kind="mos").set_index(["system_a", "system_b"])
    assert out.loc[("a", "b"), "n_pairs"] == 5 and math.isnan(out.loc[("a", "b"), "p"])
    assert "at least 6" in out.loc[("a", "b"), "note"]
    assert out.loc[("a", "c"), "n_pairs"] == 3
    assert not out["significant"].any()


def test_identical_systems_get_nan_with_a_note_about_zero_differences():
    r = crossed_ratings(np.random.default_rng(12), effects={"a": 0.0})
    out = pairwise_tests(pd.concat([r, r.assign(system="b")]), kind="mos").iloc[0]
    assert math.isnan(out["p"]) and "zero" in out["note"]


def test_cmos_tests_each_system_against_zero():
    r = crossed_ratings(np.random.default_rng(13), effects={"x": 0.0}, mean=0.8, listener_sd=0.2, item_sd=0.1)
    r["comparison"] = "ref"
    out = pairwise_tests(r, kind="cmos").iloc[0]
    d = r.groupby(["listener", "item"])["score"].mean()
    assert (out["system_a"], out["system_b"]) == ("x", "ref")
    assert out["p"] == pytest.approx(sps.wilcoxon(d, zero_method="pratt").pvalue, rel=1e-12)
    assert out["significant"]


# --- mixed_effects -----------------------------------------------------------------------------------------

MIXED_FITS = [mixed_effects, crossed_mixed_model]


@pytest.mark.parametrize("fit", MIXED_FITS)
def test_mixed_model_recovers_planted_system_effects_and_variance_components(fit):
    planted = {"base": 0.0, "better": 0.5, "worse": -0.3}
    r = crossed_ratings(
        np.random.default_rng(14),
        listeners=40,
        items=25,
        effects=planted,
        listener_sd=0.6,
        item_sd=0.4,
        noise_sd=0.5,
    )
    res = fit(r, baseline="base")
    assert res["ok"] and res["converged"] and res["reason"] is None
    effects = {e["system"]: e for e in res["effects"]}
    assert set(effects) == {"better", "worse"}
    for s in ("better", "worse"):
        e = effects[s]
        assert e["estimate"] == pytest.approx(planted[s], abs=4 * e["se"])
        assert e["ci_low"] < planted[s] < e["ci_high"] and e["p"] < 1e-6
    vc = res["variance_components"]
    assert vc["residual"] == pytest.approx(0.25, rel=0.1)
    assert vc["listener"] == pytest.approx(0.36, rel=0.5) and vc["item"] == pytest.approx(0.16, rel=0.6)
    json.dumps(res)  # plain floats, ready for JSON


@pytest.mark.parametrize("fit", MIXED_FITS)
def test_mixed_model_baseline_defaults_to_the_first_system_in_sorted_order(fit):
    r = crossed_ratings(np.random.default_rng(15), listeners=8, items=6, effects={"b": 0.0, "a": 1.0})
    res = fit(r)
    assert res["baseline"] == "a" and [e["system"] for e in res["effects"]] == ["b"]


@pytest.mark.parametrize("fit", MIXED_FITS)
@pytest.mark.parametrize("case", ["one_listener", "one_system", "constant", "unknown_baseline"])
def test_mixed_model_reports_not_ok_on_degenerate_input(case, fit):
    r = crossed_ratings(np.random.default_rng(16), listeners=6, items=5, effects={"a": 0.0, "b": 1.0})
    kwargs = {}
    if case == "one_listener":
        r = r.loc[r["listener"] == "l00"]
    elif case == "one_system":
        r = r.loc[r["system"] == "a"]
    elif case == "constant":
        r = r.assign(score=3.0)
    else:
        kwargs["baseline"] = "nope"
    res = fit(r, **kwargs)
    assert res["ok"] is False and res["reason"] and res["effects"] == []
    json.dumps(res)


@pytest.mark.parametrize("seed", range(3))
def test_the_crossed_mixed_model_equals_statsmodels_on_random_data_with_missing_cells_and_repeats(seed):
    rng = np.random.default_rng(60 + seed)
    r = crossed_ratings(
        rng,
        listeners=12,
        items=8,
        effects={"a": 0.0, "b": 0.4, "c": 0.9, "d": -0.2},
        listener_sd=0.5,
        item_sd=0.35,
        noise_sd=0.6,
    )
    r = r.sample(frac=0.7, random_state=seed)  # missing cells
    r = pd.concat([r, r.sample(15, random_state=seed).assign(score=lambda d: d["score"] + 0.3)])  # repeats
    ours, reference = crossed_mixed_model(r, baseline="b"), mixed_effects(r, baseline="b")
    assert ours["ok"] and reference["ok"] and ours["n"] == reference["n"] == len(r)
    assert ours["intercept"]["estimate"] == pytest.approx(reference["intercept"]["estimate"], rel=1e-4)
    for mine, theirs in zip(ours["effects"], reference["effects"], strict=True):
        assert mine["system"] == theirs["system"]
        assert mine["estimate"] == pytest.approx(theirs["estimate"], rel=1e-4, abs=1e-5)
        assert mine["se"] == pytest.approx(theirs["se"], rel=5e-3)
        assert mine["p"] == pytest.approx(theirs["p"], rel=5e-2, abs=1e-8)
    for part in ("listener", "item", "residual"):
        assert ours["variance_components"][part] == pytest.approx(
            reference["variance_components"][part], rel=2e-3, abs=1e-6
        )


def test_holm_adjust_equals_statsmodels_with_ties_and_nan():
    rng = np.random.default_rng(61)
    for n in (1, 2, 7, 55):
        p = np.round(rng.uniform(0, 0.2, n), 3)  # rounded: ties
        p[rng.random(n) < 0.2] = np.nan
        finite = np.isfinite(p)
        expected = np.full(n, np.nan)
        if finite.any():
            expected[finite] = multipletests(p[finite], method="holm")[1]
        np.testing.assert_array_equal(holm_adjust(p), expected)


def pairwise_reference(frame):
    """The pairwise table as first written: one pivot_table, then pandas column selection per pair."""
    wide = frame.pivot_table(index=["listener", "item"], columns="system", values="score", aggfunc="mean")
    rows = []
    for a, b in combinations(sorted(wide.columns, key=str), 2):
        both = wide[[a, b]].dropna()
        rows.append((a, b, (both[a] - both[b]).to_numpy(float)))
    return rows


def test_pairwise_differences_equal_the_pivot_table_reference_with_missing_cells_and_repeats():
    rng = np.random.default_rng(62)
    r = crossed_ratings(
        rng, listeners=20, items=9, effects={f"s{k}": 0.2 * k for k in range(6)}, mean=50, noise_sd=12
    )
    r["score"] = r["score"].round(1)
    r = r.sample(frac=0.75, random_state=4)
    r = pd.concat([r, r.sample(40, random_state=5).assign(score=lambda d: d["score"] + 0.7)])
    out = pairwise_tests(r, kind="mushra").set_index(["system_a", "system_b"])
    for a, b, d in pairwise_reference(r):
        row = out.loc[(a, b)]
        assert (
            row["n_pairs"] == len(d) and row["mean_diff"] == d.mean() and row["median_diff"] == np.median(d)
        )
        ref = sps.wilcoxon(d, zero_method="pratt")
        assert row["statistic"] == ref.statistic and row["p"] == ref.pvalue


@pytest.mark.parametrize(("scale", "dtype"), [(1, np.float32), (2**20, np.float64), (0.5, None)])
def test_the_dense_bootstrap_product_equals_the_sparse_one_bit_for_bit(scale, dtype, monkeypatch):
    rng = np.random.default_rng(63)
    r = crossed_ratings(
        rng, listeners=30, items=12, effects={"a": 0.0, "b": 1.0, "c": 2.0}, mean=50, noise_sd=15
    )
    r = r.sample(frac=0.8, random_state=6).assign(score=lambda d: d["score"].round() * scale)
    codes = stats._codes(r, ["system"])
    seen = []
    real = stats._dense_dtype
    monkeypatch.setattr(stats, "_dense_dtype", lambda *a: seen.append(real(*a)) or seen[-1])
    dense = system_scores(r, kind="mushra", n_boot=300, seed=3)
    assert seen == [dtype] or (dtype is None and seen == [])
    monkeypatch.setattr(stats, "_DENSE_BOOT_CELLS", 0)
    sparse_path = system_scores(r, kind="mushra", n_boot=300, seed=3)
    pd.testing.assert_frame_equal(dense, sparse_path, check_exact=True)
    means = stats._cluster_bootstrap_means(codes, r["score"].to_numpy(float), n_boot=50, seed=1)
    monkeypatch.setattr(stats, "_DENSE_BOOT_CELLS", 10**9)
    np.testing.assert_array_equal(
        stats._cluster_bootstrap_means(codes, r["score"].to_numpy(float), n_boot=50, seed=1), means
    )


def test_system_scores_take_the_most_frequent_role_and_count_listeners_and_items_per_system():
    r = crossed_ratings(np.random.default_rng(64), listeners=6, items=4, effects={"a": 0.0, "b": 1.0})
    r["role"] = np.where(r["system"] == "a", "hidden_reference", "system")
    r.loc[r.index[:3], "role"] = "anchor_lp70"
    r.loc[r.index[3], "role"] = None
    out = system_scores(r, kind="mushra", n_boot=0).set_index("system")
    expected = r.groupby("system").agg(
        role=("role", lambda g: g.mode().iloc[0]),
        listeners=("listener", "nunique"),
        items=("item", "nunique"),
    )
    assert out[["role", "listeners", "items"]].to_dict("index") == expected.to_dict("index")
