"""The methods papers report: Hochberg's correction, the Friedman test, the CrowdMOS interval, Bradley–Terry
scores and nominal Krippendorff alpha on string labels, each against a published example or a peer package."""

import io
import math

import krippendorff
import numpy as np
import pandas as pd
import pingouin
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from evalsite.analysis.reliability import krippendorff_alpha
from evalsite.analysis.stats import (
    adjust_pvalues,
    bradley_terry,
    crowdmos_intervals,
    friedman_test,
    hochberg_adjust,
    holm_adjust,
    pairwise_tests,
)
from tests.analysis.test_reliability import KRIPPENDORFF_2011, long_from_matrix

# Agresti, Categorical Data Analysis (2nd edn, 2002), §10.6, Table 10.10: 1987 American League East, wins of the
# home team and of the away team in their home-team games (the BradleyTerry2 R package ships it as `baseball`).
BASEBALL_1987 = """home,away,home_wins,away_wins
Milwaukee,Detroit,4,3
Milwaukee,Toronto,4,2
Milwaukee,New York,4,3
Milwaukee,Boston,6,1
Milwaukee,Cleveland,4,2
Milwaukee,Baltimore,6,0
Detroit,Milwaukee,3,3
Detroit,Toronto,4,2
Detroit,New York,4,3
Detroit,Boston,6,0
Detroit,Cleveland,6,1
Detroit,Baltimore,4,3
Toronto,Milwaukee,2,5
Toronto,Detroit,4,3
Toronto,New York,2,4
Toronto,Boston,4,3
Toronto,Cleveland,4,2
Toronto,Baltimore,6,0
New York,Milwaukee,3,3
New York,Detroit,5,1
New York,Toronto,2,5
New York,Boston,4,3
New York,Cleveland,4,2
New York,Baltimore,6,1
Boston,Milwaukee,5,1
Boston,Detroit,2,5
Boston,Toronto,3,3
Boston,New York,4,2
Boston,Cleveland,5,2
Boston,Baltimore,6,0
Cleveland,Milwaukee,2,5
Cleveland,Detroit,3,3
Cleveland,Toronto,3,4
Cleveland,New York,4,3
Cleveland,Boston,4,2
Cleveland,Baltimore,2,4
Baltimore,Milwaukee,2,5
Baltimore,Detroit,1,5
Baltimore,Toronto,1,6
Baltimore,New York,2,4
Baltimore,Boston,1,6
Baltimore,Cleveland,3,4
"""
# Agresti's Table 10.11 (column 3): Bradley–Terry estimates with Baltimore = 0; standard errors "about 0.3".
AGRESTI_BETA = {
    "Milwaukee": 1.58,
    "Detroit": 1.44,
    "Toronto": 1.29,
    "New York": 1.25,
    "Boston": 1.11,
    "Cleveland": 0.68,
    "Baltimore": 0.0,
}


def baseball_ab_frame() -> pd.DataFrame:
    """Each game as one AB answer: a = home team, b = away team, preferred = the winner."""
    games = pd.read_csv(io.StringIO(BASEBALL_1987))
    rows = []
    for g in games.itertuples():
        rows += [dict(listener=0, item=g.Index, a=g.home, b=g.away, preferred=g.home)] * g.home_wins
        rows += [dict(listener=0, item=g.Index, a=g.home, b=g.away, preferred=g.away)] * g.away_wins
    return pd.DataFrame(rows)


# --- Hochberg -------------------------------------------------------------------------------------------------


