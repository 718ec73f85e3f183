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

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import linalg, optimize, sparse
from scipy import stats as sps
from scipy.sparse import csgraph
from statsmodels.stats.proportion import proportion_confint

logger = logging.getLogger(__name__)

MIXED_NO_WITHIN = (
    "the scores vary only between conditions (each condition got one score throughout), so nothing is left "
    "to split between listeners, items and residual"
)
MIXED_FIT_FAILED = (
    "the fit failed numerically on these scores (a degenerate design, e.g. almost no variation within "
    "conditions); the server log has the details"
)
"""Reasons shown in place of the mixed model; never the exception's own text, which means nothing to a reader."""

KINDS = ("mos", "smos", "mushra", "cmos")
RATING_COLUMNS = ("listener", "item", "system", "score")
AB_COLUMNS = ("listener", "item", "a", "b", "preferred")
MIN_WILCOXON_PAIRS = 6
"""Smallest n for which an exact two-sided Wilcoxon signed-rank p can fall below 0.05 (2/2**6 = 0.031)."""

_BOOT_CHUNK_CELLS = 4_000_000
_DENSE_BOOT_CELLS = 2_000_000
"""Largest (listener) × (item, system) table multiplied as a dense array (at most 16 MB); BLAS on a dense table is
2-4 times as fast as the sparse product when most listeners rated most items, as in a MUSHRA test."""


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
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted.

    Same arithmetic as statsmodels ``multipletests(method="holm")`` (sort, multiply by m, m - 1, ..., 1, running
    maximum, cap at 1), which the tests check; statsmodels' version ends with a ``gc.collect()`` that costs
    ~0.1 s of CPU in a process holding a page's worth of objects.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        finite = p[ok]
        order = np.argsort(finite)
        stepped = np.maximum.accumulate(finite[order] * np.arange(len(finite), 0, -1))
        adjusted = np.empty_like(stepped)
        adjusted[order] = np.minimum(stepped, 1.0)
        out[ok] = adjusted
    return out


def hochberg_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Hochberg (1988) step-up adjusted p-values (the option ITU-R BS.1534-3 names next to Holm); NaN stays NaN.

    Sorted ascending, p_(i) becomes min over j >= i of (m - j + 1) p_(j), capped at 1: the same arithmetic as
    statsmodels ``multipletests(method="simes-hochberg")``, which the tests check. More powerful than Holm and
    valid when the tests are independent or positively dependent, as pairwise tests on shared listeners are.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        finite = p[ok]
        m = len(finite)
        order = np.argsort(finite)[::-1]
        stepped = np.minimum.accumulate(finite[order] * np.arange(1, m + 1))
        adjusted = np.empty_like(stepped)
        adjusted[order] = np.minimum(stepped, 1.0)
        out[ok] = adjusted
    return out


CORRECTIONS = {"holm": holm_adjust, "hochberg": hochberg_adjust}
"""Multiple-comparison corrections a results page may show: Holm's step-down (default) and Hochberg's step-up."""


