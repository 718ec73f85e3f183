import json

import numpy as np
import pandas as pd
import pytest

from evalsite.analysis.screening import (
    AgreementRule,
    Bs1534Rule,
    ConstantRule,
    QcRule,
    ScreeningRules,
    apply_screening,
    screen_listeners,
)
from evalsite.analysis.stats import system_scores

N_ITEMS = 20
SYSTEMS = {"sys_a": 75.0, "sys_b": 55.0, "sys_c": 35.0}


def good_listener(rng, listener, *, ref=None, anchor=None):
    """Ratings of an attentive MUSHRA listener; ``ref``/``anchor`` override {item: score}."""
    ref, anchor, rows = ref or {}, anchor or {}, []
    for item in range(N_ITEMS):
        offset = rng.normal(0, 5)
        rows += [
            (listener, item, "ref", "hidden_reference", ref.get(item, rng.uniform(92, 100))),
            (listener, item, "lp70", "anchor_lp70", anchor.get(item, np.clip(rng.normal(60, 6), 0, 100))),
            (listener, item, "lp35", "anchor_lp35", np.clip(rng.normal(20, 6), 0, 100)),
        ]
        rows += [
            (listener, item, s, "system", np.clip(m + offset + rng.normal(0, 8), 0, 100))
            for s, m in SYSTEMS.items()
        ]
    return rows


def frame(rows):
    return pd.DataFrame(rows, columns=["listener", "item", "system", "role", "score"])


@pytest.fixture(scope="module")
def panel():
    """10 good listeners and four planted bad ones."""
    rng = np.random.default_rng(20)
    rows = []
    for k in range(10):
        rows += good_listener(rng, f"good{k}")
    rows += good_listener(rng, "bad_ref", ref={i: 70.0 for i in range(6)})  # 6 of 20 items = 30 %
    rows += good_listener(rng, "bad_anchor", anchor={i: 95.0 for i in range(0, 16, 2)})  # 8 of 20 = 40 %
    rows += [(l, i, s, role, 50.0) for (l, i, s, role, _) in good_listener(rng, "constant")]
    rows += [(l, i, s, role, rng.uniform(0, 100)) for (l, i, s, role, _) in good_listener(rng, "random")]
    return frame(rows)


def reasons(screening):
    return {l: set(g["rule"]) for l, g in screening.excluded.groupby("listener")}


def test_planted_bad_listeners_are_excluded_with_the_right_reasons_and_good_ones_kept(panel):
    s = screen_listeners(panel, kind="mushra")
    got = reasons(s)
    assert set(got) == {"bad_ref", "bad_anchor", "constant", "random"}
    assert got["bad_ref"] == {"bs1534_reference"}
    assert got["bad_anchor"] == {"bs1534_anchor"}
    assert {"constant", "bs1534_reference"} <= got["constant"] and "agreement" not in got["constant"]
    assert {"agreement", "bs1534_reference"} <= got["random"]
    assert s.kept_listeners == tuple(f"good{k}" for k in range(10))
    assert s.excluded_listeners == ("bad_anchor", "bad_ref", "constant", "random")


def test_reasons_are_sentences_with_the_numbers(panel):
    ex = screen_listeners(panel, kind="mushra").excluded.set_index(["listener", "rule"])["reason"]
    assert (
        ex[("bad_ref", "bs1534_reference")]
        == "rated the hidden reference below 90 on 6 of 20 items (30 % > 15 %)"
    )
    assert ex[("bad_anchor", "bs1534_anchor")] == (
        "rated the mid-range anchor (anchor_lp70) above 90 on 8 of 20 items (40 % > 15 %)"
    )
    assert ex[("constant", "constant")].startswith(
        "scores of all stimuli have SD 0.00 over 120 ratings (< 5)"
    )
    assert "Spearman correlation with the other listeners' mean is" in ex[("random", "agreement")]


