import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from evalsite.analysis.flags import (
    flag_density,
    flag_rates,
    flag_regions,
    presentation_flags,
    system_flag_rates,
)

LISTENERS = [f"l{k}" for k in range(10)]


@pytest.fixture(scope="module")
def study():
    """10 listeners hear 2 system stimuli and 4 hidden references (2 of the 40 reference presentations flagged)."""
    rng = np.random.default_rng(40)
    stimuli = [("art", "i1", "voc", "system"), ("clean", "i2", "voc", "system")] + [
        (f"ref{k}", f"i{k}", "ref", "hidden_reference") for k in range(4)
    ]
    presented = pd.DataFrame(
        [(l, s, i, sy, role, 5.0) for l in LISTENERS for s, i, sy, role in stimuli],
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )
    flags = []
    for l in LISTENERS[:8]:  # a click at 2.0-2.5 s flagged by 8 of 10, with a little timing jitter
        flags.append((l, "art", 2.0 + rng.uniform(-0.01, 0.01), 2.5 + rng.uniform(-0.01, 0.01), "click"))
    flags.append(("l0", "art", 2.1, 2.3, "click"))  # overlapping second flag: l0 still counts once
    for l in LISTENERS[3:8]:  # a buzz at 4.0-4.2 s flagged by 5 of 10
        flags.append((l, "art", 4.0, 4.2, "buzz"))
    flags.append(("l9", "art", 0.5, 0.6, "noise"))  # a lone flag elsewhere
    flags.append(("l9", "clean", 1.0, 1.2, "click"))  # 1 of 10 flags the clean stimulus
    flags += [("l1", "ref0", 3.0, 3.1, "click"), ("l2", "ref3", 1.0, 1.1, "buzz")]  # false flags: 2 of 40
    flags = pd.DataFrame(flags, columns=["listener", "stimulus", "start_s", "end_s", "category"])
    return flags, presented


def test_rate_test_flags_8_of_10_but_not_1_of_10_against_a_5_percent_false_flag_rate(study):
    flags, presented = study
    rates = flag_rates(flags, presented).set_index("stimulus")
    assert rates["baseline_rate"].iloc[0] == pytest.approx(0.05)
    assert rates["baseline_source"].iloc[0] == "hidden_reference (2 of 40 presentations flagged)"
    art, clean = rates.loc["art"], rates.loc["clean"]
    assert (art["heard"], art["flagged"], art["share"]) == (10, 9, 0.9)
    assert (clean["heard"], clean["flagged"]) == (10, 1)
    assert art["p"] == pytest.approx(sps.binomtest(9, 10, 0.05, alternative="greater").pvalue, rel=1e-12)
    assert clean["p"] == pytest.approx(1 - 0.95**10, rel=1e-12)  # 0.40
    assert art["significant"] and not clean["significant"]


def test_rate_test_with_8_of_10_flagging_listeners_is_significant_at_a_given_baseline():
    presented = pd.DataFrame(
        [(l, s, "i", "v", "system", 3.0) for l in LISTENERS for s in ("a", "b")],
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )
    flags = pd.DataFrame(
        [(l, "a", 1.0, 1.2, "click") for l in LISTENERS[:8]] + [("l0", "b", 1.0, 1.2, "click")],
        columns=["listener", "stimulus", "start_s", "end_s", "category"],
    )
    with pytest.raises(ValueError, match="pass baseline_rate="):
        flag_rates(flags, presented)
    rates = flag_rates(flags, presented, baseline_rate=0.05).set_index("stimulus")
    assert rates.loc["a", "p"] == pytest.approx(sps.binomtest(8, 10, 0.05, alternative="greater").pvalue)
    assert rates.loc["a", "significant"] and not rates.loc["b", "significant"]
    assert (rates["baseline_source"] == "argument").all()


def test_a_zero_false_flag_rate_is_floored_so_one_flag_is_not_significant(study):
    flags, presented = study
    no_false = flags.loc[~flags["stimulus"].str.startswith("ref")]
    rates = flag_rates(no_false, presented).set_index("stimulus")
    assert (
        rates.loc["clean", "baseline_rate"] == 0.01
        and "floored at 0.01" in rates.loc["clean", "baseline_source"]
    )
    assert not rates.loc["clean", "significant"]


def test_flags_from_listeners_who_did_not_hear_the_stimulus_are_ignored_with_a_warning(study):
    flags, presented = study
    stray = pd.concat([flags, pd.DataFrame([("ghost", "art", 1.0, 2.0, "click")], columns=flags.columns)])
    with pytest.warns(UserWarning, match="1 flag"):
        pres = presentation_flags(stray, presented)
    assert "ghost" not in set(pres["listener"])


def test_main_category_of_a_presentation_is_the_longest_flagged_one(study):
    flags, presented = study
    untimed = pd.DataFrame([("l8", "clean", None, None, None)], columns=flags.columns)
    pres = presentation_flags(pd.concat([flags, untimed]), presented).set_index(["listener", "stimulus"])
    assert pres.loc[("l8", "clean"), "flagged"] and pres.loc[("l8", "clean"), "category"] == "unspecified"
    assert pres.loc[("l3", "art"), "category"] == "click" and pres.loc[("l3", "art"), "n_flags"] == 2
    assert pres.loc[("l8", "art"), "category"] is None and not pres.loc[("l8", "art"), "flagged"]


