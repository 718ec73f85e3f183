"""Inter-rater reliability: Krippendorff's alpha, ICC, and agreement on binary artifact flags.

Units of a rating test are (item, system) cells (plus ``comparison`` for CMOS) and raters are listeners.

- Krippendorff's alpha handles missing cells, so it is the statistic of choice for incomplete (crowdsourced)
  designs. Level: interval for MUSHRA and CMOS, ordinal for 5-point MOS/SMOS (interval is also reported for
  those, as many papers use it). Computed here from per-unit sums (interval) or the coincidence matrix of the
  value counts (nominal, ordinal, ratio), Krippendorff (2011); the tests check every level against the
  ``krippendorff`` package, which builds a units × values × values array and took up to 0.8 s on one test.
- ICC needs a complete units × raters table. For an incomplete design it is computed on the largest complete
  block found greedily (repeatedly drop the unit or listener with the largest share of missing cells); the
  block size is reported with the values, and the block may be much smaller than the data, in which case
  alpha is the number to read. The six Shrout & Fleiss (1979) / McGraw & Wong (1996) forms and their F-based
  95 % intervals are the closed forms of the two-way ANOVA mean squares, as ``pingouin.intraclass_corr``
  computes them (the tests check it; pingouin took 0.5-2.5 s per call).
- Binary flags: percent agreement, Fleiss' kappa and Gwet's AC1 over stimuli (units) rated by the
  listeners who heard them (variable raters per unit, Gwet 2014 handbook formulas), and Krippendorff's
  nominal alpha over flag categories.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from evalsite.analysis.flags import presentation_flags
from evalsite.analysis.stats import _check_kind, _clean_ratings

LEVELS = ("nominal", "ordinal", "interval", "ratio")
MAX_DISTINCT_VALUES = 101
"""Interval/ratio data with more distinct values are put on a grid of this many points over their range.

The grid was needed by the krippendorff package (a units × V × V array: 3000 units × 200 values took 12 s and
about 1 GB); the formulas here do not need it, it is kept so that alpha stays what it was. 101 points keep
integer 0-100 MUSHRA scores exact."""
NO_FLAG = "none"

ICC_NAMES = {
    # pingouin's type name → (Shrout & Fleiss 1979, McGraw & Wong 1996, model)
    "ICC(1,1)": ("ICC(1,1)", "ICC(1)", "one-way random effects, single rater"),
    "ICC(A,1)": ("ICC(2,1)", "ICC(A,1)", "two-way random effects, absolute agreement, single rater"),
    "ICC(C,1)": ("ICC(3,1)", "ICC(C,1)", "two-way mixed effects, consistency, single rater"),
    "ICC(1,k)": ("ICC(1,k)", "ICC(k)", "one-way random effects, mean of k raters"),
    "ICC(A,k)": ("ICC(2,k)", "ICC(A,k)", "two-way random effects, absolute agreement, mean of k raters"),
    "ICC(C,k)": ("ICC(3,k)", "ICC(C,k)", "two-way mixed effects, consistency, mean of k raters"),
}
ICC_COLUMNS = [
    "shrout_fleiss",
    "mcgraw_wong",
    "description",
    "icc",
    "ci_low",
    "ci_high",
    "F",
    "df1",
    "df2",
    "p",
    "n_units",
    "k_raters",
    "note",
]


def alpha_level_for(kind: str) -> str:
    """Primary Krippendorff level per test kind: interval for MUSHRA/CMOS, ordinal for 5-point MOS/SMOS."""
    _check_kind(kind)
    return "ordinal" if kind in ("mos", "smos") else "interval"


def _unit_columns(frame: pd.DataFrame) -> list[str]:
    """A unit is one stimulus: (item, system), plus the comparison for CMOS."""
    return ["item", "system"] + (["comparison"] if "comparison" in frame else [])


def _dense_codes(codes: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Renumber codes in [0, size) to 0..n-1 keeping their order (n = distinct codes present)."""
    if size <= 4 * len(codes) + 1024:
        present = np.bincount(codes, minlength=size) > 0
        return (np.cumsum(present) - 1)[codes], int(present.sum())
    uniques, dense = np.unique(codes, return_inverse=True)
    return dense.ravel(), len(uniques)