def test_agreement_rule_records_where_it_could_not_be_applied(panel):
    s = screen_listeners(panel, kind="mushra")
    row = s.not_applied.set_index(["listener", "rule"]).loc[("constant", "agreement"), "reason"]
    assert "constant" in row
    few = panel.loc[panel["item"] < 1]  # 6 cells per listener
    s = screen_listeners(
        few, kind="mushra", rules=ScreeningRules(agreement=AgreementRule(min_common_cells=10))
    )
    assert set(s.not_applied.loc[s.not_applied["rule"] == "agreement", "listener"]) == set(panel["listener"])
    assert "only 6 cells shared" in s.not_applied["reason"].iloc[-1]


def test_anchor_rule_leaves_out_items_where_most_listeners_rate_the_anchor_high():
    rng = np.random.default_rng(21)
    rows = []
    for k in range(10):  # on items 0 and 1 the 7 kHz anchor is transparent: 6 of 10 listeners rate it 95
        high = {0: 95.0, 1: 95.0} if k < 6 else {}
        if k == 0:
            high.update({2: 95.0, 3: 95.0})  # listener 0: 4 of 20 items, but 2 of them are guarded
        rows += good_listener(rng, f"l{k}", anchor=high)
    ratings = frame(rows)
    only_bs = dict(qc=None, constant=None, agreement=None)
    guarded = screen_listeners(ratings, kind="mushra", rules=ScreeningRules(**only_bs))
    assert guarded.excluded.empty and len(guarded.kept_listeners) == 10
    unguarded = screen_listeners(
        ratings, kind="mushra", rules=ScreeningRules(bs1534=Bs1534Rule(anchor_item_guard=1.0), **only_bs)
    )
    assert list(unguarded.excluded["listener"]) == ["l0"]
    assert "on 4 of 20 items (20 % > 15 %)" in unguarded.excluded["reason"].iloc[0]
    # a listener over the limit on the unguarded items is told how many items were left out
    rows = good_listener(rng, "l_bad", anchor={0: 95.0, 1: 95.0, 4: 95.0, 5: 95.0, 6: 95.0})
    s = screen_listeners(pd.concat([ratings, frame(rows)]), kind="mushra", rules=ScreeningRules(**only_bs))
    assert list(s.excluded["listener"]) == ["l_bad"]
    assert s.excluded["reason"].iloc[0] == (
        "rated the mid-range anchor (anchor_lp70) above 90 on 3 of 18 items (17 % > 15 %); 2 items where more "
        "than 25 % of listeners rated the anchor above 90 were left out"
    )


def test_bs1534_rule_says_it_could_not_run_without_a_mid_anchor(panel):
    s = screen_listeners(panel.loc[panel["role"] != "anchor_lp70"], kind="mushra")
    row = s.not_applied.loc[s.not_applied["rule"] == "bs1534_anchor"]
    assert len(row) == 1 and row["listener"].isna().all()
    assert row["reason"].iloc[0] == "no ratings with role 'anchor_lp70'; rule not run"
    assert "bs1534_reference" in set(s.excluded["rule"])


def test_bs1534_rule_runs_for_mushra_only():
    rng = np.random.default_rng(22)
    ratings = frame(good_listener(rng, "a", ref={i: 50.0 for i in range(N_ITEMS)}) + good_listener(rng, "b"))
    assert "bs1534_reference" in set(screen_listeners(ratings, kind="mushra").excluded["rule"])
    assert "bs1534_reference" not in set(screen_listeners(ratings, kind="mos").excluded["rule"])


def mos_panel(rng, n=8, items=20):
    rows = [
        (f"p{k}", i, s, "system", float(np.clip(round(m + rng.normal(0, 0.7)), 1, 5)))
        for k in range(n)
        for i in range(items)
        for s, m in {"x": 4.0, "y": 2.5}.items()
    ]
    return pd.DataFrame(rows, columns=["listener", "item", "system", "role", "score"])