def adjust_pvalues(pvalues: Sequence[float] | np.ndarray, *, correction: str) -> np.ndarray:
    """Adjusted p-values by the named correction (a key of :data:`CORRECTIONS`)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {sorted(CORRECTIONS)}; got {correction!r}")
    return CORRECTIONS[correction](pvalues)


class _Codes(NamedTuple):
    """Integer codes per row (sorted order of the values, as a sorted groupby numbers them) and the group keys."""

    listener: np.ndarray
    n_listeners: int
    item: np.ndarray
    n_items: int
    group: np.ndarray
    groups: list[tuple]


def _codes(frame: pd.DataFrame, group_cols: list[str]) -> _Codes:
    """Factorise listeners, items and groups once for the per-group loop and the bootstrap."""
    l_codes, listeners = pd.factorize(frame["listener"], sort=True)
    i_codes, items = pd.factorize(frame["item"], sort=True)
    keys = frame[group_cols].apply(tuple, axis=1) if len(group_cols) > 1 else frame[group_cols[0]]
    g_codes, g_uniques = pd.factorize(keys, sort=True)
    return _Codes(
        l_codes,
        len(listeners),
        i_codes,
        len(items),
        g_codes,
        [k if isinstance(k, tuple) else (k,) for k in g_uniques],
    )


def _group_rows(codes: np.ndarray, n_groups: int | None = None) -> list[np.ndarray]:
    """Row indices of each group code 0..G-1 (G: ``n_groups``, else the largest code + 1), each in the original
    row order (what a groupby hands each group): one stable sort instead of a boolean mask per group."""
    n_groups = int(codes.max(initial=-1)) + 1 if n_groups is None else n_groups
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    return [order[bounds[j] : bounds[j + 1]] for j in range(n_groups)]


def _mode(values: np.ndarray):
    """``Series.mode().iloc[0]`` of an object array (the smallest of the most frequent non-null values), or None."""
    codes, uniques = pd.factorize(values)
    codes = codes[codes >= 0]
    if not len(codes):
        return None
    counts = np.bincount(codes)
    return min(uniques[counts == counts.max()])


def _cluster_bootstrap_means(codes: _Codes, scores: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray:
    """Two-way (listener × item) cluster bootstrap of per-group means: (n_boot, G) means, groups in code order.

    Each resample draws listeners with replacement and items with replacement; a rating enters with weight
    (times its listener was drawn) × (times its item was drawn), i.e. all ratings of the crossed cells are
    kept (Owen 2007, "the pigeonhole bootstrap"). Sums and counts per (listener; item, group) are held in one
    sparse matrix, so a chunk of resamples is one matrix product (dense, in float32 or float64, when that gives
    the sparse product's sums exactly: see :func:`_dense_dtype`).
    """
    n_l, n_i, n_g = codes.n_listeners, codes.n_items, len(codes.groups)
    cells = n_i * n_g
    col = codes.item * n_g + codes.group
    rows, listeners = np.concatenate([col, col + cells]), np.concatenate([codes.listener, codes.listener])
    values = np.concatenate([scores, np.ones_like(scores)])
    dtype = None
    if 2 * cells * n_l <= _DENSE_BOOT_CELLS and np.all(scores == np.round(scores)):
        table = np.bincount(rows * n_l + listeners, weights=values, minlength=2 * cells * n_l).reshape(
            2 * cells, n_l
        )
        dtype = _dense_dtype(table, n_l * n_i)
    if dtype is not None:
        mat_t = table.astype(dtype)
    else:
        mat_t = sparse.csr_matrix((values, (listeners, rows)), shape=(n_l, 2 * cells)).T.tocsr()
    rng = np.random.default_rng(seed)
    w_l = _draw_counts(rng, n_boot, n_l)
    w_i = _draw_counts(rng, n_boot, n_i)
    means = np.empty((n_boot, n_g))
    chunk = max(1, min(n_boot, _BOOT_CHUNK_CELLS // (2 * cells)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        weights = w_l[start:stop].T if dtype is None else w_l[start:stop].T.astype(dtype)
        by_listener = np.asarray(mat_t @ weights, dtype=np.float64).reshape(2, n_i, n_g, stop - start)
        sums_counts = np.einsum("kigb,bi->kbg", by_listener, w_i[start:stop])
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start:stop] = sums_counts[0] / sums_counts[1]
    return means


def _dense_dtype(cells: np.ndarray, pairs: int) -> type | None:
    """The float type in which a dense (BLAS) product gives the sparse one's sums bit for bit, or None.

    With integer cell sums (integer scores) and integer draw counts every partial sum is an integer of at most
    ``pairs`` (listeners × items) × the largest |cell|, so the summation order cannot change it while that bound
    stays below 2**24 (float32) or 2**53 (float64). Continuous scores keep the sparse product.
    """
    if not len(cells) or not np.all(cells == np.round(cells)):
        return None
    bound = float(np.abs(cells).max()) * pairs
    return np.float32 if bound < 2**24 else np.float64 if bound < 2**53 else None


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
    codes = _codes(frame, group_cols)
    scores = frame["score"].to_numpy(float)
    roles = frame["role"].to_numpy(object) if "role" in frame else None
    rows = []
    for key, idx in zip(codes.groups, _group_rows(codes.group)):
        s = scores[idx]
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
        if roles is not None:
            row["role"] = _mode(roles[idx])
        row.update(
            n=n,
            listeners=len(np.unique(codes.listener[idx])),
            items=len(np.unique(codes.item[idx])),
            mean=mean,
            sd=sd,
            ci_low=float(lo),
            ci_high=float(hi),
        )
        if kind == "mushra":
            q1, med, q3 = np.percentile(s, [25, 50, 75])
            row.update(median=float(med), q1=float(q1), q3=float(q3), iqr=float(q3 - q1))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["boot_low"] = np.nan
    out["boot_high"] = np.nan
    if n_boot > 0 and len(frame):
        means = _cluster_bootstrap_means(codes, scores, n_boot=n_boot, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            bounds = np.nanpercentile(means, [100 * tail, 100 * (1 - tail)], axis=0)
        out["boot_low"] = bounds[0].astype(float)
        out["boot_high"] = bounds[1].astype(float)
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
        raise ValueError(
            f"'preferred' must equal 'a' or 'b' or be empty; {int(invalid.sum())} rows do not, e.g. {bad}"
        )
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
        rows.append(
            dict(
                system_a=sa,
                system_b=sb,
                n=len(g),
                wins=wins,
                losses=losses,
                ties=ties,
                decided=decided,
                preference_rate=float(rate),
                ci_low=float(lo),
                ci_high=float(hi),
                p_sign=float(p),
                listeners=int(g["listener"].nunique()),
                note=note,
            )
        )
    out = pd.DataFrame(
        rows,
        columns=[
            "system_a",
            "system_b",
            "n",
            "wins",
            "losses",
            "ties",
            "decided",
            "preference_rate",
            "ci_low",
            "ci_high",
            "p_sign",
            "listeners",
            "note",
        ],
    )
    out.insert(out.columns.get_loc("p_sign") + 1, "p_holm", holm_adjust(out["p_sign"]))
    out.attrs["method"] = (
        "preference rate of system_a among decided answers (ties dropped), Wilson 95% interval; "
        "two-sided exact sign test (binomial, p = 0.5) on wins vs losses, ties dropped; "
        "Holm over pairs"
    )
    return out


def _wilcoxon(d: np.ndarray, min_pairs: int) -> tuple[float, float, str | None, str | None]:
    """Wilcoxon signed-rank on paired differences d → (statistic, p, method, note); never raises on data."""
    n = len(d)
    if n < min_pairs:
        return (
            math.nan,
            math.nan,
            None,
            f"only {n} listener×item pairs; at least {min_pairs} are needed for a "
            "two-sided p below 0.05 to be possible",
        )
    if not np.any(d != 0):
        return math.nan, math.nan, None, "all paired differences are zero; no test"
    res = sps.wilcoxon(d, zero_method="pratt", alternative="two-sided", method="auto")
    n_zero, has_ties = int(np.sum(d == 0)), len(np.unique(np.abs(d[d != 0]))) < np.count_nonzero(d)
    if n_zero or has_ties:
        method = "exact permutation" if n <= 13 else "normal approximation with tie and zero correction"
    else:
        method = "exact" if n <= 50 else "normal approximation"
    return float(res.statistic), float(res.pvalue), method, None


def _paired_table(frame: pd.DataFrame) -> tuple[list, np.ndarray]:
    """(listener, item) × system means as a dense array (NaN where not rated): what
    ``frame.pivot_table(index=["listener", "item"], columns="system", values="score", aggfunc="mean")`` gives,
    rows in the same sorted order and the same means (one pandas groupby over integer codes), without the
    pivot's index building, which with per-pair column selection made this the costliest test of the page.
    """
    l_codes, _ = pd.factorize(frame["listener"], sort=True)
    i_codes, items = pd.factorize(frame["item"], sort=True)
    s_codes, systems = pd.factorize(frame["system"], sort=True)
    cells, cell_codes = np.unique(l_codes.astype(np.int64) * len(items) + i_codes, return_inverse=True)
    means = pd.Series(frame["score"].to_numpy(float)).groupby([cell_codes.ravel(), s_codes], sort=True).mean()
    wide = np.full((len(cells), len(systems)), np.nan)
    wide[means.index.get_level_values(0), means.index.get_level_values(1)] = means.to_numpy()
    return list(systems), wide


def _paired_difference_row(system_a, system_b, d: np.ndarray, min_pairs: int) -> dict:
    """One pairwise row: the Wilcoxon signed-rank test of the paired differences ``d`` (a - b)."""
    stat, p, method, note = _wilcoxon(d, min_pairs)
    return dict(
        system_a=system_a,
        system_b=system_b,
        n_pairs=len(d),
        n_zero=int(np.sum(d == 0)),
        mean_diff=float(d.mean()) if len(d) else math.nan,
        median_diff=float(np.median(d)) if len(d) else math.nan,
        statistic=stat,
        p=p,
        method=method,
        note=note,
    )


def pairwise_tests(
    ratings: pd.DataFrame,
    *,
    kind: str,
    alpha: float = 0.05,
    min_pairs: int = MIN_WILCOXON_PAIRS,
    systems: Sequence[str] | None = None,
    correction: str = "holm",
) -> pd.DataFrame:
    """Wilcoxon signed-rank test for every system pair, paired by listener × item, Holm-corrected.

    Scores are paired on (listener, item), averaging a listener's repeated ratings of the same stimulus.
    Zero differences (frequent on 5-point scales) are handled with Pratt's method (``zero_method="pratt"``:
    zeros are ranked, then their ranks dropped), which is more conservative than discarding them. The p
    is exact (permutation) for small samples and a normal approximation with tie/zero correction otherwise
    (SciPy's ``method="auto"``; the ``method`` column says which). Holm's correction runs over all pairs
    with a p, and so does Hochberg's step-up (``p_hochberg``); ``significant`` means ``p_<correction> < alpha``
    (``correction``: ``"holm"`` or ``"hochberg"``). A pair with fewer than ``min_pairs`` pairs, or with
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
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {sorted(CORRECTIONS)}; got {correction!r}")
    if systems is not None:
        frame = frame.loc[frame["system"].isin(list(systems))]
    rows = []
    if kind == "cmos" and "comparison" in frame:
        for (sa, sb), g in frame.groupby(["system", "comparison"], sort=True):
            d = g.groupby(["listener", "item"])["score"].mean().to_numpy(float)
            rows.append(_paired_difference_row(sa, sb, d, min_pairs))
    else:
        names, wide = _paired_table(frame)
        column = {name: k for k, name in enumerate(names)}
        finite = np.isfinite(wide)
        for sa, sb in combinations(sorted(names, key=str), 2):
            a, b = column[sa], column[sb]
            both = finite[:, a] & finite[:, b]
            d = wide[both, a] - wide[both, b]
            rows.append(_paired_difference_row(sa, sb, d, min_pairs))
    out = pd.DataFrame(
        rows,
        columns=[
            "system_a",
            "system_b",
            "n_pairs",
            "n_zero",
            "mean_diff",
            "median_diff",
            "statistic",
            "p",
            "method",
            "note",
        ],
    )
    out.insert(out.columns.get_loc("p") + 1, "p_holm", holm_adjust(out["p"]))
    out.insert(out.columns.get_loc("p_holm") + 1, "p_hochberg", hochberg_adjust(out["p"]))
    out.insert(
        out.columns.get_loc("p_hochberg") + 1,
        "significant",
        (out[f"p_{correction}"] < alpha).fillna(False).astype(bool),
    )
    out.attrs["method"] = (
        f"Wilcoxon signed-rank (Pratt zero handling) on listener×item paired differences "
        f"(system_a − system_b); {correction.capitalize()} over all pairs, alpha = {alpha}"
    )
    return out


def _mixed_model_start(
    ratings: pd.DataFrame, baseline: str | None, method: str
) -> tuple[pd.DataFrame, list, dict]:
    """Clean frame, sorted systems and the not-yet-fitted result dict shared by both mixed-model fits; the
    dict's ``reason`` is set when the data cannot support the model."""
    frame = _clean_ratings(ratings, kind="mos")
    systems = sorted(frame["system"].unique(), key=str)
    baseline = systems[0] if baseline is None and systems else baseline
    result: dict = {
        "ok": False,
        "reason": None,
        "baseline": baseline,
        "formula": "score ~ C(system, Treatment(baseline)) + (1 | listener) + (1 | item)",
        "method": method,
        "n": int(len(frame)),
        "listeners": int(frame["listener"].nunique()),
        "items": int(frame["item"].nunique()),
        "converged": False,
        "intercept": None,
        "effects": [],
        "variance_components": {},
        "warnings": [],
    }
    if baseline not in systems:
        result["reason"] = f"baseline {baseline!r} is not among the systems {systems}"
    elif len(systems) < 2:
        result["reason"] = f"needs at least 2 systems; got {len(systems)}"
    elif result["listeners"] < 2 or result["items"] < 2:
        result["reason"] = (
            f"needs at least 2 listeners and 2 items; got {result['listeners']} and {result['items']}"
        )
    elif len(frame) <= len(systems) + 3:
        result["reason"] = (
            f"{len(frame)} ratings are too few for {len(systems)} fixed effects and 3 variance parameters"
        )
    elif float(frame["score"].std()) == 0.0:
        result["reason"] = "all scores are equal; no variance to model"
    elif float(frame.groupby("system")["score"].std(ddof=0).max()) == 0.0:
        result["reason"] = MIXED_NO_WITHIN
    return frame, systems, result


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
    # Lazy: the formula API (patsy) is slow to import and only this reference implementation uses it.
    import statsmodels.formula.api as smf

    frame, systems, result = _mixed_model_start(
        ratings,
        baseline,
        "statsmodels MixedLM, one constant group, variance components for listener and item "
        f"({'REML' if reml else 'ML'}); Wald z p-values and 95% CIs",
    )
    if result["reason"]:
        return result
    baseline = result["baseline"]

    codes = {s: f"s{k}" for k, s in enumerate(systems)}
    data = pd.DataFrame(
        {
            "score": frame["score"].to_numpy(float),
            "system": frame["system"].map(codes).to_numpy(),
            "listener": pd.factorize(frame["listener"])[0],
            "item": pd.factorize(frame["item"])[0],
            "group": 0,
        }
    )
    formula = f"score ~ C(system, Treatment('{codes[baseline]}'))"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = smf.mixedlm(
                formula,
                data,
                groups="group",
                re_formula="0",
                vc_formula={"listener": "0 + C(listener)", "item": "0 + C(item)"},
            )
            fit = model.fit(reml=reml)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError):
        logger.warning("statsmodels mixed model failed on %d ratings", len(frame), exc_info=True)
        result["reason"] = MIXED_FIT_FAILED
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
        effects.append(
            dict(
                system=back[code],
                estimate=float(fe[name]),
                se=float(se[name]),
                ci_low=float(ci.loc[name, 0]),
                ci_high=float(ci.loc[name, 1]),
                p=float(pv[name]),
            )
        )
    vc = dict(zip(model.exog_vc.names, (float(v) for v in fit.vcomp)))
    result.update(
        ok=True,
        converged=bool(fit.converged),
        intercept=dict(
            system=baseline,
            estimate=float(fe["Intercept"]),
            se=float(se["Intercept"]),
            ci_low=float(ci.loc["Intercept", 0]),
            ci_high=float(ci.loc["Intercept", 1]),
        ),
        effects=effects,
        variance_components={
            "listener": vc.get("listener", math.nan),
            "item": vc.get("item", math.nan),
            "residual": float(fit.scale),
        },
    )
    return result


