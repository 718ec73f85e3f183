import json
import math

import krippendorff
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.inter_rater import fleiss_kappa

from evalsite.analysis.reliability import (
    agreement_coefficients,
    alpha_level_for,
    flag_agreement,
    flag_category_alpha,
    gwet_ac1,
    icc,
    krippendorff_alpha,
    reliability_summary,
)

NAN = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers × 12 units,
# values 1..5, with missing data. Published: nominal .743, ordinal .815, interval .849, ratio .797.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]
# Shrout & Fleiss (1979), Table 2: 6 targets (rows) × 4 judges (columns).
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
# Fleiss' kappa worked example on Wikipedia ("Fleiss' kappa"): 10 subjects × 14 raters × 5 categories,
# P̄ = 0.378, P̄e = 0.213, κ = 0.210.
WIKIPEDIA_FLEISS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def long_from_matrix(matrix, *, rows_are="listener"):
    """A ratings frame from a (listeners × units) or (units × listeners) matrix, NaN = not rated."""
    m = np.asarray(matrix, dtype=float)
    if rows_are != "listener":
        m = m.T
    rows = [
        (f"r{l}", f"u{u:02d}", "sys", m[l, u])
        for l in range(m.shape[0])
        for u in range(m.shape[1])
        if not math.isnan(m[l, u])
    ]
    return pd.DataFrame(rows, columns=["listener", "item", "system", "score"])


def counts_from_raw(raw_units_by_raters, categories):
    """Units × categories count table from raw ratings (NaN = not rated)."""
    raw = np.asarray(raw_units_by_raters, dtype=float)
    return np.array([[np.sum(row == c) for c in categories] for row in raw])