def test_hochberg_rejects_what_holm_cannot_on_the_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    np.testing.assert_allclose(holm_adjust(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(hochberg_adjust(p), [0.03, 0.04, 0.04, 0.02, np.nan])
    np.testing.assert_array_equal(adjust_pvalues(p, correction="hochberg"), hochberg_adjust(p))


def test_hochberg_equals_statsmodels_simes_hochberg_with_ties_and_nan():
    rng = np.random.default_rng(3)
    for size in (1, 2, 5, 17, 60):
        p = np.round(rng.uniform(0, 0.2, size), 3)
        p[rng.uniform(size=size) < 0.2] = np.nan
        expected = np.full(size, np.nan)
        finite = np.isfinite(p)
        if finite.any():
            expected[finite] = multipletests(p[finite], method="simes-hochberg")[1]
        np.testing.assert_allclose(hochberg_adjust(p), expected, rtol=1e-12)


def test_an_unknown_correction_is_refused_with_the_known_ones():
    with pytest.raises(
        ValueError, match=r"correction must be one of \['hochberg', 'holm'\]; got 'bonferroni'"
    ):
        adjust_pvalues([0.1], correction="bonferroni")
    r = pd.DataFrame(
        {"listener": np.repeat(range(8), 2), "item": "i", "system": ["x", "y"] * 8, "score": 1.0}
    )
    with pytest.raises(ValueError, match="got 'BH'"):
        pairwise_tests(r, kind="mos", correction="BH")


def mushra_frame(seed: int, n_listeners: int = 9, n_items: int = 4, effects=(0, 6, 9, 30)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for listener in range(n_listeners):
        offset = rng.normal(0, 5)
        for item in range(n_items):
            for s, effect in enumerate(effects):
                score = float(np.clip(np.round(50 + effect + offset + rng.normal(0, 8)), 0, 100))
                rows.append((f"L{listener}", f"i{item}", f"s{s}", score))
    return pd.DataFrame(rows, columns=["listener", "item", "system", "score"])


def test_pairwise_tests_carry_both_corrections_and_mark_significance_by_the_chosen_one():
    frame = mushra_frame(1)
    holm = pairwise_tests(frame, kind="mushra")
    hoch = pairwise_tests(frame, kind="mushra", correction="hochberg")
    np.testing.assert_allclose(holm["p_hochberg"], multipletests(holm["p"], method="simes-hochberg")[1])
    np.testing.assert_allclose(holm["p_holm"], multipletests(holm["p"], method="holm")[1])
    assert list(holm["significant"]) == list(holm["p_holm"] < 0.05)
    assert list(hoch["significant"]) == list(hoch["p_hochberg"] < 0.05)
    assert (hoch["p_hochberg"] <= hoch["p_holm"] + 1e-15).all()
    assert "Hochberg over all pairs" in hoch.attrs["method"] and "Holm over all pairs" in holm.attrs["method"]


# --- Friedman -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_friedman_equals_scipy_and_pingouin_on_complete_blocks_and_drops_incomplete_ones(seed):
    frame = mushra_frame(seed, effects=(0, 2, 4, 12))
    # A repeat (averaged into its block) and an incomplete block (left out).
    frame = pd.concat(
        [frame, frame.iloc[[0]].assign(score=frame["score"].iloc[0] + 10)], ignore_index=True
    ).loc[lambda f: ~((f["listener"] == "L3") & (f["item"] == "i1") & (f["system"] == "s2"))]
    out = friedman_test(frame)
    wide = frame.pivot_table(index=["listener", "item"], columns="system", values="score", aggfunc="mean")
    wide = wide.dropna()
    expected = sps.friedmanchisquare(*wide.to_numpy().T)
    assert out["blocks"] == len(wide) == 35 and out["blocks_incomplete"] == 1
    assert out["statistic"] == pytest.approx(expected.statistic, rel=1e-12)
    assert out["p"] == pytest.approx(expected.pvalue, rel=1e-12) and out["df"] == 3
    long = wide.reset_index().melt(id_vars=["listener", "item"], var_name="system", value_name="score")
    long["block"] = long["listener"] + "/" + long["item"]
    peer = pingouin.friedman(data=long, dv="score", within="system", subject="block")
    assert out["statistic"] == pytest.approx(float(peer["Q"].iloc[0]), rel=1e-9)
    assert out["kendall_w"] == pytest.approx(float(peer["W"].iloc[0]), rel=1e-9)
    assert out["p"] == pytest.approx(float(peer["p_unc"].iloc[0]), rel=1e-9)


def test_friedman_detects_a_clear_difference_and_says_why_when_it_cannot_run():
    assert friedman_test(mushra_frame(4))["p"] < 1e-6
    two = mushra_frame(4, effects=(0, 5))
    assert friedman_test(two)["statistic"] is None
    assert friedman_test(two)["note"] == "needs at least 3 conditions; got 2"
    one_block = mushra_frame(4, n_listeners=1, n_items=1)
    assert "at least 2 (listener, item) blocks" in friedman_test(one_block)["note"]
    flat = mushra_frame(4).assign(score=50.0)
    assert friedman_test(flat)["note"] == "every block scores all conditions alike; no test"


# --- CrowdMOS -------------------------------------------------------------------------------------------------


def crowdmos_by_hand(matrix: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Ribeiro et al. (2011) §2.2 on a listeners × items matrix (NaN = not rated), written out with loops."""
    rated = ~np.isnan(matrix)
    values = matrix[rated]
    total = len(values)
    item_vars = [np.var(col[~np.isnan(col)], ddof=1) for col in matrix.T if np.sum(~np.isnan(col)) >= 2]
    listener_vars = [np.var(row[~np.isnan(row)], ddof=1) for row in matrix if np.sum(~np.isnan(row)) >= 2]
    v_wu, v_su, v_swu = np.mean(item_vars), np.mean(listener_vars), np.var(values, ddof=1)
    v_s, v_w, v_u = (max(v, 0.0) for v in (v_swu - v_wu, v_swu - v_su, v_su + v_wu - v_swu))
    n_w, m_s = rated.sum(axis=1), rated.sum(axis=0)
    var_mean = v_s * np.sum(m_s**2) / total**2 + v_w * np.sum(n_w**2) / total**2 + v_u / total
    t = sps.t.ppf(0.5 + confidence / 2, min(matrix.shape) - 1)
    mean = values.mean()
    return mean - t * math.sqrt(var_mean), mean + t * math.sqrt(var_mean), var_mean


def test_crowdmos_interval_equals_the_formula_written_out_on_an_incomplete_design():
    matrix = np.array(
        [
            [4, 3, 5, np.nan, 2, 4],
            [5, 4, 5, 3, np.nan, 5],
            [3, np.nan, 4, 2, 1, 3],
            [4, 4, np.nan, 3, 2, np.nan],
            [2, 2, 3, 1, 1, 2],
        ],
        dtype=float,
    )
    frame = long_from_matrix(matrix)
    row = crowdmos_intervals(frame, kind="mos").iloc[0]
    low, high, var_mean = crowdmos_by_hand(matrix)
    assert row["crowdmos_low"] == pytest.approx(low, rel=1e-12)
    assert row["crowdmos_high"] == pytest.approx(high, rel=1e-12)
    assert row["se"] ** 2 == pytest.approx(var_mean, rel=1e-12) and row["df"] == 4
    # Listeners here differ a lot, so the interval is wider than the t interval over the 25 votes.
    t_half = sps.t.ppf(0.975, 24) * np.nanstd(matrix, ddof=1) / 5
    assert (high - low) / 2 > 1.3 * t_half


def test_crowdmos_averages_a_listeners_repeats_and_keeps_systems_apart():
    frame = long_from_matrix([[4, 3, 5], [5, 4, 4], [3, 3, 4]])
    repeated = pd.concat([frame, frame.iloc[[0]].assign(score=2.0)], ignore_index=True)
    other = frame.assign(system="other", score=frame["score"] - 1)
    out = crowdmos_intervals(pd.concat([repeated, other]), kind="mos").set_index("system")
    cells = np.array([[3, 3, 5], [5, 4, 4], [3, 3, 4]], dtype=float)
    assert out.loc["sys", "crowdmos_low"] == pytest.approx(crowdmos_by_hand(cells)[0], rel=1e-12)
    assert out.loc["other", "mean"] == pytest.approx(frame["score"].mean() - 1)


def simulate(rng: np.random.Generator, n_listeners: int, n_items: int, sd_w: float, sd_s: float, sd_u: float):
    x, y = rng.normal(0, sd_w, n_listeners), rng.normal(0, sd_s, n_items)
    scores = 3.0 + x[:, None] + y[None, :] + rng.normal(0, sd_u, (n_listeners, n_items))
    return long_from_matrix(scores)


def test_crowdmos_variance_of_the_mean_agrees_with_a_crossed_mixed_model_on_simulated_data():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(11)
    frame = simulate(rng, 20, 15, sd_w=0.6, sd_s=0.4, sd_u=0.5)
    row = crowdmos_intervals(frame, kind="mos").iloc[0]
    data = frame.assign(group=0)
    fit = smf.mixedlm(
        "score ~ 1",
        data,
        groups="group",
        re_formula="0",
        vc_formula={"l": "0 + C(listener)", "i": "0 + C(item)"},
    ).fit(reml=True)
    vc = dict(zip(fit.model.exog_vc.names, fit.vcomp))
    # CrowdMOS's components are moment estimates: on a finite design the variance of all scores falls short of
    # their sum by about σ²_w/W + σ²_s/S, so listener and item variances come out a little below REML's and the
    # residual a little above; the standard error of the mean (what the interval uses) agrees within 10 %.
    assert row["var_listener"] == pytest.approx(vc["l"], abs=0.05)
    assert row["var_item"] == pytest.approx(vc["i"], abs=0.03)
    assert row["var_residual"] == pytest.approx(fit.scale, abs=0.05)
    assert row["se"] == pytest.approx(float(fit.bse_fe["Intercept"]), rel=0.1)


def test_crowdmos_interval_covers_the_true_mean_at_the_nominal_rate_where_the_t_interval_does_not():
    rng = np.random.default_rng(2011)
    runs, covered, t_covered = 300, 0, 0
    for _ in range(runs):
        frame = simulate(rng, 12, 10, sd_w=0.5, sd_s=0.4, sd_u=0.6)
        row = crowdmos_intervals(frame, kind="mos").iloc[0]
        covered += row["crowdmos_low"] <= 3.0 <= row["crowdmos_high"]
        s = frame["score"]
        half = sps.t.ppf(0.975, len(s) - 1) * s.std(ddof=1) / math.sqrt(len(s))
        t_covered += abs(s.mean() - 3.0) <= half
    assert 0.91 <= covered / runs <= 0.99
    assert t_covered / runs < 0.75


def test_crowdmos_with_one_listener_or_no_scores_gives_no_interval_rather_than_an_error():
    one = long_from_matrix([[4, 3, 5, 2]])
    row = crowdmos_intervals(one, kind="mos").iloc[0]
    assert row["df"] == 0 and math.isnan(row["crowdmos_low"])
    assert crowdmos_intervals(one.iloc[:0], kind="mos").empty
    with pytest.raises(ValueError, match="confidence must be in"):
        crowdmos_intervals(one, kind="mos", confidence=1.5)


# --- Bradley–Terry --------------------------------------------------------------------------------------------


def test_bradley_terry_reproduces_agrestis_1987_american_league_east_estimates():
    out = bradley_terry(baseball_ab_frame())
    assert out["ok"] and out["converged"]
    score = {r["system"]: r["score"] for r in out["rows"]}
    for team, published in AGRESTI_BETA.items():
        assert score[team] - score["Baltimore"] == pytest.approx(published, abs=0.005), team
    assert [r["system"] for r in out["rows"]][:2] == ["Milwaukee", "Detroit"]
    assert sum(score.values()) == pytest.approx(0.0, abs=1e-9)
    # Standard errors of the differences from Baltimore are "about 0.3" (BradleyTerry2 rounds them to 0.3).
    cov, names = np.array(out["covariance"]), out["systems"]
    base = names.index("Baltimore")
    for k, team in enumerate(names):
        if team != "Baltimore":
            e = np.zeros(len(names))
            e[k], e[base] = 1.0, -1.0
            assert round(math.sqrt(e @ cov @ e), 1) == 0.3, team
    assert sum(r["worth"] for r in out["rows"]) == pytest.approx(1.0)
    milwaukee = next(r for r in out["rows"] if r["system"] == "Milwaukee")
    assert milwaukee["wins"] == 50 and milwaukee["losses"] == 28
    assert milwaukee["ci_low"] == pytest.approx(milwaukee["score"] - 1.959964 * milwaukee["se"], rel=1e-6)


def test_bradley_terry_equals_a_logistic_regression_fit_of_the_same_games():
    import statsmodels.api as sm

    frame = baseball_ab_frame()
    out = bradley_terry(frame)
    names = out["systems"]
    design = np.zeros((len(frame), len(names) - 1))
    for k, (a, b) in enumerate(zip(frame["a"], frame["b"])):
        for team, sign in ((a, 1.0), (b, -1.0)):
            if names.index(team) > 0:
                design[k, names.index(team) - 1] = sign
    won = (frame["preferred"] == frame["a"]).to_numpy(float)
    glm = sm.GLM(won, design, family=sm.families.Binomial()).fit()
    score = {r["system"]: r["score"] for r in out["rows"]}
    for k, team in enumerate(names[1:]):
        assert score[team] - score[names[0]] == pytest.approx(glm.params[k], abs=1e-7)
    cov = np.array(out["covariance"])
    for k in range(1, len(names)):
        e = np.zeros(len(names))
        e[k], e[0] = 1.0, -1.0
        assert math.sqrt(e @ cov @ e) == pytest.approx(glm.bse[k - 1], rel=1e-6)


def test_bradley_terry_drops_ties_and_says_why_when_a_system_never_lost():
    ab = pd.DataFrame(
        {
            "listener": [1, 2, 3, 4, 5],
            "item": "i",
            "a": ["x", "y", "x", "y", "x"],
            "b": ["y", "x", "y", "x", "y"],
            "preferred": ["x", "x", None, "y", "x"],
        }
    )
    out = bradley_terry(ab)
    rows = {r["system"]: r for r in out["rows"]}
    assert rows["x"]["wins"] == 3 and rows["x"]["losses"] == 1
    assert rows["x"]["score"] - rows["y"]["score"] == pytest.approx(math.log(3))
    unbounded = bradley_terry(ab.assign(preferred=["x", "x", None, "x", "x"]))
    assert not unbounded["ok"] and "never lost to (or never beat)" in unbounded["reason"]
    assert (
        bradley_terry(ab.assign(preferred=None))["reason"]
        == "needs decided answers on at least 2 systems; got 0"
    )
    with pytest.raises(ValueError, match="'preferred' must equal 'a' or 'b'"):
        bradley_terry(ab.assign(preferred="z"))


# --- Krippendorff on labels -----------------------------------------------------------------------------------


def test_nominal_alpha_on_string_labels_reproduces_krippendorffs_2011_value():
    labels = {1.0: "poor", 2.0: "fair", 3.0: "good", 4.0: "very good", 5.0: "excellent"}
    frame = long_from_matrix(KRIPPENDORFF_2011)
    as_strings = frame.assign(score=frame["score"].map(labels))
    assert krippendorff_alpha(as_strings, level="nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(as_strings, level="nominal") == krippendorff_alpha(frame, level="nominal")


def test_nominal_alpha_on_random_labels_with_missing_cells_equals_the_krippendorff_package():
    rng = np.random.default_rng(5)
    categories = np.array(["click", "noise", "none", "phasey", "muffled"])
    codes = rng.integers(0, 5, (6, 30)).astype(float)
    codes[rng.uniform(size=codes.shape) < 0.3] = np.nan
    frame = long_from_matrix(codes)
    frame["score"] = categories[frame["score"].astype(int)]
    expected = krippendorff.alpha(reliability_data=codes, level_of_measurement="nominal")
    assert krippendorff_alpha(frame, level="nominal") == pytest.approx(expected, abs=1e-12)


def test_labels_are_compared_as_text_and_refused_at_levels_that_need_numbers():
    frame = pd.DataFrame(
        {"listener": [1, 2, 1, 2, 1, 2], "item": ["a", "a", "b", "b", "c", "c"], "system": "x"}
    ).assign(score=pd.Series(["yes", "yes", 1, "1", "no", None], dtype=object))
    assert krippendorff_alpha(frame, level="nominal") == pytest.approx(1.0)
    with pytest.raises(
        ValueError, match=r"ordinal alpha needs numeric scores; column 'score' holds 3 non-numeric"
    ):
        krippendorff_alpha(frame, level="ordinal")