def crossed_mixed_model(ratings: pd.DataFrame, *, baseline: str | None = None) -> dict:
    """score ~ system + (1|listener) + (1|item) by profiled REML on sufficient statistics; same dict as
    :func:`mixed_effects`, in milliseconds where statsmodels takes minutes (the one the results page uses).

    Why not statsmodels here: its crossed formulation (one group, variance components) works on the n × q
    random-effects design of the whole data and took minutes on 50 000 ratings. With crossed random
    intercepts the likelihood only needs Z'Z, Z'X, X'X, Z'y, X'y and y'y (q = listeners + items), so each
    evaluation of the profiled REML criterion (Bates, Mächler, Bolker & Walker 2015, lme4, eq. 42) is a
    q × q Cholesky factorisation; the two relative standard deviations are found by L-BFGS-B (bounded at 0).
    Fixed effects are treatment contrasts against ``baseline``; Wald (normal) 95 % CIs and p-values from
    σ²(X'V⁻¹X)⁻¹. The tests check it against :func:`mixed_effects` (statsmodels ``MixedLM``) on small
    unbalanced data sets with missing cells; use that one as the reference, this one for real tests.

    Example:
        >>> res = crossed_mixed_model(ratings, baseline="hifigan")  # doctest: +SKIP
        >>> res["variance_components"]  # doctest: +SKIP
        {'listener': 0.31, 'item': 0.12, 'residual': 0.52}
    """
    frame, systems, result = _mixed_model_start(
        ratings,
        baseline,
        "crossed random intercepts for listener and item, REML (profiled criterion of Bates et al. "
        "2015 evaluated on sufficient statistics); Wald z p-values and 95% CIs",
    )
    if result["reason"]:
        return result
    baseline = result["baseline"]
    order = [baseline] + [s for s in systems if s != baseline]
    y = frame["score"].to_numpy(float)
    n, p = len(y), len(order)
    s_code = frame["system"].map({s: k for k, s in enumerate(order)}).to_numpy(int)
    l_code, l_uniq = pd.factorize(frame["listener"])
    i_code, i_uniq = pd.factorize(frame["item"])
    nl, ni = len(l_uniq), len(i_uniq)
    q = nl + ni
    # X = [1, dummies of the non-baseline systems]; Z = [listener indicators, item indicators].
    per_system = np.bincount(s_code, minlength=p).astype(float)
    xtx = np.zeros((p, p))
    xtx[0, 0] = n
    xtx[0, 1:] = xtx[1:, 0] = per_system[1:]
    xtx[np.arange(1, p), np.arange(1, p)] = per_system[1:]
    sums = np.bincount(s_code, weights=y, minlength=p)
    xty = np.r_[y.sum(), sums[1:]]
    ztz = np.zeros((q, q))
    cross = np.bincount(l_code * ni + i_code, minlength=nl * ni).reshape(nl, ni).astype(float)
    ztz[np.arange(nl), np.arange(nl)] = cross.sum(axis=1)
    ztz[nl + np.arange(ni), nl + np.arange(ni)] = cross.sum(axis=0)
    ztz[:nl, nl:] = cross
    ztz[nl:, :nl] = cross.T
    ztx = np.zeros((q, p))
    by_ls = np.bincount(l_code * p + s_code, minlength=nl * p).reshape(nl, p)
    by_is = np.bincount(i_code * p + s_code, minlength=ni * p).reshape(ni, p)
    ztx[:nl, 0], ztx[nl:, 0] = by_ls.sum(axis=1), by_is.sum(axis=1)
    ztx[:nl, 1:], ztx[nl:, 1:] = by_ls[:, 1:], by_is[:, 1:]
    zty = np.r_[np.bincount(l_code, weights=y, minlength=nl), np.bincount(i_code, weights=y, minlength=ni)]
    yty = float(y @ y)
    eye = np.eye(q)

    def factors(theta: np.ndarray):
        lam = np.r_[np.full(nl, theta[0]), np.full(ni, theta[1])]
        chol = linalg.cholesky(lam[:, None] * ztz * lam[None, :] + eye, lower=True)
        rzx = linalg.solve_triangular(chol, lam[:, None] * ztx, lower=True)
        cu = linalg.solve_triangular(chol, lam * zty, lower=True)
        rx = linalg.cholesky(xtx - rzx.T @ rzx, lower=True)
        cb = linalg.solve_triangular(rx, xty - rzx.T @ cu, lower=True)
        return chol, rx, cb, yty - cu @ cu - cb @ cb

    def criterion(theta: np.ndarray) -> float:
        chol, rx, _, r2 = factors(theta)
        return float(
            2 * np.log(np.diag(chol)).sum()
            + 2 * np.log(np.diag(rx)).sum()
            + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
        )

    try:
        with np.errstate(all="raise"):
            fit = optimize.minimize(
                criterion, x0=np.ones(2), method="L-BFGS-B", bounds=[(0, None), (0, None)]
            )
            chol, rx, cb, r2 = factors(fit.x)
    except (linalg.LinAlgError, FloatingPointError, ValueError):
        logger.warning("crossed mixed model failed on %d ratings", n, exc_info=True)
        result["reason"] = MIXED_FIT_FAILED
        return result
    beta = linalg.solve_triangular(rx.T, cb, lower=False)
    sigma2 = float(r2 / (n - p))
    cov = sigma2 * linalg.cho_solve((rx, True), np.eye(p))
    se = np.sqrt(np.diag(cov))
    z = sps.norm.ppf(0.975)
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(se))):
        result["reason"] = "fit produced non-finite estimates or standard errors (singular model)"
        return result
    if not fit.success:
        result["warnings"].append(f"optimiser: {fit.message}")
    if np.any(fit.x < 1e-6):
        result["warnings"].append("a random-intercept variance is estimated at 0 (singular fit)")
    effects = [
        dict(
            system=s,
            estimate=float(beta[k]),
            se=float(se[k]),
            ci_low=float(beta[k] - z * se[k]),
            ci_high=float(beta[k] + z * se[k]),
            p=float(2 * sps.norm.sf(abs(beta[k] / se[k]))),
        )
        for k, s in enumerate(order)
        if k > 0
    ]
    result.update(
        ok=True,
        converged=bool(fit.success),
        intercept=dict(
            system=baseline,
            estimate=float(beta[0]),
            se=float(se[0]),
            ci_low=float(beta[0] - z * se[0]),
            ci_high=float(beta[0] + z * se[0]),
        ),
        effects=effects,
        variance_components={
            "listener": sigma2 * float(fit.x[0]) ** 2,
            "item": sigma2 * float(fit.x[1]) ** 2,
            "residual": sigma2,
        },
    )
    return result