def test_gold_and_trapping_failures_exclude_above_the_allowed_number():
    ratings = mos_panel(np.random.default_rng(23))
    qc = {
        "p0": {"gold": {"passed": 2, "total": 3}, "trapping": {"passed": 2, "total": 2}},
        "p1": {"gold": {"passed": 3, "total": 3}, "trapping": {"passed": 0, "total": 2}},
        "p2": {"gold": {"passed": 3, "total": 3}},
        "nobody": {"gold": {"passed": 0, "total": 3}},
    }
    s = screen_listeners(ratings, kind="mos", qc=qc)
    assert s.excluded[["listener", "rule", "reason"]].values.tolist() == [
        ["p0", "qc_gold", "failed 1 of 3 gold questions (more than 0 allowed)"],
        ["p1", "qc_trapping", "failed 2 of 2 trapping questions (more than 0 allowed)"],
    ]
    lenient = screen_listeners(ratings, kind="mos", qc=qc, rules=ScreeningRules(qc=QcRule(max_failures=1)))
    assert list(lenient.excluded["listener"]) == ["p1"]


def test_same_answer_on_almost_every_trial_is_a_constant_rater_even_with_some_spread():
    ratings = mos_panel(np.random.default_rng(24))
    straight = pd.DataFrame(
        {
            "listener": "lazy",
            "item": range(40),
            "system": ["x", "y"] * 20,
            "role": "system",
            "score": [4.0] * 38 + [1.0, 1.0],
        }
    )
    s = screen_listeners(pd.concat([ratings, straight]), kind="mos")
    row = s.excluded.set_index("listener").loc["lazy"]
    assert row["rule"] == "constant"
    assert row["reason"] == "gave the same answer (4) on 38 of 40 ratings of system stimuli (95 % > 90 %)"
    relaxed = screen_listeners(
        pd.concat([ratings, straight]),
        kind="mos",
        rules=ScreeningRules(constant=ConstantRule(max_same_share=0.96)),
    )
    assert "lazy" in relaxed.kept_listeners


def test_switched_off_rules_do_not_run_and_the_rules_used_can_be_printed(panel):
    off = ScreeningRules(bs1534=None, qc=None, constant=None, agreement=None)
    s = screen_listeners(panel, kind="mushra", rules=off)
    assert s.excluded.empty and len(s.kept_listeners) == 14
    text = screen_listeners(panel, kind="mushra").describe_rules()
    assert text[0].startswith("ITU-R BS.1534-3 §4.1.2") and "more than 15 % of items" in text[0]
    assert any(
        "SD of all of a listener's scores (hidden reference, anchors and systems) below 5" in t for t in text
    )
    assert not any("gold" in t for t in text)  # no QC data given: the QC rule did not run
    params = screen_listeners(panel, kind="mushra").parameters()
    assert (
        params["bs1534"]["max_share"] == 0.15 and params["constant"]["min_sd"] == 5.0 and params["qc"] is None
    )
    assert screen_listeners(panel, kind="mos", qc={"good0": {}}).parameters()["bs1534"] is None
    json.dumps(params)


def test_apply_screening_keeps_only_kept_listeners_so_scores_can_be_shown_both_ways(panel):
    s = screen_listeners(panel, kind="mushra")
    kept = apply_screening(panel, s)
    assert set(kept["listener"]) == set(s.kept_listeners)
    before = system_scores(panel, kind="mushra", n_boot=0).set_index("system")
    after = system_scores(kept, kind="mushra", n_boot=0).set_index("system")
    assert after.loc["ref", "mean"] > before.loc["ref", "mean"]
    assert after.loc["ref", "listeners"] == 10 and before.loc["ref", "listeners"] == 14


# --- the vectorised rules against the per-listener loops they replace -------------------------------------------


