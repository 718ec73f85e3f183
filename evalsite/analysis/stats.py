"""Scores, preference rates, pairwise tests and a mixed model for listening-test ratings.

Input conventions (shared by every module of :mod:`evalsite.analysis`). All frames are long format, one row
per answer; ids may be strings or integers.

Ratings frame (MOS, SMOS, MUSHRA, and CMOS with the extra column below)
    ``listener``, ``item``, ``system``, ``score`` (float). Optional ``role``, one of ``"system"``,
    ``"hidden_reference"``, ``"anchor_lp35"``, ``"anchor_lp70"`` (MUSHRA; the 7 kHz low-pass ``anchor_lp70``
    is the mid-range anchor of ITU-R BS.1534-3). A listener may rate the same (item, system) more than
    once; functions say how repeats are combined. Rows with a missing score are dropped.
CMOS frame
    ``listener``, ``item``, ``system``, ``comparison``, ``score``: the score of ``system`` relative to
    ``comparison``, already sign-corrected, on the P.800 CCR scale -3..3.
AB frame
    ``listener``, ``item``, ``a``, ``b``, ``preferred``: ``preferred`` equals ``a`` or ``b``, or is
    None/NaN for "no preference".
Flags frame (see :mod:`evalsite.analysis.flags`)
    ``listener``, ``stimulus``, ``item``, ``system``, ``role``, ``start_s``, ``end_s``, ``category``;
    with a presented frame ``listener``, ``stimulus``, ``item``, ``system``, ``role``, ``duration_s``
    saying which listener heard which stimulus.

Test kinds: ``"mos"`` and ``"smos"`` (5-point ACR-style scales), ``"mushra"`` (0-100), ``"cmos"`` (-3..3).

Outputs are DataFrames (with a sentence on the method in ``DataFrame.attrs["method"]``) or dicts of plain
Python floats, ints, strings and lists, ready for JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

KINDS = ("mos", "smos", "mushra", "cmos")
RATING_COLUMNS = ("listener", "item", "system", "score")
AB_COLUMNS = ("listener", "item", "a", "b", "preferred")
MIN_WILCOXON_PAIRS = 6
"""Smallest n for which an exact two-sided Wilcoxon signed-rank p can fall below 0.05 (2/2**6 = 0.031)."""

_BOOT_CHUNK_CELLS = 4_000_000


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a ValueError naming the missing and the present columns, so a wrong frame is obvious."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks column(s) {missing}; it has {list(frame.columns)}")


def _check_kind(kind: str) -> None:
    """Refuse an unknown test kind with the list of known ones."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")


def _clean_ratings(ratings: pd.DataFrame, *, kind: str) -> pd.DataFrame:
    """Check columns and drop rows without a score, so every function sees the same clean votes."""
    _check_kind(kind)
    columns = list(RATING_COLUMNS) + (["comparison"] if kind == "cmos" and "comparison" in ratings else [])
    _require_columns(ratings, columns, "ratings")
    out = ratings.copy()
    out["score"] = pd.to_numeric(out["score"], errors="coerce").astype(float)
    return out.loc[out["score"].notna()]