@pytest.mark.parametrize(
    ("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)]
)
def test_krippendorff_alpha_matches_krippendorffs_2011_worked_example(level, published):
    assert krippendorff_alpha(long_from_matrix(KRIPPENDORFF_2011), level=level) == pytest.approx(
        published, abs=5e-4
    )


def test_krippendorff_alpha_is_nan_when_undefined_and_refuses_an_unknown_level():
    single = long_from_matrix([[1, 2, 3], [NAN, NAN, NAN]])
    assert math.isnan(krippendorff_alpha(single, level="interval"))
    with pytest.raises(ValueError, match="level must be one of"):
        krippendorff_alpha(single, level="cardinal")


def interval_alpha_closed_form(matrix):
    """Interval alpha for complete data (Krippendorff 2011): 1 - D_o / D_e with squared differences."""
    m = np.asarray(matrix, float)
    n_coders, values = m.shape[0], m.ravel()
    within = sum(((u[:, None] - u[None, :]) ** 2).sum() for u in m.T) / (n_coders - 1)
    total = ((values[:, None] - values[None, :]) ** 2).sum() / (len(values) - 1)
    return 1 - within / total


def test_interval_alpha_closed_form_agrees_with_the_package():
    matrix = np.random.default_rng(32).integers(0, 101, (4, 30)).astype(float)
    assert interval_alpha_closed_form(matrix) == pytest.approx(
        krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval"), abs=1e-12
    )


def test_continuous_scores_go_on_a_101_point_grid_with_a_negligible_change_in_alpha():
    rng = np.random.default_rng(31)
    matrix = np.clip(rng.uniform(0, 100, 300) + rng.normal(0, 15, (5, 300)), 0, 100)
    assert len(np.unique(matrix)) > 1000
    got = krippendorff_alpha(long_from_matrix(matrix), level="interval")
    assert got == pytest.approx(interval_alpha_closed_form(matrix), abs=1e-3)
    integers = np.round(matrix)
    assert krippendorff_alpha(long_from_matrix(integers), level="interval") == pytest.approx(
        interval_alpha_closed_form(integers), abs=1e-12
    )


def test_alpha_level_follows_the_scale_of_each_test_kind():
    assert [alpha_level_for(k) for k in ("mushra", "mos", "smos", "cmos")] == [
        "interval",
        "ordinal",
        "ordinal",
        "interval",
    ]


def test_icc_matches_shrout_and_fleiss_1979_worked_example_and_names_both_conventions():
    # Published for the Table 2 data (S&F 1979, two decimals): .17 .29 .71 .44 .62 .91.
    table = icc(long_from_matrix(SHROUT_FLEISS, rows_are="unit")).set_index("shrout_fleiss")
    published = {
        "ICC(1,1)": 0.17,
        "ICC(2,1)": 0.29,
        "ICC(3,1)": 0.71,
        "ICC(1,k)": 0.44,
        "ICC(2,k)": 0.62,
        "ICC(3,k)": 0.91,
    }
    for name, value in published.items():
        assert table.loc[name, "icc"] == pytest.approx(value, abs=0.005), name
    assert list(table["mcgraw_wong"]) == ["ICC(1)", "ICC(A,1)", "ICC(C,1)", "ICC(k)", "ICC(A,k)", "ICC(C,k)"]
    assert table.loc["ICC(2,1)", "description"] == "two-way random effects, absolute agreement, single rater"
    assert table.loc["ICC(3,1)", "description"] == "two-way mixed effects, consistency, single rater"
    assert (table["n_units"] == 6).all() and (table["k_raters"] == 4).all() and table["note"].isna().all()
    assert (table["ci_low"] < table["icc"]).all() and (table["icc"] < table["ci_high"]).all()


def test_icc_on_an_incomplete_design_uses_the_largest_complete_block_and_says_so():
    matrix = np.vstack(
        [np.asarray(SHROUT_FLEISS, float).T, [[3, NAN, NAN, NAN, NAN, 4]]]
    )  # a 5th, sparse listener
    table = icc(long_from_matrix(matrix)).set_index("shrout_fleiss")
    assert table.loc["ICC(2,1)", "icc"] == pytest.approx(0.29, abs=0.005)
    assert "6 units × 4 listeners, 24 of 26 rated cells" in table.loc["ICC(2,1)", "note"]


def test_icc_without_a_usable_block_is_nan_with_a_note():
    table = icc(long_from_matrix([[1, 2, NAN, NAN], [NAN, NAN, 3, 4]]))
    assert len(table) == 6 and table["icc"].isna().all() and "no complete block" in table["note"].iloc[0]


def test_fleiss_kappa_matches_the_wikipedia_worked_example_via_statsmodels():
    out = agreement_coefficients(WIKIPEDIA_FLEISS)
    assert out["fleiss_kappa"] == pytest.approx(0.210, abs=5e-4)
    assert out["percent_agreement"] == pytest.approx(0.378, abs=5e-4)
    assert out["pe_fleiss"] == pytest.approx(0.213, abs=5e-4)
    assert out["kappa_method"].startswith("statsmodels")
    assert out["fleiss_kappa"] == pytest.approx(fleiss_kappa(np.asarray(WIKIPEDIA_FLEISS)), abs=1e-12)


def test_gwet_ac1_and_generalised_kappa_match_gwets_handbook_example_with_missing_ratings():
    # Gwet (2014), Handbook of Inter-Rater Reliability, 4th ed., p. 120: 4 raters × 12 units, 5 categories,
    # no rater rated all units (the same data as Krippendorff's example). Published (irrCAC gwet.ac1.raw /
    # fleiss.kappa.raw): pa = 0.818, AC1 pe = 0.190, AC1 = 0.775; Fleiss pe = 0.239, kappa = 0.761.
    counts = counts_from_raw(np.asarray(KRIPPENDORFF_2011, float).T, categories=[1, 2, 3, 4, 5])
    out = agreement_coefficients(counts)
    assert (
        out["n_units"] == 12
        and out["n_units_multi"] == 11
        and (out["raters_min"], out["raters_max"]) == (1, 4)
    )
    assert out["percent_agreement"] == pytest.approx(9 / 11, abs=1e-12)  # 0.818
    assert out["pe_gwet"] == pytest.approx(0.190, abs=5e-4)
    assert out["gwet_ac1"] == pytest.approx(0.775, abs=5e-4)
    assert out["pe_fleiss"] == pytest.approx(0.239, abs=5e-4)
    assert out["fleiss_kappa"] == pytest.approx(0.761, abs=5e-4)
    assert out["kappa_method"].startswith("Fleiss' kappa generalised")
    assert gwet_ac1(counts) == out["gwet_ac1"]


def test_ac1_stays_high_when_kappa_collapses_on_rare_flags():
    # 40 stimuli heard by 5 listeners each; nobody flags 38 of them, one listener flags each of the other two.
    counts = np.array([[5, 0]] * 38 + [[4, 1]] * 2)
    out = agreement_coefficients(counts)
    assert out["percent_agreement"] == pytest.approx(0.98)
    assert out["fleiss_kappa"] == pytest.approx(-0.0101, abs=1e-3)  # (0.98 - 0.9802) / (1 - 0.9802)
    assert out["gwet_ac1"] == pytest.approx(0.9798, abs=1e-3)  # (0.98 - 0.0198) / (1 - 0.0198)
    nobody_flags = agreement_coefficients([[5, 0]] * 3)
    assert math.isnan(nobody_flags["fleiss_kappa"]) and nobody_flags["gwet_ac1"] == 1.0  # kappa: 0 / 0


def flag_frames():
    """6 stimuli × 5 listeners; stimulus s0 flagged by all, the rest by nobody but one 'buzz' on s1."""
    presented = pd.DataFrame(
        [(f"l{l}", f"s{s}", f"i{s}", "sys", "system", 4.0) for s in range(6) for l in range(5)],
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )
    flags = pd.DataFrame(
        [(f"l{l}", "s0", 1.0, 1.5, "click") for l in range(5)] + [("l0", "s1", 0.2, 0.3, "buzz")],
        columns=["listener", "stimulus", "start_s", "end_s", "category"],
    )
    return flags, presented


def test_flag_agreement_counts_listeners_who_heard_each_stimulus():
    flags, presented = flag_frames()
    out = flag_agreement(flags, presented)
    expected = agreement_coefficients(np.array([[0, 5], [4, 1], [5, 0], [5, 0], [5, 0], [5, 0]]))
    for key in ("percent_agreement", "fleiss_kappa", "gwet_ac1"):
        assert out[key] == pytest.approx(expected[key], abs=1e-12)
    assert out["flag_share"] == pytest.approx(6 / 30)
    json.dumps(out)


def test_flag_category_alpha_is_one_when_listeners_name_the_same_categories():
    flags, presented = flag_frames()
    assert flag_category_alpha(flags.iloc[:5], presented) == pytest.approx(1.0)
    assert flag_category_alpha(flags, presented) < 1.0


def test_reliability_summary_reports_ordinal_as_primary_and_interval_too_for_mos():
    rng = np.random.default_rng(30)
    truth = rng.integers(1, 6, size=15)
    rows = [
        (f"l{l}", f"i{u}", "s", float(np.clip(truth[u] + rng.integers(-1, 2), 1, 5)))
        for l in range(6)
        for u in range(15)
    ]
    ratings = pd.DataFrame(rows, columns=["listener", "item", "system", "score"])
    s = reliability_summary(ratings, kind="mos")
    assert s["primary_level"] == "ordinal" and set(s["alpha"]) == {"ordinal", "interval"}
    assert (
        s["alpha_primary"]
        == s["alpha"]["ordinal"]
        == pytest.approx(krippendorff_alpha(ratings, level="ordinal"))
    )
    assert (s["units"], s["listeners"], s["ratings"]) == (15, 6, 90)
    assert len(s["icc"]) == 6 and s["icc"][1]["mcgraw_wong"] == "ICC(A,1)"
    assert set(reliability_summary(ratings, kind="mushra")["alpha"]) == {"interval"}
    json.dumps(s)


# --- fast paths against the libraries they replace --------------------------------------------------------------


def random_incomplete(rng, *, listeners, units, values, missing, repeats=0):
    """Listeners × units ratings drawn from ``values`` with a share of cells missing (and some repeated cells)."""
    truth = rng.choice(values, size=units)
    rows = []
    for l in range(listeners):
        for u in range(units):
            if rng.random() < missing:
                continue
            near = np.clip(np.searchsorted(values, truth[u]) + rng.integers(-1, 2), 0, len(values) - 1)
            rows.append((f"l{l:02d}", f"i{u % 7}", f"s{u // 7}", float(values[near])))
    frame = pd.DataFrame(rows, columns=["listener", "item", "system", "score"])
    return pd.concat([frame, frame.sample(repeats, random_state=1)]) if repeats else frame


def package_matrix(ratings, level):
    """The listeners × units matrix the krippendorff package takes (repeats: mean, or first for categories)."""
    frame = (
        ratings.drop_duplicates(["listener", "item", "system"])
        if level in ("nominal", "ordinal")
        else ratings
    )
    return frame.pivot_table(
        index="listener", columns=["item", "system"], values="score", aggfunc="mean"
    ).to_numpy(float)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
@pytest.mark.parametrize(
    ("values", "missing"),
    [(np.arange(1.0, 6.0), 0.3), (np.arange(0.0, 101.0), 0.5), (np.linspace(-3, 3, 13), 0.7)],
)
def test_alpha_equals_the_krippendorff_package_on_random_data_with_missing_cells(level, values, missing):
    rng = np.random.default_rng(int(100 * missing) + len(values))
    ratings = random_incomplete(rng, listeners=12, units=35, values=values, missing=missing, repeats=20)
    if level == "ratio":
        ratings = ratings.assign(score=ratings["score"] - values.min() + 1)  # ratio data are positive
    expected = krippendorff.alpha(reliability_data=package_matrix(ratings, level), level_of_measurement=level)
    assert krippendorff_alpha(ratings, level=level) == pytest.approx(expected, abs=1e-12)


def test_alpha_on_the_101_point_grid_equals_the_package_on_the_gridded_matrix():
    rng = np.random.default_rng(33)
    matrix = np.clip(rng.uniform(0, 100, 80) + rng.normal(0, 15, (6, 80)), 0, 100)
    matrix[rng.random(matrix.shape) < 0.3] = np.nan
    values = matrix[np.isfinite(matrix)]
    low, step = values.min(), np.ptp(values) / 100
    gridded = low + np.round((matrix - low) / step) * step
    expected = krippendorff.alpha(reliability_data=gridded, level_of_measurement="interval")
    assert krippendorff_alpha(long_from_matrix(matrix), level="interval") == pytest.approx(
        expected, abs=1e-12
    )


def test_flag_category_alpha_equals_the_package_on_the_listeners_by_stimuli_matrix():
    rng = np.random.default_rng(34)
    presented = pd.DataFrame(
        [
            (f"l{l}", f"s{s}", f"i{s}", "sys", "system", 4.0)
            for s in range(40)
            for l in range(9)
            if rng.random() < 0.8
        ],
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )
    picked = presented.sample(60, random_state=3)
    flags = pd.DataFrame(
        {
            "listener": picked["listener"],
            "stimulus": picked["stimulus"],
            "start_s": 1.0,
            "end_s": 1.0 + rng.uniform(0.1, 0.5, 60),
            "category": rng.choice(["click", "buzz", "hum"], 60),
        }
    )
    from evalsite.analysis.flags import presentation_flags

    pres = presentation_flags(flags, presented)
    labels = pres["category"].where(pres["flagged"], "none").astype(str)
    matrix = (
        pres.assign(code=pd.factorize(labels, sort=True)[0].astype(float))
        .pivot_table(index="listener", columns="stimulus", values="code", aggfunc="first")
        .to_numpy(float)
    )
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    assert flag_category_alpha(flags, presented) == pytest.approx(expected, abs=1e-12)
    assert flag_category_alpha(flags, presented, presentations=pres) == flag_category_alpha(flags, presented)


def greedy_block_reference(wide):
    """The block search as first written (a pass over the whole remaining table per step)."""
    present = wide.notna().to_numpy()
    rows, cols = np.ones(present.shape[0], bool), np.ones(present.shape[1], bool)
    while rows.any() and cols.any():
        sub = present[np.ix_(rows, cols)]
        if sub.all():
            break
        row_missing, col_missing = 1 - sub.mean(axis=1), 1 - sub.mean(axis=0)
        if row_missing.max() >= col_missing.max():
            rows[np.flatnonzero(rows)[row_missing.argmax()]] = False
        else:
            cols[np.flatnonzero(cols)[col_missing.argmax()]] = False
    return wide.loc[rows, cols]


@pytest.mark.parametrize("seed", range(4))
def test_icc_equals_pingouin_on_the_same_largest_complete_block_of_random_incomplete_data(seed):
    import pingouin

    rng = np.random.default_rng(40 + seed)
    ratings = random_incomplete(
        rng, listeners=9, units=28, values=np.arange(0.0, 101.0), missing=0.15 + 0.05 * seed, repeats=5
    )
    wide = ratings.pivot_table(index=["item", "system"], columns="listener", values="score", aggfunc="mean")
    block = greedy_block_reference(wide)
    table = icc(ratings).set_index("mcgraw_wong")
    assert (table["n_units"] == block.shape[0]).all() and (table["k_raters"] == block.shape[1]).all()
    long = (
        block.reset_index(drop=True)
        .rename_axis("unit")
        .reset_index()
        .melt(id_vars="unit", var_name="rater", value_name="score")
    )
    rounded = pingouin.intraclass_corr(data=long, targets="unit", raters="rater", ratings="score").set_index(
        "Type"
    )
    saved = pingouin.options.get("round.column.CI95")
    pingouin.options["round.column.CI95"] = None  # pingouin rounds its interval to 2 decimals by default
    try:
        exact = pingouin.intraclass_corr(
            data=long, targets="unit", raters="rater", ratings="score"
        ).set_index("Type")
    finally:
        pingouin.options["round.column.CI95"] = saved
    names = {
        "ICC(1,1)": "ICC(1)",
        "ICC(A,1)": "ICC(A,1)",
        "ICC(C,1)": "ICC(C,1)",
        "ICC(1,k)": "ICC(k)",
        "ICC(A,k)": "ICC(A,k)",
        "ICC(C,k)": "ICC(C,k)",
    }
    for theirs, ours in names.items():
        row = table.loc[ours]
        assert row["icc"] == pytest.approx(exact.loc[theirs, "ICC"], abs=1e-12)
        assert row["F"] == pytest.approx(exact.loc[theirs, "F"], rel=1e-12)
        assert (row["df1"], row["df2"]) == (exact.loc[theirs, "df1"], exact.loc[theirs, "df2"])
        assert row["p"] == pytest.approx(exact.loc[theirs, "pval"], rel=1e-9, abs=1e-300)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(exact.loc[theirs, "CI95"]), abs=1e-12)
        assert (round(row["ci_low"], 2), round(row["ci_high"], 2)) == tuple(rounded.loc[theirs, "CI95"])