def test_per_system_aggregation_counts_presentations_and_significant_stimuli(study):
    flags, presented = study
    out = system_flag_rates(flags, presented).set_index("system")
    assert (out.loc["voc", "presentations"], out.loc["voc", "flagged_presentations"]) == (20, 10)
    assert out.loc["voc", "stimuli_significant"] == 1 and out.loc["ref", "stimuli_significant"] == 0
    assert out.loc["ref", "share"] == pytest.approx(0.05)


def test_density_is_the_share_of_listeners_covering_each_time_step(study):
    flags, presented = study
    times, shares = flag_density(flags, presented, "art", resolution_s=0.01)
    assert len(times) == 500 and times[0] == pytest.approx(0.005)
    at = lambda t: shares[int(t / 0.01)]  # noqa: E731
    assert at(2.25) == pytest.approx(0.8)  # l0's overlapping second flag does not count twice
    assert at(4.1) == pytest.approx(0.5) and at(0.55) == pytest.approx(0.1) and at(3.0) == 0


def test_regions_are_found_at_the_planted_times_with_the_right_share_and_categories(study):
    flags, presented = study
    regions = flag_regions(flags, presented, min_share=0.3)
    assert list(regions["stimulus"]) == ["art", "art"]
    click, buzz = regions.iloc[0], regions.iloc[1]
    assert click["start_s"] == pytest.approx(2.0, abs=0.02) and click["end_s"] == pytest.approx(2.5, abs=0.02)
    assert click["peak_share"] == pytest.approx(0.8) and click["n_listeners"] == 8 and click["heard"] == 10
    assert click["categories"] == {"click": 8} and click["listeners"] == LISTENERS[:8]
    assert (buzz["start_s"], buzz["end_s"]) == pytest.approx((4.0, 4.2), abs=0.011)
    assert buzz["peak_share"] == pytest.approx(0.5) and buzz["categories"] == {"buzz": 5}
    assert (click["item"], click["system"], click["role"]) == ("i1", "voc", "system")
    higher = flag_regions(flags, presented, min_share=0.6)
    assert len(higher) == 1 and higher["peak_share"].iloc[0] == pytest.approx(0.8)


def test_nearby_spans_are_merged_and_point_flags_cover_one_step():
    presented = pd.DataFrame(
        [(l, "s", "i", "v", "system", 2.0) for l in LISTENERS[:4]],
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )
    flags = pd.DataFrame(
        [(l, "s", 0.50, 0.60, "click") for l in LISTENERS[:4]]
        + [(l, "s", 0.65, 0.70, "click") for l in LISTENERS[:4]]
        + [(l, "s", 1.5, 1.5, "pop") for l in LISTENERS[:3]],
        columns=["listener", "stimulus", "start_s", "end_s", "category"],
    )
    regions = flag_regions(flags, presented, min_share=0.5, merge_gap_s=0.1)
    np.testing.assert_allclose(
        regions[["start_s", "end_s"]].to_numpy(float), [[0.5, 0.7], [1.5, 1.51]], atol=1e-9
    )
    assert regions["categories"].iloc[1] == {"pop": 3}
    assert len(flag_regions(flags, presented, min_share=0.5, merge_gap_s=0.0)) == 3


def test_flag_edges_that_are_not_exact_binary_fractions_land_on_their_own_time_step():
    presented = pd.DataFrame(
        [(l, "s", "i", "v", "system", 1.0) for l in LISTENERS[:2]],
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )
    flags = pd.DataFrame(
        [(l, "s", 0.29, 0.31, "click") for l in LISTENERS[:2]],
        columns=["listener", "stimulus", "start_s", "end_s", "category"],
    )
    region = flag_regions(flags, presented, min_share=0.5).iloc[0]
    assert (region["start_s"], region["end_s"]) == pytest.approx((0.29, 0.31), abs=1e-9)


# --- the single-pass implementations against the ones they replace ----------------------------------------------


def presentation_reference(flags, presented):
    """presentation_flags as first written (groupby + MultiIndex joins)."""
    heard = (
        presented.groupby(["listener", "stimulus"], sort=True)
        .agg(
            item=("item", "first"),
            system=("system", "first"),
            role=("role", "first"),
            duration_s=("duration_s", "max"),
        )
        .reset_index()
    )
    f = flags.copy()
    f["start_s"] = pd.to_numeric(f["start_s"], errors="coerce").astype(float)
    f["end_s"] = pd.to_numeric(f["end_s"], errors="coerce").astype(float)
    f["category"] = f["category"].astype(object).where(f["category"].notna(), "unspecified")
    f = f.loc[
        pd.MultiIndex.from_frame(f[["listener", "stimulus"]]).isin(
            pd.MultiIndex.from_frame(heard[["listener", "stimulus"]])
        )
    ]
    f["length"] = (f["end_s"] - f["start_s"]).clip(lower=0).fillna(0.0)
    count = f.groupby(["listener", "stimulus"]).size().rename("n_flags")
    by_cat = (
        f.groupby(["listener", "stimulus", "category"])["length"]
        .sum()
        .reset_index()
        .sort_values(["listener", "stimulus", "length", "category"], ascending=[True, True, False, True])
    )
    main = by_cat.drop_duplicates(["listener", "stimulus"]).set_index(["listener", "stimulus"])["category"]
    out = heard.join(count, on=["listener", "stimulus"]).join(main, on=["listener", "stimulus"])
    out["n_flags"] = out["n_flags"].fillna(0).astype(int)
    out["flagged"] = out["n_flags"] > 0
    out["category"] = out["category"].astype(object).where(out["flagged"], None)
    return out