def _group_columns(frame: pd.DataFrame, kind: str) -> list[str]:
    """CMOS scores are relative to a comparison, so a CMOS 'system' is a (system, comparison) pair."""
    return ["system", "comparison"] if kind == "cmos" and "comparison" in frame else ["system"]


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests``); NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def _cluster_bootstrap_means(
    frame: pd.DataFrame, group_cols: list[str], *, n_boot: int, seed: int
) -> tuple[list[tuple], np.ndarray]:
    """Two-way (listener × item) cluster bootstrap of per-group means; returns group keys and (n_boot, G) means.

    Each resample draws listeners with replacement and items with replacement; a rating enters with weight
    (times its listener was drawn) × (times its item was drawn), i.e. all ratings of the crossed cells are
    kept (Owen 2007, "the pigeonhole bootstrap"). Sums and counts per (listener; item, group) are held in one
    sparse matrix, so a chunk of resamples is one sparse × dense product.
    """
    l_codes, _ = pd.factorize(frame["listener"], sort=True)
    i_codes, _ = pd.factorize(frame["item"], sort=True)
    keys = frame[group_cols].apply(tuple, axis=1) if len(group_cols) > 1 else frame[group_cols[0]]
    g_codes, g_uniques = pd.factorize(keys, sort=True)
    n_l, n_i, n_g = int(l_codes.max()) + 1, int(i_codes.max()) + 1, len(g_uniques)
    cells = n_i * n_g
    col = i_codes * n_g + g_codes
    scores = frame["score"].to_numpy(float)
    mat = sparse.csr_matrix(
        (np.concatenate([scores, np.ones_like(scores)]),
         (np.concatenate([l_codes, l_codes]), np.concatenate([col, col + cells]))),
        shape=(n_l, 2 * cells),
    )
    mat_t = mat.T.tocsr()
    rng = np.random.default_rng(seed)
    w_l = _draw_counts(rng, n_boot, n_l)
    w_i = _draw_counts(rng, n_boot, n_i)
    means = np.empty((n_boot, n_g))
    chunk = max(1, min(n_boot, _BOOT_CHUNK_CELLS // (2 * cells)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        by_listener = (mat_t @ w_l[start:stop].T).reshape(2, n_i, n_g, stop - start)
        sums_counts = np.einsum("kigb,bi->kbg", by_listener, w_i[start:stop])
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start:stop] = sums_counts[0] / sums_counts[1]
    keys_out = [k if isinstance(k, tuple) else (k,) for k in g_uniques]
    return keys_out, means


def _draw_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """How often each of n clusters is drawn in each of n_boot resamples with replacement (integer draws)."""
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def system_scores(
    ratings: pd.DataFrame,
    *,
    kind: str,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per-system mean with a t-interval and a listener × item cluster-bootstrap interval.

    The t-interval treats every vote as independent (what most papers report); the bootstrap interval
    resamples listeners and items (two-way cluster bootstrap, percentile interval), which is what the
    uncertainty of a score generalising to new listeners and new items needs. Resamples in which a system
    has no rating are ignored (NaN-aware percentiles).

    Args:
        ratings: Ratings frame (``listener``, ``item``, ``system``, ``score``, optional ``role``); for
            ``kind="cmos"`` a CMOS frame, scored per (``system``, ``comparison``).
        kind: ``"mos"``, ``"smos"``, ``"mushra"`` or ``"cmos"``.
        n_boot: Number of bootstrap resamples (0 skips the bootstrap).
        seed: Seed of the NumPy generator; the same seed gives the same interval.
        confidence: Two-sided confidence level of both intervals.

    Returns:
        One row per system (per system and comparison for CMOS): ``n`` (ratings), ``listeners``,
        ``items``, ``mean``, ``sd``, ``ci_low``/``ci_high`` (t), ``boot_low``/``boot_high``; for MUSHRA
        also ``median``, ``q1``, ``q3``, ``iqr``; ``role`` when the input has one.

    Example:
        >>> r = pd.DataFrame({"listener": [1, 1, 2, 2], "item": ["a", "b", "a", "b"],
        ...                   "system": "x", "score": [4.0, 3.0, 5.0, 4.0]})
        >>> system_scores(r, kind="mos", n_boot=200)[["system", "n", "mean"]].to_dict("records")
        [{'system': 'x', 'n': 4, 'mean': 4.0}]
    """
    frame = _clean_ratings(ratings, kind=kind)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    group_cols = _group_columns(frame, kind)
    tail = (1 - confidence) / 2
    rows = []
    for key, g in frame.groupby(group_cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        s = g["score"].to_numpy(float)
        n = len(s)
        mean = float(s.mean())
        sd = float(s.std(ddof=1)) if n > 1 else math.nan
        if n > 1 and sd > 0:
            lo, hi = sps.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
        elif n > 1:
            lo = hi = mean
        else:
            lo = hi = math.nan
        row = dict(zip(group_cols, key))
        if "role" in g:
            row["role"] = g["role"].mode().iloc[0] if g["role"].notna().any() else None
        row.update(n=n, listeners=int(g["listener"].nunique()), items=int(g["item"].nunique()),
                   mean=mean, sd=sd, ci_low=float(lo), ci_high=float(hi))
        if kind == "mushra":
            q1, med, q3 = np.percentile(s, [25, 50, 75])
            row.update(median=float(med), q1=float(q1), q3=float(q3), iqr=float(q3 - q1))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["boot_low"] = np.nan
    out["boot_high"] = np.nan
    if n_boot > 0 and len(frame):
        keys, means = _cluster_bootstrap_means(frame, group_cols, n_boot=n_boot, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            bounds = np.nanpercentile(means, [100 * tail, 100 * (1 - tail)], axis=0)
        by_key = {k: (float(bounds[0, j]), float(bounds[1, j])) for j, k in enumerate(keys)}
        out_keys = [tuple(r) for r in out[group_cols].itertuples(index=False)]
        out["boot_low"] = [by_key[k][0] for k in out_keys]
        out["boot_high"] = [by_key[k][1] for k in out_keys]
    out.attrs["method"] = (
        f"mean ± Student t {confidence:.0%} interval over all votes; bootstrap: {n_boot} two-way cluster "
        f"resamples (listeners and items drawn with replacement, crossed cells kept), percentile interval, seed {seed}"
    )
    return out


def ab_preference(ab: pd.DataFrame) -> pd.DataFrame:
    """Preference rate per system pair with a Wilson interval and a two-sided sign test.

    Pairs are put in canonical order (``system_a`` < ``system_b`` as strings) whatever order they were
    presented in. ``preference_rate`` is the share of *decided* answers preferring ``system_a``; answers
    with no preference count as ``ties`` and are dropped from the rate, its Wilson interval
    (statsmodels ``proportion_confint(method="wilson")``) and the sign test (``scipy.stats.binomtest`` of
    wins against losses, p = 0.5). ``p_holm`` is Holm-adjusted over all pairs.

    Example:
        >>> ab = pd.DataFrame({"listener": [1, 2, 3], "item": "i", "a": ["x", "y", "x"], "b": ["y", "x", "y"],
        ...                    "preferred": ["x", "x", None]})
        >>> ab_preference(ab)[["system_a", "wins", "losses", "ties"]].to_dict("records")
        [{'system_a': 'x', 'wins': 2, 'losses': 0, 'ties': 1}]
    """
    _require_columns(ab, AB_COLUMNS, "AB")
    frame = ab.copy()
    a_s, b_s = frame["a"].astype(str), frame["b"].astype(str)
    if (a_s == b_s).any():
        bad = frame.loc[a_s == b_s].head(5).to_dict("records")
        raise ValueError(f"AB rows compare a system with itself, e.g. {bad}")
    swap = a_s > b_s
    frame["system_a"] = frame["a"].where(~swap, frame["b"])
    frame["system_b"] = frame["b"].where(~swap, frame["a"])
    tie = frame["preferred"].isna()
    pref = frame["preferred"].astype(str)
    frame["win"] = ~tie & (pref == frame["system_a"].astype(str))
    frame["loss"] = ~tie & (pref == frame["system_b"].astype(str))
    invalid = ~tie & ~frame["win"] & ~frame["loss"]
    if invalid.any():
        bad = frame.loc[invalid, list(AB_COLUMNS)].head(5).to_dict("records")
        raise ValueError(f"'preferred' must equal 'a' or 'b' or be empty; {int(invalid.sum())} rows do not, e.g. {bad}")
    rows = []
    for (sa, sb), g in frame.groupby(["system_a", "system_b"], sort=True):
        wins, losses = int(g["win"].sum()), int(g["loss"].sum())
        ties, decided = int(len(g) - wins - losses), wins + losses
        if decided:
            lo, hi = proportion_confint(wins, decided, alpha=0.05, method="wilson")
            p = sps.binomtest(wins, decided, 0.5, alternative="two-sided").pvalue
            rate, note = wins / decided, None
        else:
            lo = hi = p = rate = math.nan
            note = "no decided answers (all ties)"
        rows.append(dict(system_a=sa, system_b=sb, n=len(g), wins=wins, losses=losses, ties=ties,
                         decided=decided, preference_rate=float(rate), ci_low=float(lo), ci_high=float(hi),
                         p_sign=float(p), listeners=int(g["listener"].nunique()), note=note))
    out = pd.DataFrame(rows, columns=["system_a", "system_b", "n", "wins", "losses", "ties", "decided",
                                      "preference_rate", "ci_low", "ci_high", "p_sign", "listeners", "note"])
    out.insert(out.columns.get_loc("p_sign") + 1, "p_holm", holm_adjust(out["p_sign"]))
    out.attrs["method"] = ("preference rate of system_a among decided answers (ties dropped), Wilson 95% interval; "
                           "two-sided exact sign test (binomial, p = 0.5) on wins vs losses, ties dropped; "
                           "Holm over pairs")
    return out


def _wilcoxon(d: np.ndarray, min_pairs: int) -> tuple[float, float, str | None, str | None]:
    """Wilcoxon signed-rank on paired differences d → (statistic, p, method, note); never raises on data."""
    n = len(d)
    if n < min_pairs:
        return (math.nan, math.nan, None, f"only {n} listener×item pairs; at least {min_pairs} are needed for a "
                                          "two-sided p below 0.05 to be possible")
    if not np.any(d != 0):
        return math.nan, math.nan, None, "all paired differences are zero; no test"
    res = sps.wilcoxon(d, zero_method="pratt", alternative="two-sided", method="auto")
    n_zero, has_ties = int(np.sum(d == 0)), len(np.unique(np.abs(d[d != 0]))) < np.count_nonzero(d)
    if n_zero or has_ties:
        method = "exact permutation" if n <= 13 else "normal approximation with tie and zero correction"
    else:
        method = "exact" if n <= 50 else "normal approximation"
    return float(res.statistic), float(res.pvalue), method, None


def pairwise_tests(
    ratings: pd.DataFrame,
    *,
    kind: str,
    alpha: float = 0.05,
    min_pairs: int = MIN_WILCOXON_PAIRS,
    systems: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Wilcoxon signed-rank test for every system pair, paired by listener × item, Holm-corrected.

    Scores are paired on (listener, item), averaging a listener's repeated ratings of the same stimulus.
    Zero differences (frequent on 5-point scales) are handled with Pratt's method (``zero_method="pratt"``:
    zeros are ranked, then their ranks dropped), which is more conservative than discarding them. The p
    is exact (permutation) for small samples and a normal approximation with tie/zero correction otherwise
    (SciPy's ``method="auto"``; the ``method`` column says which). Holm's correction runs over all pairs
    with a p; ``significant`` means ``p_holm < alpha``. A pair with fewer than ``min_pairs`` pairs, or with
    only zero differences, gets p = NaN and a ``note``.

    For ``kind="cmos"`` each (system, comparison) row is a one-sample test of the CMOS against 0
    (``system_a`` = system, ``system_b`` = comparison). Every system of the frame takes part (hidden
    reference and anchors included); pass ``systems`` to restrict.

    Example:
        >>> r = pd.DataFrame({"listener": np.repeat(range(8), 2), "item": "i", "system": ["x", "y"] * 8,
        ...                   "score": [4, 2] * 8})
        >>> pairwise_tests(r, kind="mos")[["system_a", "system_b", "n_pairs", "mean_diff"]].to_dict("records")
        [{'system_a': 'x', 'system_b': 'y', 'n_pairs': 8, 'mean_diff': 2.0}]
    """
    frame = _clean_ratings(ratings, kind=kind)
    if systems is not None:
        frame = frame.loc[frame["system"].isin(list(systems))]
    rows = []
    if kind == "cmos" and "comparison" in frame:
        for (sa, sb), g in frame.groupby(["system", "comparison"], sort=True):
            d = g.groupby(["listener", "item"])["score"].mean().to_numpy(float)
            stat, p, method, note = _wilcoxon(d, min_pairs)
            rows.append(dict(system_a=sa, system_b=sb, n_pairs=len(d), n_zero=int(np.sum(d == 0)),
                             mean_diff=float(d.mean()) if len(d) else math.nan,
                             median_diff=float(np.median(d)) if len(d) else math.nan,
                             statistic=stat, p=p, method=method, note=note))
    else:
        wide = frame.pivot_table(index=["listener", "item"], columns="system", values="score", aggfunc="mean")
        for sa, sb in combinations(sorted(wide.columns, key=str), 2):
            both = wide[[sa, sb]].dropna()
            d = (both[sa] - both[sb]).to_numpy(float)
            stat, p, method, note = _wilcoxon(d, min_pairs)
            rows.append(dict(system_a=sa, system_b=sb, n_pairs=len(d), n_zero=int(np.sum(d == 0)),
                             mean_diff=float(d.mean()) if len(d) else math.nan,
                             median_diff=float(np.median(d)) if len(d) else math.nan,
                             statistic=stat, p=p, method=method, note=note))
    out = pd.DataFrame(rows, columns=["system_a", "system_b", "n_pairs", "n_zero", "mean_diff", "median_diff",
                                      "statistic", "p", "method", "note"])
    out.insert(out.columns.get_loc("p") + 1, "p_holm", holm_adjust(out["p"]))
    out.insert(out.columns.get_loc("p_holm") + 1, "significant", (out["p_holm"] < alpha).fillna(False).astype(bool))
    out.attrs["method"] = (f"Wilcoxon signed-rank (Pratt zero handling) on listener×item paired differences "
                           f"(system_a − system_b); Holm over all pairs, alpha = {alpha}")
    return out


def mixed_effects(ratings: pd.DataFrame, *, baseline: str | None = None, reml: bool = True) -> dict:
    """Mixed model score ~ system + (1|listener) + (1|item), so system effects discount listener and item offsets.

    Crossed random intercepts are fitted with statsmodels ``MixedLM`` in its crossed formulation: a single
    constant group (``groups`` = one value for all rows, ``re_formula="0"``) and variance components
    ``vc_formula={"listener": "0 + C(listener)", "item": "0 + C(item)"}``. Fixed effects are treatment
    contrasts against ``baseline`` (default: the first system in sorted order). p-values and 95 % CIs are
    Wald (normal) ones, as statsmodels reports them. A model that cannot be fitted for data reasons (too
    few systems/listeners/items, constant scores, singular design) gives ``ok=False`` and a ``reason``.

    Returns:
        ``{"ok", "reason", "baseline", "formula", "method", "n", "listeners", "items", "converged",
        "intercept", "effects": [{"system", "estimate", "se", "ci_low", "ci_high", "p"}],
        "variance_components": {"listener", "item", "residual"}, "warnings"}``.

    Example:
        >>> res = mixed_effects(ratings, baseline="hifigan")  # doctest: +SKIP
        >>> [(e["system"], round(e["estimate"], 2)) for e in res["effects"]]  # doctest: +SKIP
        [('vocos', 0.41), ('bigvgan', 0.55)]
    """
    import statsmodels.formula.api as smf

    frame = _clean_ratings(ratings, kind="mos")
    systems = sorted(frame["system"].unique(), key=str)
    baseline = systems[0] if baseline is None and systems else baseline
    result: dict = {
        "ok": False, "reason": None, "baseline": baseline,
        "formula": "score ~ C(system, Treatment(baseline)) + (1 | listener) + (1 | item)",
        "method": "statsmodels MixedLM, one constant group, variance components for listener and item "
                  f"({'REML' if reml else 'ML'}); Wald z p-values and 95% CIs",
        "n": int(len(frame)), "listeners": int(frame["listener"].nunique()), "items": int(frame["item"].nunique()),
        "converged": False, "intercept": None, "effects": [], "variance_components": {}, "warnings": [],
    }
    problem = None
    if baseline not in systems:
        problem = f"baseline {baseline!r} is not among the systems {systems}"
    elif len(systems) < 2:
        problem = f"needs at least 2 systems; got {len(systems)}"
    elif result["listeners"] < 2 or result["items"] < 2:
        problem = f"needs at least 2 listeners and 2 items; got {result['listeners']} and {result['items']}"
    elif len(frame) <= len(systems) + 3:
        problem = f"{len(frame)} ratings are too few for {len(systems)} fixed effects and 3 variance parameters"
    elif float(frame["score"].std()) == 0.0:
        problem = "all scores are equal; no variance to model"
    if problem:
        result["reason"] = problem
        return result

    codes = {s: f"s{k}" for k, s in enumerate(systems)}
    data = pd.DataFrame({
        "score": frame["score"].to_numpy(float),
        "system": frame["system"].map(codes).to_numpy(),
        "listener": pd.factorize(frame["listener"])[0],
        "item": pd.factorize(frame["item"])[0],
        "group": 0,
    })
    formula = f"score ~ C(system, Treatment('{codes[baseline]}'))"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = smf.mixedlm(formula, data, groups="group", re_formula="0",
                                vc_formula={"listener": "0 + C(listener)", "item": "0 + C(item)"})
            fit = model.fit(reml=reml)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError) as exc:
        result["reason"] = f"model could not be fitted: {type(exc).__name__}: {exc}"
        return result
    result["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught})
    fe, se, pv, ci = fit.fe_params, fit.bse_fe, fit.pvalues, fit.conf_int()
    if not (np.all(np.isfinite(fe)) and np.all(np.isfinite(se))):
        result["reason"] = "fit produced non-finite estimates or standard errors (singular model)"
        return result
    back = {v: k for k, v in codes.items()}
    effects = []
    for name in fe.index:
        if name == "Intercept":
            continue
        code = name.split("[T.")[1].rstrip("]")
        effects.append(dict(system=back[code], estimate=float(fe[name]), se=float(se[name]),
                            ci_low=float(ci.loc[name, 0]), ci_high=float(ci.loc[name, 1]), p=float(pv[name])))
    vc = dict(zip(model.exog_vc.names, (float(v) for v in fit.vcomp)))
    result.update(
        ok=True, converged=bool(fit.converged),
        intercept=dict(system=baseline, estimate=float(fe["Intercept"]), se=float(se["Intercept"]),
                       ci_low=float(ci.loc["Intercept", 0]), ci_high=float(ci.loc["Intercept", 1])),
        effects=effects,
        variance_components={"listener": vc.get("listener", math.nan), "item": vc.get("item", math.nan),
                             "residual": float(fit.scale)},
    )
    return result