def agreement_reference(frame, rule):
    """The agreement rule as first written: a boolean mask and a SciPy call per listener."""
    from scipy import stats as sps

    out, skipped = [], []
    units = ["item", "system"] + (["comparison"] if "comparison" in frame else [])
    cell = frame.groupby(["listener", *units], sort=True)["score"].mean().reset_index()
    totals = cell.groupby(units)["score"].agg(["sum", "count"])
    cell = cell.join(totals, on=units)
    cell = cell.loc[cell["count"] >= 2]
    cell["loo"] = (cell["sum"] - cell["score"]) / (cell["count"] - 1)
    corr = sps.spearmanr if rule.method == "spearman" else sps.pearsonr
    for listener in sorted(frame["listener"].unique(), key=str):
        g = cell.loc[cell["listener"] == listener]
        if len(g) < rule.min_common_cells:
            skipped.append((listener, f"only {len(g)}"))
            continue
        x, y = g["score"].to_numpy(float), g["loo"].to_numpy(float)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            skipped.append((listener, "constant"))
            continue
        r = float(corr(x, y)[0])
        out.append((listener, f"{r:.2f}", r < rule.min_r))
    return out, skipped


def messy_panel(seed):
    """Listeners with missing cells, repeats, ties, a constant one and one with too few shared cells."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(14):
        taste = rng.normal(0, 1)
        for item in range(12):
            for s, m in SYSTEMS.items():
                if rng.random() < 0.25:
                    continue
                score = (
                    round(float(np.clip(m + 20 * taste * (s == "sys_c") + rng.normal(0, 15), 0, 100)) / 5) * 5
                )
                rows.append((f"p{k:02d}", item, s, "system", score))
    rows += [("flat", item, s, "system", 40.0) for item in range(6) for s in SYSTEMS]
    rows += [("late", 0, "sys_a", "system", 70.0), ("late", 0, "sys_b", "system", 20.0)]
    ratings = frame(rows)
    return pd.concat([ratings, ratings.sample(25, random_state=seed).assign(score=lambda d: d["score"] + 5)])


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("seed", range(3))
def test_the_agreement_rule_decides_as_the_per_listener_scipy_loop(method, seed):
    from evalsite.analysis.screening import _agreement

    ratings = messy_panel(70 + seed)
    rule = AgreementRule(method=method, min_r=0.35)
    found, missed = _agreement(ratings, rule)
    judged, skipped = agreement_reference(ratings, rule)
    assert [e["listener"] for e in found] == [l for l, _, bad in judged if bad]
    for e in found:
        assert f"is {dict((l, r) for l, r, _ in judged)[e['listener']]} over" in e["reason"]
    assert [(e["listener"], e["reason"].split(" cells")[0].split(" scores")[0]) for e in missed] == [
        (l, "only " + why.split()[1] if why.startswith("only") else "constant") for l, why in skipped
    ]


def test_the_vectorised_spearman_equals_scipy_per_listener():
    from scipy import stats as sps

    from evalsite.analysis.screening import _grouped_pearson, _grouped_ranks

    rng = np.random.default_rng(73)
    groups = rng.integers(0, 25, 4000)
    x, y = rng.integers(0, 8, 4000).astype(float), rng.normal(0, 1, 4000).round(1)
    got = _grouped_pearson(groups, _grouped_ranks(groups, x), _grouped_ranks(groups, y), 25)
    for k in range(25):
        assert got[k] == pytest.approx(sps.spearmanr(x[groups == k], y[groups == k])[0], abs=1e-13)
        np.testing.assert_array_equal(_grouped_ranks(groups, x)[groups == k], sps.rankdata(x[groups == k]))


def test_a_correlation_exactly_at_the_threshold_is_decided_as_scipy_decides_it():
    from scipy import stats as sps

    from evalsite.analysis.screening import _agreement

    ratings = messy_panel(74)
    cell = ratings.groupby(["listener", "item", "system"], sort=True)["score"].mean().reset_index()
    totals = cell.groupby(["item", "system"])["score"].agg(["sum", "count"])
    cell = cell.join(totals, on=["item", "system"]).query("count >= 2")
    mine = cell.loc[cell["listener"] == "p03"]
    r = float(sps.spearmanr(mine["score"], (mine["sum"] - mine["score"]) / (mine["count"] - 1))[0])
    at, above = (
        _agreement(ratings, AgreementRule(min_r=r))[0],
        _agreement(ratings, AgreementRule(min_r=float(np.nextafter(r, 2.0))))[0],
    )
    assert "p03" not in {e["listener"] for e in at}  # r < r is false
    assert "p03" in {e["listener"] for e in above}


def test_the_constant_rule_decides_as_the_per_listener_loop():
    ratings = messy_panel(75)
    lazy = pd.DataFrame(
        {
            "listener": "lazy",
            "item": range(30),
            "system": "sys_a",
            "role": "system",
            "score": [60.0] * 28 + [10.0, 90.0],
        }
    )
    ratings = pd.concat([ratings, lazy, ratings.assign(role="hidden_reference").head(40)])
    systems_only = ConstantRule(judged_on="systems")
    s = screen_listeners(
        ratings, kind="mushra", rules=ScreeningRules(bs1534=None, agreement=None, constant=systems_only)
    )
    system = ratings.loc[ratings["role"] == "system"]
    expected, too_few = {}, set()
    for listener in sorted(ratings["listener"].unique(), key=str):
        x = system.loc[system["listener"] == listener, "score"].to_numpy(float)
        if len(x) < 5:
            too_few.add(listener)
            continue
        values, counts = np.unique(x, return_counts=True)
        if np.std(x, ddof=1) < 5 or counts.max() / len(x) > 0.9:
            expected[listener] = (np.std(x, ddof=1), counts.max())
    assert set(s.excluded["listener"]) == set(expected) == {"flat", "lazy"}
    assert set(s.not_applied.loc[s.not_applied["rule"] == "constant", "listener"]) == too_few == {"late"}
    assert (
        "gave the same answer (60) on 28 of 30 ratings of system stimuli"
        in s.excluded.set_index("listener").loc["lazy", "reason"]
    )


# --- every rule keeps a discriminating listener (issue 16: screening kept the wrong listener) --------------------

CHECKPOINTS = {"ckpt_a": 52.0, "ckpt_b": 55.0, "ckpt_c": 58.0, "ckpt_d": 61.0}  # one run's checkpoints: close


def discriminating_listener(rng, listener, *, items=12):
    """The demo-mushra listener: hidden reference 100, anchors 5-47, checkpoints 44-68 with an SD under 5."""
    rows = []
    for item in range(items):
        rows += [
            (listener, item, "ref", "hidden_reference", 100.0),
            (listener, item, "lp35", "anchor_lp35", float(rng.integers(5, 21))),
            (listener, item, "lp70", "anchor_lp70", float(rng.integers(30, 48))),
        ]
        rows += [
            (listener, item, s, "system", float(np.clip(round(m + rng.normal(0, 1.0)), 44, 68)))
            for s, m in CHECKPOINTS.items()
        ]
    return rows


@pytest.fixture(scope="module")
def close_systems():
    """Six discriminating MUSHRA listeners and a straight-liner who gives every sound, reference too, about 50."""
    rng = np.random.default_rng(160)
    rows = []
    for k in range(6):
        rows += discriminating_listener(rng, f"ear{k}")
    rows += [
        (l, i, s, role, 50.0 + rng.integers(-2, 3))
        for (l, i, s, role, _) in discriminating_listener(rng, "flat")
    ]
    return frame(rows)


def only(**rule):
    off = dict(bs1534=None, qc=None, constant=None, agreement=None)
    return ScreeningRules(**{**off, **rule})


def test_the_discriminating_listener_separates_reference_anchors_and_systems_but_not_the_systems_much(
    close_systems,
):
    ear = close_systems.loc[close_systems["listener"] == "ear0"]
    systems = ear.loc[ear["role"] == "system", "score"]
    assert systems.std(ddof=1) < 5 and systems.between(44, 68).all()  # the case issue 16 reported
    assert (ear.loc[ear["role"] == "hidden_reference", "score"] == 100).all()
    assert ear.loc[ear["role"].str.startswith("anchor"), "score"].between(5, 47).all()


def test_every_default_rule_keeps_the_discriminating_listeners_and_drops_the_straight_liner(close_systems):
    s = screen_listeners(close_systems, kind="mushra")
    assert s.kept_listeners == tuple(f"ear{k}" for k in range(6))
    assert s.excluded_listeners == ("flat",)


def test_the_bs1534_rule_keeps_a_listener_who_finds_the_reference_and_drops_one_who_does_not(close_systems):
    s = screen_listeners(close_systems, kind="mushra", rules=only(bs1534=Bs1534Rule()))
    assert "ear0" in s.kept_listeners
    assert s.excluded.values.tolist() == [
        ["flat", "bs1534_reference", "rated the hidden reference below 90 on 12 of 12 items (100 % > 15 %)"]
    ]


def test_the_mushra_constant_rule_keeps_close_systems_and_drops_a_flat_rater_over_all_ratings(close_systems):
    s = screen_listeners(close_systems, kind="mushra", rules=only(constant=ConstantRule()))
    assert s.kept_listeners == tuple(f"ear{k}" for k in range(6))
    (reason,) = s.excluded.loc[s.excluded["listener"] == "flat", "reason"]
    sd = close_systems.loc[close_systems["listener"] == "flat", "score"].std(ddof=1)
    assert reason == f"scores of all stimuli have SD {sd:.2f} over 84 ratings (< 5)"
    assert s.parameters()["constant"]["judged_on"] == "all"
    # judged on the systems alone (the rule as it was), the discriminating listeners would all have gone
    old = screen_listeners(
        close_systems, kind="mushra", rules=only(constant=ConstantRule(judged_on="systems"))
    )
    assert set(old.excluded_listeners) == {f"ear{k}" for k in range(6)} | {"flat"}


def test_the_mos_constant_rule_keeps_a_listener_who_uses_the_scale_and_drops_one_answer_for_everything():
    rng = np.random.default_rng(161)
    ratings = mos_panel(rng)
    ratings = pd.concat(
        [ratings, ratings.loc[ratings["listener"] == "p0"].assign(listener="fours", score=4.0)]
    )
    s = screen_listeners(ratings, kind="mos", rules=only(constant=ConstantRule()))
    assert s.excluded_listeners == ("fours",) and "p0" in s.kept_listeners
    assert s.excluded["reason"].iloc[0] == "scores of system stimuli have SD 0.00 over 40 ratings (< 0.25)"
    assert s.parameters()["constant"]["judged_on"] == "systems"


def test_the_qc_rule_keeps_a_discriminating_listener_who_passed_and_drops_one_who_failed(close_systems):
    qc = {"ear0": {"gold": {"passed": 1, "total": 1}, "trapping": {"passed": 1, "total": 1}}}
    qc["ear1"] = {"gold": {"passed": 0, "total": 1}}
    s = screen_listeners(close_systems, kind="mushra", qc=qc, rules=only(qc=QcRule()))
    assert s.excluded.values.tolist() == [
        ["ear1", "qc_gold", "failed 1 of 1 gold questions (more than 0 allowed)"]
    ]
    assert "ear0" in s.kept_listeners


def test_the_agreement_rule_keeps_the_discriminating_listeners_and_drops_one_who_reverses_them(close_systems):
    reversed_ = close_systems.loc[close_systems["listener"] == "ear0"].assign(listener="upside_down")
    reversed_["score"] = 100.0 - reversed_["score"]
    ratings = pd.concat([close_systems.loc[close_systems["listener"] != "flat"], reversed_])
    s = screen_listeners(ratings, kind="mushra", rules=only(agreement=AgreementRule()))
    assert s.kept_listeners == tuple(f"ear{k}" for k in range(6))
    assert s.excluded_listeners == ("upside_down",)
    assert s.excluded["reason"].iloc[0].startswith("Spearman correlation with the other listeners' mean is -")