def test_the_block_search_keeps_the_reference_choices_including_ties():
    from evalsite.analysis.reliability import _largest_complete_block

    rng = np.random.default_rng(41)
    for _ in range(30):
        shape = tuple(rng.integers(2, 12, 2))
        present = rng.random(shape) < rng.uniform(0.4, 0.95)
        wide = pd.DataFrame(np.where(present, 1.0, np.nan))
        rows, cols = _largest_complete_block(present)
        expected = greedy_block_reference(wide)
        assert list(np.flatnonzero(rows)) == list(expected.index)
        assert list(np.flatnonzero(cols)) == list(expected.columns)


def test_reliability_summary_counts_units_listeners_and_ratings_of_a_cmos_frame():
    rng = np.random.default_rng(42)
    ratings = random_incomplete(rng, listeners=6, units=21, values=np.arange(-3.0, 4.0), missing=0.2)
    cmos = pd.concat([ratings.assign(comparison="ref"), ratings.assign(comparison="base")])
    s = reliability_summary(cmos, kind="cmos")
    assert (s["units"], s["listeners"], s["ratings"]) == (42, 6, 2 * len(ratings))
    assert s["alpha"]["interval"] == pytest.approx(
        krippendorff.alpha(
            reliability_data=cmos.pivot_table(
                index="listener", columns=["item", "system", "comparison"], values="score", aggfunc="mean"
            ).to_numpy(float),
            level_of_measurement="interval",
        ),
        abs=1e-12,
    )