def random_study(seed, *, duplicates=False):
    rng = np.random.default_rng(seed)
    stimuli = [
        (f"s{k:02d}", f"i{k % 5}", f"sys{k % 3}", "hidden_reference" if k % 7 == 0 else "system")
        for k in range(30)
    ]
    presented = pd.DataFrame(
        [
            (f"l{l}", s, i, sy, role, 3.0)
            for l in range(12)
            for s, i, sy, role in stimuli
            if rng.random() < 0.8
        ],
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )
    if duplicates:  # the same stimulus given twice to a listener, once without a duration
        presented = pd.concat([presented, presented.head(20).assign(duration_s=np.nan)])
    picked = presented.sample(90, replace=True, random_state=seed)
    start = rng.uniform(0, 2.5, 90).round(2)
    flags = pd.DataFrame(
        {
            "listener": picked["listener"].to_numpy(),
            "stimulus": picked["stimulus"].to_numpy(),
            "start_s": start,
            "end_s": start + rng.choice([0.0, 0.1, 0.3], 90),
            "category": rng.choice(["click", "buzz", None], 90),
        }
    )
    flags.loc[flags.index[:4], ["start_s", "end_s"]] = None  # untimed flags count for rates only
    return flags, presented


@pytest.mark.parametrize("duplicates", [False, True])
def test_presentation_flags_equal_the_groupby_reference(duplicates):
    flags, presented = random_study(50, duplicates=duplicates)
    stray = pd.DataFrame([("l99", "s01", 1.0, 1.1, "click")], columns=flags.columns)
    with pytest.warns(UserWarning, match="1 flag"):
        ours = presentation_flags(pd.concat([flags, stray]), presented)
    expected = presentation_reference(flags, presented)
    pd.testing.assert_frame_equal(
        ours.astype(object), expected[ours.columns].astype(object), check_exact=True
    )


def test_rates_test_each_stimulus_as_binomtest_does():
    flags, presented = random_study(51)
    rates = flag_rates(flags, presented)
    pres = presentation_reference(flags, presented)
    for row in rates.itertuples():
        mine = pres.loc[pres["stimulus"] == row.stimulus]
        assert (row.heard, row.flagged) == (mine["listener"].nunique(), int(mine["flagged"].sum()))
        assert row.p == sps.binomtest(row.flagged, row.heard, row.baseline_rate, alternative="greater").pvalue


def regions_reference(
    flags, presented, *, resolution_s=0.01, min_share=0.3, min_listeners=2, merge_gap_s=0.1
):
    """flag_regions as first written: frames filtered per stimulus and flag_density called for each."""
    from evalsite.analysis.flags import _runs, _stimulus_frames

    info = presented.groupby("stimulus").agg(
        item=("item", "first"), system=("system", "first"), role=("role", "first")
    )
    rows = []
    for stimulus in sorted(set(flags["stimulus"]) & set(presented["stimulus"]), key=str):
        f, listeners, _ = _stimulus_frames(flags, presented, stimulus)
        if f.empty:
            continue
        _, shares = flag_density(flags, presented, stimulus, resolution_s=resolution_s)
        for b0, b1 in _runs(shares >= min_share - 1e-12, max_gap_bins=int(round(merge_gap_s / resolution_s))):
            start, end = b0 * resolution_s, b1 * resolution_s
            inside = f.loc[
                (f["start_s"] < end) & (np.maximum(f["end_s"], f["start_s"] + resolution_s) > start)
            ]
            who = sorted(inside["listener"].unique(), key=str)
            if len(who) < min_listeners:
                continue
            cats = inside.drop_duplicates(["listener", "category"])["category"].value_counts()
            rows.append(
                dict(
                    stimulus=stimulus,
                    **info.loc[stimulus].to_dict(),
                    start_s=float(start),
                    end_s=float(end),
                    peak_share=float(shares[b0:b1].max()),
                    n_listeners=len(who),
                    heard=len(listeners),
                    listeners=who,
                    categories={str(k): int(v) for k, v in cats.sort_index().items()},
                )
            )
    return rows


@pytest.mark.parametrize("min_share", [0.1, 0.25])
def test_regions_equal_the_per_stimulus_reference(min_share):
    flags, presented = random_study(52)
    ours = flag_regions(flags, presented, min_share=min_share).to_dict("records")
    assert ours == regions_reference(flags, presented, min_share=min_share) and len(ours) >= 1