def crowdmos_intervals(ratings: pd.DataFrame, *, kind: str, confidence: float = 0.95) -> pd.DataFrame:
    """The CrowdMOS interval of Ribeiro, Florêncio, Zhang & Seltzer (ICASSP 2011, §2.2) per system.

    A listener's score of an item is modelled as u = μ + x_listener + y_item + ε with independent normal terms of
    variances σ²_w (listener), σ²_s (item, "sentence") and σ²_u (residual). With T scores, N_w of them from
    listener w and M_s of item s, the mean μ̂ has variance σ²_s ΣM_s²/T² + σ²_w ΣN_w²/T² + σ²_u/T: unlike the
    t interval over all votes, it does not treat the votes of one listener (or of one item) as independent.
    The components come from three sample variances (ddof = 1), as in the authors' tool: the mean over items of
    the variance across listeners (σ²_w + σ²_u), the mean over listeners of the variance across items
    (σ²_s + σ²_u) and the variance of all scores (σ²_s + σ²_w + σ²_u); solved and floored at 0 (moment estimates:
    on a finite design they put a little of the listener and item variance into the residual, about σ²_w/W +
    σ²_s/S; the tests compare them with a crossed REML fit and check coverage by simulation). When only one
    listener or one item has two scores the corresponding term is dropped, as the authors' tool does. The
    interval is μ̂ ± t(min(listeners, items) − 1) · sd(μ̂). A listener's repeated scores of one item are
    averaged first (the model has one score per listener and item), so μ̂ is the mean of those cells.

    Returns:
        One row per system (per system and comparison for CMOS): ``mean`` (μ̂), ``var_listener``, ``var_item``,
        ``var_residual``, ``se``, ``df``, ``crowdmos_low``, ``crowdmos_high``.

    Example:
        >>> r = pd.DataFrame({"listener": [1, 1, 2, 2, 3, 3], "item": ["a", "b"] * 3, "system": "x",
        ...                   "score": [4.0, 3.0, 5.0, 4.0, 4.0, 2.0]})
        >>> round(crowdmos_intervals(r, kind="mos")["crowdmos_low"].iloc[0], 3)
        -3.546
    """
    frame = _clean_ratings(ratings, kind=kind)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    group_cols = _group_columns(frame, kind)
    columns = [*group_cols, "mean", "var_listener", "var_item", "var_residual", "se", "df"]
    columns += ["crowdmos_low", "crowdmos_high"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    cells = frame.groupby([*group_cols, "listener", "item"], sort=True)["score"].mean().reset_index()
    rows = []
    for key, g in cells.groupby(group_cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(group_cols, key)), **_crowdmos_one(g, confidence)})
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["method"] = (
        f"CrowdMOS (Ribeiro et al. 2011) {confidence:.0%} interval: variance of the mean from listener, item "
        "and residual variance components, t with min(listeners, items) − 1 degrees of freedom"
    )
    return out


