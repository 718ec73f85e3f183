import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from evalsite.analysis.correlation import human_metric_correlations


@pytest.fixture
def data():
    rng = np.random.default_rng(50)
    systems, items = [f"s{k}" for k in range(8)], [f"i{k}" for k in range(5)]
    quality = dict(zip(systems, rng.normal(3, 0.8, len(systems))))
    human = pd.DataFrame(
        [(s, i, l, quality[s] + rng.normal(0, 0.5)) for s in systems for i in items for l in range(4)],
        columns=["system", "item", "listener", "score"],
    )
    metrics = pd.DataFrame(
        [
            (s, i, m, quality[s] * sign + rng.normal(0, 0.4))
            for s in systems
            for i in items
            for m, sign in (("pesq", 1), ("mcd", -1))
        ],
        columns=["system", "item", "metric", "value"],
    )
    return human, metrics


@pytest.mark.parametrize("level", ["system", "item"])
def test_correlations_match_scipy_on_the_level_means_and_report_n(data, level):
    human, metrics = data
    keys = ["system"] if level == "system" else ["system", "item"]
    out = human_metric_correlations(human, metrics, level=level).set_index("metric")
    for metric in ("pesq", "mcd"):
        h = human.groupby(keys)["score"].mean()
        m = metrics.loc[metrics["metric"] == metric].groupby(keys)["value"].mean()
        x, y = h.to_numpy(), m.loc[h.index].to_numpy()
        row = out.loc[metric]
        assert row["n"] == (8 if level == "system" else 40) and row["level"] == level
        assert (row["pearson_r"], row["pearson_p"]) == pytest.approx(tuple(sps.pearsonr(x, y)), rel=1e-12)
        assert (row["spearman_rho"], row["spearman_p"]) == pytest.approx(
            tuple(sps.spearmanr(x, y)), rel=1e-12
        )
        assert (row["kendall_tau"], row["kendall_p"]) == pytest.approx(tuple(sps.kendalltau(x, y)), rel=1e-12)
    assert out.loc["pesq", "spearman_rho"] > 0.5 and out.loc["mcd", "spearman_rho"] < -0.5


def test_only_keys_present_in_both_frames_are_correlated(data):
    human, metrics = data
    out = human_metric_correlations(human.loc[human["system"] != "s0"], metrics)
    assert (out["n"] == 7).all()


def test_fewer_than_three_points_or_constant_input_give_nan_with_a_note(data):
    human, metrics = data
    two = human_metric_correlations(human.loc[human["system"].isin(["s0", "s1"])], metrics).iloc[0]
    assert two["n"] == 2 and math.isnan(two["pearson_r"]) and math.isnan(two["kendall_p"])
    assert two["note"] == "only 2 points (at least 3 needed)"
    flat = human_metric_correlations(human, metrics.assign(value=1.0)).iloc[0]
    assert math.isnan(flat["spearman_rho"]) and "constant" in flat["note"]


def test_unknown_level_and_missing_columns_are_refused(data):
    human, metrics = data
    with pytest.raises(ValueError, match="level must be one of"):
        human_metric_correlations(human, metrics, level="listener")
    with pytest.raises(ValueError, match=r"human frame lacks column\(s\) \['item'\]"):
        human_metric_correlations(human.drop(columns="item"), metrics, level="item")