def _unit_codes(frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Integer code per row of its unit, numbered in the sorted order of the unit columns (as a pivot sorts them)."""
    codes, size = np.zeros(len(frame), dtype=np.int64), 1
    for column in _unit_columns(frame):
        column_codes, uniques = pd.factorize(frame[column], sort=True)
        codes, size = codes * len(uniques) + column_codes, size * len(uniques)
    return _dense_codes(codes, size)


class _Coded(NamedTuple):
    """A clean ratings frame as integer codes: listener (sorted order), unit (sorted order) and score per row."""

    listeners: np.ndarray
    n_listeners: int
    units: np.ndarray
    n_units: int
    scores: np.ndarray


def _coded(frame: pd.DataFrame) -> _Coded:
    listeners, uniques = pd.factorize(frame["listener"], sort=True)
    units, n_units = _unit_codes(frame)
    return _Coded(listeners.astype(np.int64), len(uniques), units, n_units, frame["score"].to_numpy(float))


def _rating_cells(coded: _Coded, level: str) -> tuple[np.ndarray, np.ndarray]:
    """(unit code, value) per rated listener × unit cell: repeats averaged (interval/ratio) or the first kept
    (nominal/ordinal), the same cells a listeners × units pivot of the frame holds."""
    width = max(coded.n_units, 1)
    key = coded.listeners * width + coded.units
    if level in ("nominal", "ordinal"):
        keys, first = np.unique(key, return_index=True)
        return keys % width, coded.scores[first]
    means = pd.Series(coded.scores).groupby(key, sort=True).mean()
    return means.index.to_numpy() % width, means.to_numpy()


def krippendorff_alpha(ratings: pd.DataFrame, *, level: str) -> float:
    """Krippendorff's alpha over (item, system) units with listeners as coders; NaN when it is undefined.

    Missing cells are allowed; for ``level="nominal"`` scores may be categorical labels (strings), compared for
    equality. Undefined cases (no unit with two ratings, a single value in the whole data)
    return NaN rather than raising. Interval/ratio data with more than ``MAX_DISTINCT_VALUES`` distinct values
    (continuous sliders) are first put on a grid of that many points over their range (steps of 1 on a 0-100
    scale; the change in alpha is of the order of step² / (6 · variance)); integer 0-100 MUSHRA scores are
    used as they are. Same value as ``krippendorff.alpha`` on the listeners × units matrix (tests: 1e-12).

    Example:
        >>> r = pd.DataFrame({"listener": [1, 2, 1, 2], "item": ["a", "a", "b", "b"], "system": "x",
        ...                   "score": [1.0, 1.0, 5.0, 4.0]})
        >>> round(krippendorff_alpha(r, level="interval"), 3)
        0.941
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    return _alpha_of_coded(_coded(_clean_ratings(_labels_as_codes(ratings, level), kind="mos")), level)


def _labels_as_codes(ratings: pd.DataFrame, level: str) -> pd.DataFrame:
    """Categorical (string) scores as integer codes for nominal alpha, which only asks whether two values are
    equal; a numeric column passes unchanged. Without this, string labels became NaN and alpha silently NaN.

    Labels are compared as strings (``"1"`` and ``1`` are the same label); the codes follow the sorted labels.
    Non-numeric labels at the ordinal, interval or ratio level are refused: their order or distance is unknown.
    """
    if "score" not in ratings:
        return ratings
    present = ratings["score"].notna()
    numeric = pd.to_numeric(ratings["score"], errors="coerce")
    not_numbers = present & numeric.isna()
    if not not_numbers.any():
        return ratings
    if level != "nominal":
        examples = sorted(map(str, ratings.loc[not_numbers, "score"].unique()))[:5]
        raise ValueError(
            f"{level} alpha needs numeric scores; column 'score' holds {int(not_numbers.sum())} non-numeric "
            f"labels, e.g. {examples}; use level='nominal' for categorical labels"
        )
    labels = ratings["score"].where(~present, ratings["score"].astype(str))
    codes, _ = pd.factorize(labels, sort=True)
    return ratings.assign(score=np.where(codes >= 0, codes, np.nan).astype(float))


def _alpha_of_coded(coded: _Coded, level: str) -> float:
    units, values = _rating_cells(coded, level)
    if level in ("interval", "ratio") and len(np.unique(values)) > MAX_DISTINCT_VALUES:
        low, step = values.min(), np.ptp(values) / (MAX_DISTINCT_VALUES - 1)
        values = low + np.round((values - low) / step) * step
    return alpha_from_cells(units, values, level=level)


def alpha_from_cells(units: np.ndarray, values: np.ndarray, *, level: str) -> float:
    """Krippendorff's alpha from one (unit, value) pair per coded cell; NaN when undefined.

    Only units with at least two values are pairable (Krippendorff 2011). Interval: with m_u values in unit u,
    SS_u their sum of squared deviations from the unit mean and SS the same over all n pairable values,
    alpha = 1 - (n - 1) Σ_u m_u SS_u / (m_u - 1) / (n SS), the coincidence-matrix definition with squared
    differences written out. Nominal, ordinal, ratio: the coincidence matrix o = Σ_u (c_u c_uᵀ - diag c_u) /
    (m_u - 1) of the units × values count table c, the expected one from its margins, and the level's distance.

    Example:
        >>> alpha_from_cells(np.array([0, 0, 1, 1]), np.array([1.0, 1.0, 5.0, 4.0]), level="interval")  # doctest: +SKIP
        0.9411764705882353
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    units = np.asarray(units, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    if len(units) == 0 or values.min() == values.max():
        return math.nan
    m = np.bincount(units)
    pairable = m[units] >= 2
    if not pairable.any():
        return math.nan
    units, values = _dense_codes(units[pairable], len(m))[0], values[pairable]
    m = np.bincount(units).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        if level == "interval":
            deviation = values - (np.bincount(units, weights=values) / m)[units]
            within = np.bincount(units, weights=deviation * deviation)
            total = float(np.sum((values - values.mean()) ** 2))
            n = len(values)
            alpha = 1 - (n - 1) * float(np.sum(m * within / (m - 1))) / (n * total)
        else:
            domain, codes = np.unique(values, return_inverse=True)
            size = len(domain)
            counts = np.bincount(units * size + codes.ravel(), minlength=len(m) * size).reshape(len(m), size)
            counts = counts.astype(float)
            weight = 1 / (m - 1)
            observed = (counts * weight[:, None]).T @ counts - np.diag(weight @ counts)
            n_v = observed.sum(axis=0)
            expected = (np.outer(n_v, n_v) - np.diag(n_v)) / (n_v.sum() - 1)
            distance = _distances(domain, n_v, level)
            alpha = 1 - float((observed * distance).sum()) / float((expected * distance).sum())
    return float(alpha) if math.isfinite(alpha) else math.nan


def _distances(domain: np.ndarray, n_v: np.ndarray, level: str) -> np.ndarray:
    """Squared distance between every two values of the domain at a level of measurement (Krippendorff 2011)."""
    c, k = domain[:, None], domain[None, :]
    if level == "nominal":
        return (c != k).astype(float)
    if level == "ratio":
        total = c + k
        return np.divide(c - k, total, out=np.zeros((len(domain), len(domain))), where=total != 0) ** 2
    if level == "interval":
        return (c - k) ** 2
    index = np.arange(len(domain))
    low, high = np.minimum(index[:, None], index[None, :]), np.maximum(index[:, None], index[None, :])
    cumulative = np.r_[0.0, np.cumsum(n_v)]
    return (cumulative[high + 1] - cumulative[low] - (n_v[low] + n_v[high]) / 2) ** 2


def _largest_complete_block(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy complete sub-table: repeatedly drop the row or column with the largest share of missing cells.

    Returns the kept row and column masks. Missing shares are kept up to date by counts (one row or column
    update per step, not a pass over the whole table), computed as ``1 - present / size`` like a mean would.
    """
    rows, cols = np.ones(present.shape[0], bool), np.ones(present.shape[1], bool)
    row_present = present.sum(axis=1)
    col_present = present.sum(axis=0)
    n_rows, n_cols = present.shape
    while n_rows and n_cols:
        active_rows, active_cols = np.flatnonzero(rows), np.flatnonzero(cols)
        row_count, col_count = row_present[active_rows], col_present[active_cols]
        if np.all(row_count == n_cols):
            break
        row_missing = 1 - row_count / n_cols
        col_missing = 1 - col_count / n_rows
        if row_missing.max() >= col_missing.max():
            drop = active_rows[row_missing.argmax()]
            rows[drop] = False
            col_present -= present[drop]
            n_rows -= 1
        else:
            drop = active_cols[col_missing.argmax()]
            cols[drop] = False
            row_present -= present[:, drop]
            n_cols -= 1
    return rows, cols


def _icc_table(coded: _Coded) -> pd.DataFrame:
    """:func:`icc` of a coded clean frame (see there)."""
    key = coded.units * max(coded.n_listeners, 1) + coded.listeners
    means = pd.Series(coded.scores).groupby(key, sort=True).mean()
    cells = means.index.to_numpy()
    wide = np.full((coded.n_units, coded.n_listeners), np.nan)
    wide[cells // max(coded.n_listeners, 1), cells % max(coded.n_listeners, 1)] = means.to_numpy()
    rows, cols = _largest_complete_block(~np.isnan(wide))
    block = wide[np.ix_(rows, cols)]
    n_units, k = block.shape
    total_cells = len(means)
    note = (
        None
        if n_units * k == total_cells
        else (
            f"incomplete design: computed on the largest complete block found ({n_units} units × {k} listeners, "
            f"{n_units * k} of {total_cells} rated cells)"
        )
    )
    if n_units < 3 or k < 2:
        reason = f"no complete block of at least 3 units × 2 listeners (largest found: {n_units} × {k})"
        rows_out = [
            dict(
                zip(
                    ICC_COLUMNS,
                    (
                        *names,
                        math.nan,
                        math.nan,
                        math.nan,
                        math.nan,
                        math.nan,
                        math.nan,
                        math.nan,
                        n_units,
                        k,
                        reason,
                    ),
                )
            )
            for names in ICC_NAMES.values()
        ]
        return pd.DataFrame(rows_out, columns=ICC_COLUMNS)
    values = icc_from_table(block)
    rows_out = [
        dict(zip(ICC_COLUMNS, (*ICC_NAMES[name], *v, int(n_units), int(k), note)))
        for name, v in values.items()
    ]
    return pd.DataFrame(rows_out, columns=ICC_COLUMNS)


def icc_from_table(table: np.ndarray, *, confidence: float = 0.95) -> dict[str, tuple]:
    """The six ICCs of a complete targets × raters table: {McGraw & Wong name: (icc, ci_low, ci_high, F, df1,
    df2, p)}, from the two-way ANOVA mean squares (no interaction term: one rating per cell).

    MS_R (targets), MS_C (raters), MS_E (residual) and MS_W (within targets, one-way) give
    ICC(1) = (MS_R - MS_W) / (MS_R + (k-1) MS_W), ICC(A,1) = (MS_R - MS_E) / (MS_R + (k-1) MS_E + k (MS_C - MS_E) / n),
    ICC(C,1) = (MS_R - MS_E) / (MS_R + (k-1) MS_E) and their k-rater forms (Shrout & Fleiss 1979; McGraw &
    Wong 1996); F-based intervals (the Satterthwaite df of McGraw & Wong for the absolute-agreement forms),
    as ``pingouin.intraclass_corr`` writes them, without its rounding of the interval to 2 decimals.

    Example:
        >>> icc_from_table(np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8]]))["ICC(C,1)"][0]  # doctest: +SKIP
    """
    y = np.asarray(table, dtype=float)
    n, k = y.shape
    grand = y.mean()
    # NumPy scalars, not Python floats: identical answers (no variance) must give NaN under errstate, not raise.
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_error = np.sum((y - grand) ** 2) - ss_rows - ss_cols
    df1, df_within, df_error = n - 1, n * (k - 1), (n - 1) * (k - 1)
    tail = (1 - confidence) / 2
    with np.errstate(all="ignore"):
        msb, msj, mse = ss_rows / df1, ss_cols / (k - 1), ss_error / df_error
        msw = (ss_cols + ss_error) / df_within
        icc1 = (msb - msw) / (msb + (k - 1) * msw)
        icc2 = (msb - mse) / (msb + (k - 1) * mse + k * (msj - mse) / n)
        icc3 = (msb - mse) / (msb + (k - 1) * mse)
        f1, f3 = msb / msw, msb / mse
        p1, p3 = float(sps.f.sf(f1, df1, df_within)), float(sps.f.sf(f3, df1, df_error))
        f1l, f1u = f1 / sps.f.ppf(1 - tail, df1, df_within), f1 * sps.f.ppf(1 - tail, df_within, df1)
        f3l, f3u = f3 / sps.f.ppf(1 - tail, df1, df_error), f3 * sps.f.ppf(1 - tail, df_error, df1)
        fj = msj / mse
        vn = df_error * (k * icc2 * fj + n * (1 + (k - 1) * icc2) - k * icc2) ** 2
        vd = df1 * k**2 * icc2**2 * fj**2 + (n * (1 + (k - 1) * icc2) - k * icc2) ** 2
        v = vn / vd
        f2u, f2l = sps.f.ppf(1 - tail, n - 1, v), sps.f.ppf(1 - tail, v, n - 1)
        l2 = n * (msb - f2u * mse) / (f2u * (k * msj + (k * n - k - n) * mse) + n * msb)
        u2 = n * (f2l * msb - mse) / (k * msj + (k * n - k - n) * mse + n * f2l * msb)
        out = {
            "ICC(1,1)": (
                icc1,
                (f1l - 1) / (f1l + (k - 1)),
                (f1u - 1) / (f1u + (k - 1)),
                f1,
                df1,
                df_within,
                p1,
            ),
            "ICC(A,1)": (icc2, l2, u2, f3, df1, df_error, p3),
            "ICC(C,1)": (
                icc3,
                (f3l - 1) / (f3l + (k - 1)),
                (f3u - 1) / (f3u + (k - 1)),
                f3,
                df1,
                df_error,
                p3,
            ),
            "ICC(1,k)": ((msb - msw) / msb, 1 - 1 / f1l, 1 - 1 / f1u, f1, df1, df_within, p1),
            "ICC(A,k)": (
                (msb - mse) / (msb + (msj - mse) / n),
                l2 * k / (1 + l2 * (k - 1)),
                u2 * k / (1 + u2 * (k - 1)),
                f3,
                df1,
                df_error,
                p3,
            ),
            "ICC(C,k)": ((msb - mse) / msb, 1 - 1 / f3l, 1 - 1 / f3u, f3, df1, df_error, p3),
        }
    return {
        name: (float(a), float(lo), float(hi), float(f), int(d1), int(d2), float(p))
        for name, (a, lo, hi, f, d1, d2, p) in out.items()
    }


def icc(ratings: pd.DataFrame) -> pd.DataFrame:
    """Six intraclass correlations with both naming conventions, on the largest complete units × listeners block.

    Units are (item, system) cells; a listener's repeats of a cell are averaged. Each row names the
    Shrout & Fleiss (1979) form (ICC(1,1), ICC(2,1), ICC(3,1), ICC(1,k), ICC(2,k), ICC(3,k)) and the
    McGraw & Wong (1996) form (ICC(1), ICC(A,1), ICC(C,1), ICC(k), ICC(A,k), ICC(C,k)) with the model in
    words, the 95 % F-based interval (:func:`icc_from_table`), and ``n_units`` / ``k_raters`` of the block
    used. If no block of at least 3 units × 2 listeners exists the values are NaN with a ``note``.

    Example:
        >>> table = icc(ratings)  # doctest: +SKIP
        >>> row = table.set_index("mcgraw_wong").loc["ICC(A,1)"]  # doctest: +SKIP
        >>> row[["icc", "ci_low", "ci_high", "n_units", "k_raters"]]  # doctest: +SKIP
    """
    return _icc_table(_coded(_clean_ratings(ratings, kind="mos")))


def reliability_summary(ratings: pd.DataFrame, *, kind: str) -> dict:
    """Alpha at the primary level (and interval too for MOS/SMOS) plus the ICC table, ready for a report page.

    Returns:
        ``{"kind", "primary_level", "alpha": {level: value}, "alpha_primary", "units", "listeners",
        "ratings", "icc": [rows of icc()], "notes"}``.

    Example:
        >>> s = reliability_summary(ratings, kind="mos")  # doctest: +SKIP
        >>> s["primary_level"], s["alpha"]  # doctest: +SKIP
        ('ordinal', {'ordinal': 0.61, 'interval': 0.63})
    """
    primary = alpha_level_for(kind)
    frame = _clean_ratings(ratings, kind=kind)
    levels = ["ordinal", "interval"] if kind in ("mos", "smos") else ["interval"]
    coded = _coded(frame)
    alphas = {level: _alpha_of_coded(coded, level) for level in levels}
    notes = []
    if kind in ("mos", "smos"):
        notes.append(
            "ordinal alpha is primary for a 5-point scale; interval alpha is shown for comparison with papers "
            "that treat MOS as interval"
        )
    table = _icc_table(coded)
    notes += sorted({n for n in table["note"] if n})
    return {
        "kind": kind,
        "primary_level": primary,
        "alpha": alphas,
        "alpha_primary": alphas[primary],
        "units": coded.n_units,
        "listeners": coded.n_listeners,
        "ratings": int(len(frame)),
        "icc": [
            {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in table.to_dict("records")
        ],
        "notes": notes,
    }


def agreement_coefficients(counts: np.ndarray | pd.DataFrame) -> dict:
    """Percent agreement, Fleiss' kappa and Gwet's AC1 from a units × categories table of rater counts.

    Units may have different numbers of raters (Gwet 2014, Handbook of Inter-Rater Reliability, 4th ed.,
    ch. 2 and 5): percent agreement pa averages, over units with at least 2 raters,
    sum_k r_ik (r_ik - 1) / (r_i (r_i - 1)); category shares pi_k average r_ik / r_i over units with at
    least 1 rater. Fleiss' kappa uses pe = sum_k pi_k^2 and Gwet's AC1 uses pe = sum_k pi_k (1 - pi_k) / (q - 1),
    with q the number of columns (categories that could be chosen, used or not). When every unit has the
    same number of raters kappa comes from ``statsmodels.stats.inter_rater.fleiss_kappa`` (identical to
    the generalised formula then). Undefined coefficients (pe = 1) are NaN.

    Example:
        >>> agreement_coefficients([[3, 0], [0, 3], [2, 1]])["percent_agreement"]
        0.7777777777777778
    """
    c = np.asarray(counts, dtype=float)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(
            f"counts must be (units, categories) with at least 2 categories; got shape {c.shape}"
        )
    r = c.sum(axis=1)
    c, r = c[r >= 1], r[r >= 1]
    multi = r >= 2
    out = {
        "n_units": int(len(c)),
        "n_units_multi": int(multi.sum()),
        "categories": int(c.shape[1]),
        "raters_min": int(r.min()) if len(r) else 0,
        "raters_max": int(r.max()) if len(r) else 0,
    }
    if not multi.any():
        return {
            **out,
            "percent_agreement": math.nan,
            "fleiss_kappa": math.nan,
            "gwet_ac1": math.nan,
            "pe_fleiss": math.nan,
            "pe_gwet": math.nan,
            "kappa_method": None,
        }
    pa = float(np.mean((c[multi] * (c[multi] - 1)).sum(axis=1) / (r[multi] * (r[multi] - 1))))
    pi = (c / r[:, None]).mean(axis=0)
    q = c.shape[1]
    pe_f = float(np.sum(pi**2))
    pe_g = float(np.sum(pi * (1 - pi)) / (q - 1))
    balanced = bool(np.all(r == r[0]))
    if pe_f >= 1 - 1e-12:
        kappa = math.nan
    elif balanced:
        kappa = float(sm_fleiss_kappa(c, method="fleiss"))
    else:
        kappa = (pa - pe_f) / (1 - pe_f)
    ac1 = (pa - pe_g) / (1 - pe_g) if pe_g < 1 - 1e-12 else math.nan
    return {
        **out,
        "percent_agreement": pa,
        "fleiss_kappa": float(kappa),
        "gwet_ac1": float(ac1),
        "pe_fleiss": pe_f,
        "pe_gwet": pe_g,
        "kappa_method": "statsmodels fleiss_kappa (equal raters per unit)"
        if balanced
        else "Fleiss' kappa generalised to unequal raters per unit (Gwet 2014)",
    }


def gwet_ac1(counts: np.ndarray | pd.DataFrame) -> float:
    """Gwet's AC1 from a units × categories count table; stays meaningful when one category is rare."""
    return agreement_coefficients(counts)["gwet_ac1"]


def flag_agreement(
    flags: pd.DataFrame, presented: pd.DataFrame, *, presentations: pd.DataFrame | None = None
) -> dict:
    """Agreement of listeners on flagged / not flagged per stimulus: percent agreement, Fleiss' kappa, Gwet's AC1.

    Units are stimuli, raters the listeners who heard them, categories "not flagged" and "flagged".
    With rare flags kappa collapses even when listeners almost always agree (the kappa paradox); AC1 does
    not, so both are reported. ``flag_share`` is the share of presentations flagged. ``presentations``: the
    table :func:`evalsite.analysis.flags.presentation_flags` gives for these frames, when the caller has it.

    Example:
        >>> flag_agreement(flags, presented)["gwet_ac1"]  # doctest: +SKIP
    """
    pres = presentation_flags(flags, presented) if presentations is None else presentations
    stimuli = pd.factorize(pres["stimulus"], sort=True)[0]
    flagged = pres["flagged"].to_numpy(bool)
    table = np.bincount(stimuli * 2 + flagged, minlength=2 * (int(stimuli.max(initial=-1)) + 1)).reshape(
        -1, 2
    )
    out = agreement_coefficients(table)
    out["flag_share"] = float(flagged.mean()) if len(pres) else math.nan
    out["alpha_nominal"] = flag_category_alpha(flags, presented, presentations=pres)
    return out


def flag_category_alpha(
    flags: pd.DataFrame, presented: pd.DataFrame, *, presentations: pd.DataFrame | None = None
) -> float:
    """Krippendorff's nominal alpha over flag categories, so agreement on *what* was heard is measured too.

    Units are stimuli. A listener who heard a stimulus and did not flag it contributes the category
    "none"; one who used several categories on it contributes the one with the longest flagged duration
    (see :func:`evalsite.analysis.flags.presentation_flags`, whose table may be passed as ``presentations``).
    """
    pres = presentation_flags(flags, presented) if presentations is None else presentations
    labels = pres["category"].where(pres["flagged"], NO_FLAG).astype(str)
    codes = pd.factorize(labels, sort=True)[0]
    return alpha_from_cells(pd.factorize(pres["stimulus"])[0], codes.astype(float), level="nominal")