def _crowdmos_one(cells: pd.DataFrame, confidence: float) -> dict:
    """CrowdMOS components and interval of one system's (listener, item, score) cells."""
    scores = cells["score"].to_numpy(float)
    total = len(scores)
    per_listener = cells.groupby("listener")["score"]
    per_item = cells.groupby("item")["score"]
    n_w, m_s = per_listener.size().to_numpy(float), per_item.size().to_numpy(float)
    # Mean over listeners (items) with at least two scores of their variance across items (listeners).
    v_su = float(per_listener.var(ddof=1).mean()) if (n_w >= 2).any() else math.nan
    v_wu = float(per_item.var(ddof=1).mean()) if (m_s >= 2).any() else math.nan
    v_swu = float(np.var(scores, ddof=1)) if total >= 2 else math.nan
    v_w = v_s = 0.0
    v_u = v_swu
    if math.isfinite(v_su) and math.isfinite(v_wu):
        v_s, v_w, v_u = v_swu - v_wu, v_swu - v_su, v_su + v_wu - v_swu
    elif math.isfinite(v_wu):
        v_w, v_u = v_swu - v_wu, v_wu
    elif math.isfinite(v_su):
        v_s, v_u = v_swu - v_su, v_su
    v_s, v_w, v_u = max(v_s, 0.0), max(v_w, 0.0), max(v_u, 0.0) if math.isfinite(v_u) else math.nan
    var_mean = v_s * float(np.sum(m_s**2)) / total**2 + v_w * float(np.sum(n_w**2)) / total**2 + v_u / total
    mean = float(scores.mean())
    df = min(len(n_w), len(m_s)) - 1
    if df >= 1 and math.isfinite(var_mean):
        half = float(sps.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(var_mean)
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    return dict(
        mean=mean,
        var_listener=v_w,
        var_item=v_s,
        var_residual=v_u,
        se=math.sqrt(var_mean) if math.isfinite(var_mean) else math.nan,
        df=df,
        crowdmos_low=low,
        crowdmos_high=high,
    )


def friedman_test(
    ratings: pd.DataFrame, *, kind: str = "mushra", systems: Sequence[str] | None = None
) -> dict:
    """Friedman's rank test that all conditions score alike, blocks = (listener, item), for MUSHRA (BS.1534-3 §9.3).

    A block is one listener's scores of one item; only blocks in which every condition was scored enter (a
    listener's repeated scores of a stimulus are averaged). The statistic, with the correction for ties, and its
    chi-square p are ``scipy.stats.friedmanchisquare``'s; Kendall's W = χ² / (n (k − 1)) says how consistently
    listeners order the conditions. Needs at least 3 conditions and 2 complete blocks; otherwise the numbers are
    None and ``note`` says why.

    Returns:
        ``{"statistic", "df", "p", "kendall_w", "blocks", "blocks_incomplete", "systems", "method", "note"}``.
    """
    frame = _clean_ratings(ratings, kind=kind)
    if systems is not None:
        frame = frame.loc[frame["system"].isin(list(systems))]
    names, wide = _paired_table(frame) if len(frame) else ([], np.empty((0, 0)))
    complete = np.all(np.isfinite(wide), axis=1) if wide.size else np.zeros(len(wide), dtype=bool)
    table = wide[complete]
    out: dict = {
        "statistic": None,
        "df": None,
        "p": None,
        "kendall_w": None,
        "blocks": int(len(table)),
        "blocks_incomplete": int(len(wide) - len(table)),
        "systems": [str(s) for s in names],
        "method": (
            "Friedman test (scipy.stats.friedmanchisquare, tie-corrected, chi-square p) over the conditions, "
            "blocks = (listener, item) in which every condition was scored; Kendall's W = χ²/(n(k−1))"
        ),
        "note": None,
    }
    k = len(names)
    if k < 3:
        out["note"] = f"needs at least 3 conditions; got {k}"
    elif len(table) < 2:
        out["note"] = (
            f"needs at least 2 (listener, item) blocks with every condition scored; got {len(table)}"
        )
    elif np.all(table == table[:, :1]):
        out["note"] = "every block scores all conditions alike; no test"
    else:
        res = sps.friedmanchisquare(*table.T)
        out.update(
            statistic=float(res.statistic),
            df=k - 1,
            p=float(res.pvalue),
            kendall_w=float(res.statistic) / (len(table) * (k - 1)),
        )
    return out


BT_MAX_ITER = 100_000
BT_TOL = 1e-10


def bradley_terry(ab: pd.DataFrame, *, confidence: float = 0.95) -> dict:
    """Bradley–Terry scores of the systems of an AB test, by maximum likelihood, with Wald intervals.

    P(i preferred over j) = γ_i / (γ_i + γ_j); the score of a system is log γ, centred so the scores average 0
    (only differences are identified). The maximum-likelihood γ is found by the MM algorithm of Hunter (2004,
    Ann. Statist. 32, eq. 3), γ_i ← W_i / Σ_j n_ij / (γ_i + γ_j), which increases the likelihood at every step.
    Standard errors come from the observed Fisher information (for this logit model it equals the expected
    one), I_ii = Σ_j n_ij p_ij p_ji, I_ij = −n_ij p_ij p_ji, whose Moore–Penrose inverse is the covariance of
    the centred scores; intervals are score ± z · se. "No preference" answers are dropped, as in
    :func:`ab_preference`. The estimate exists only if, for every split of the systems in two, some system of
    each side beat one of the other (Hunter's Assumption 1); otherwise ``ok`` is False with a ``reason``. The
    tests check it against Agresti's 1987 American League East example (Categorical Data Analysis, §10.6).

    Returns:
        ``{"ok", "reason", "method", "converged", "iterations", "log_likelihood", "rows": [{"system", "score", "se",
        "ci_low", "ci_high", "worth", "wins", "losses"}], "systems", "covariance"}``: rows best first, ``worth``
        is γ / Σγ; ``covariance`` of the centred scores in the order of ``systems`` (sorted), so the standard
        error of a difference of two scores can be formed.
    """
    _require_columns(ab, AB_COLUMNS, "AB")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    decided = ab.loc[ab["preferred"].notna()]
    a_s, b_s, pref = decided["a"].astype(str), decided["b"].astype(str), decided["preferred"].astype(str)
    invalid = (pref != a_s) & (pref != b_s)
    if invalid.any():
        bad = decided.loc[invalid, list(AB_COLUMNS)].head(5).to_dict("records")
        raise ValueError(
            f"'preferred' must equal 'a' or 'b' or be empty; {int(invalid.sum())} rows do not, e.g. {bad}"
        )
    loser = np.where(pref == a_s, b_s, a_s)
    names = sorted(set(a_s) | set(b_s))
    index = {s: k for k, s in enumerate(names)}
    k = len(names)
    wins = np.zeros((k, k))
    np.add.at(wins, (pref.map(index).to_numpy(int), pd.Series(loser).map(index).to_numpy(int)), 1.0)
    result: dict = {
        "ok": False,
        "reason": None,
        "method": (
            f"Bradley–Terry maximum likelihood (MM algorithm, Hunter 2004), ties dropped; score = log-strength "
            f"centred at 0; Wald {confidence:.0%} intervals from the observed Fisher information"
        ),
        "converged": False,
        "iterations": 0,
        "log_likelihood": None,
        "rows": [],
    }
    if k < 2:
        result["reason"] = f"needs decided answers on at least 2 systems; got {k}"
        return result
    n_strong, _ = csgraph.connected_components(
        sparse.csr_matrix(wins > 0), directed=True, connection="strong"
    )
    if n_strong > 1:
        result["reason"] = (
            "no maximum-likelihood estimate: some group of systems never lost to (or never beat) the others, "
            "so its strength is unbounded"
        )
        return result
    n = wins + wins.T
    w = wins.sum(axis=1)
    gamma, iterations, step = np.ones(k), 0, math.inf
    while step >= BT_TOL and iterations < BT_MAX_ITER:
        new = w / (n / (gamma[:, None] + gamma[None, :])).sum(axis=1)
        new /= np.exp(np.log(new).mean())
        step = float(np.max(np.abs(np.log(new) - np.log(gamma))))
        gamma, iterations = new, iterations + 1
    beta = np.log(gamma)
    prob = gamma[:, None] / (gamma[:, None] + gamma[None, :])
    info = -n * prob * prob.T
    np.fill_diagonal(info, 0.0)
    np.fill_diagonal(info, -info.sum(axis=1))
    cov = np.linalg.pinv(info)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    rows = [
        dict(
            system=names[i],
            score=float(beta[i]),
            se=float(se[i]),
            ci_low=float(beta[i] - z * se[i]),
            ci_high=float(beta[i] + z * se[i]),
            worth=float(gamma[i] / gamma.sum()),
            wins=int(wins[i].sum()),
            losses=int(wins[:, i].sum()),
        )
        for i in range(k)
    ]
    rows.sort(key=lambda r: -r["score"])
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = float(np.nansum(wins * np.log(prob)))
    result.update(
        ok=True,
        converged=step < BT_TOL,
        iterations=iterations,
        log_likelihood=loglik,
        rows=rows,
        systems=names,
        covariance=cov.tolist(),
    )
    return result
