"""Inter-rater reliability: Krippendorff's alpha, ICC, and agreement on binary artifact flags.

Units of a rating test are (item, system) cells (plus ``comparison`` for CMOS) and raters are listeners.

- Krippendorff's alpha (``krippendorff`` package) handles missing cells, so it is the statistic of choice
  for incomplete (crowdsourced) designs. Level: interval for MUSHRA and CMOS, ordinal for 5-point MOS/SMOS
  (interval is also reported for those, as many papers use it).
- ICC (``pingouin.intraclass_corr``) needs a complete units × raters table. For an incomplete design it is
  computed on the largest complete block found greedily (repeatedly drop the unit or listener with the
  largest share of missing cells); the block size is reported with the values, and the block may be much
  smaller than the data, in which case alpha is the number to read.
- Binary flags: percent agreement, Fleiss' kappa and Gwet's AC1 over stimuli (units) rated by the
  listeners who heard them (variable raters per unit, Gwet 2014 handbook formulas), and Krippendorff's
  nominal alpha over flag categories.
"""

from __future__ import annotations

import math
import warnings

import krippendorff
import numpy as np
import pandas as pd
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from evalsite.analysis.flags import presentation_flags
from evalsite.analysis.stats import _check_kind, _clean_ratings

LEVELS = ("nominal", "ordinal", "interval", "ratio")
MAX_DISTINCT_VALUES = 101
"""Interval/ratio data with more distinct values are put on a grid of this many points over their range.

krippendorff 0.9.0 builds a units × V × V array (V distinct values): 3000 units × 200 values take 12 s and
about 1 GB. 101 points keep integer 0-100 MUSHRA scores exact."""
NO_FLAG = "none"

ICC_NAMES = {
    # pingouin type → (Shrout & Fleiss 1979, McGraw & Wong 1996, model)
    "ICC(1,1)": ("ICC(1,1)", "ICC(1)", "one-way random effects, single rater"),
    "ICC(A,1)": ("ICC(2,1)", "ICC(A,1)", "two-way random effects, absolute agreement, single rater"),
    "ICC(C,1)": ("ICC(3,1)", "ICC(C,1)", "two-way mixed effects, consistency, single rater"),
    "ICC(1,k)": ("ICC(1,k)", "ICC(k)", "one-way random effects, mean of k raters"),
    "ICC(A,k)": ("ICC(2,k)", "ICC(A,k)", "two-way random effects, absolute agreement, mean of k raters"),
    "ICC(C,k)": ("ICC(3,k)", "ICC(C,k)", "two-way mixed effects, consistency, mean of k raters"),
}
_PINGOUIN_OLD_NAMES = {"ICC1": "ICC(1,1)", "ICC2": "ICC(A,1)", "ICC3": "ICC(C,1)",
                       "ICC1k": "ICC(1,k)", "ICC2k": "ICC(A,k)", "ICC3k": "ICC(C,k)"}
ICC_COLUMNS = ["shrout_fleiss", "mcgraw_wong", "description", "icc", "ci_low", "ci_high", "F", "df1", "df2", "p",
               "n_units", "k_raters", "note"]


def alpha_level_for(kind: str) -> str:
    """Primary Krippendorff level per test kind: interval for MUSHRA/CMOS, ordinal for 5-point MOS/SMOS."""
    _check_kind(kind)
    return "ordinal" if kind in ("mos", "smos") else "interval"


def _unit_columns(frame: pd.DataFrame) -> list[str]:
    """A unit is one stimulus: (item, system), plus the comparison for CMOS."""
    return ["item", "system"] + (["comparison"] if "comparison" in frame else [])


def _reliability_matrix(frame: pd.DataFrame, level: str) -> pd.DataFrame:
    """Listeners × units with NaN for missing; repeats averaged (interval/ratio) or the first kept (nominal/ordinal)."""
    units = _unit_columns(frame)
    if level in ("nominal", "ordinal"):
        frame = frame.drop_duplicates(["listener", *units], keep="first")
    return frame.pivot_table(index="listener", columns=units, values="score", aggfunc="mean")


def krippendorff_alpha(ratings: pd.DataFrame, *, level: str) -> float:
    """Krippendorff's alpha over (item, system) units with listeners as coders; NaN when it is undefined.

    Missing cells are allowed. Undefined cases (no unit with two ratings, a single value in the whole data)
    return NaN rather than raising. The package's memory grows with units × (distinct values)², so
    interval/ratio data with more than ``MAX_DISTINCT_VALUES`` distinct values (continuous sliders) are
    first put on a grid of that many points over their range (steps of 1 on a 0-100 scale; the change in
    alpha is of the order of step² / (6 · variance)); integer 0-100 MUSHRA scores are used as they are.

    Example:
        >>> r = pd.DataFrame({"listener": [1, 2, 1, 2], "item": ["a", "a", "b", "b"], "system": "x",
        ...                   "score": [1.0, 1.0, 5.0, 4.0]})
        >>> round(krippendorff_alpha(r, level="interval"), 3)
        0.941
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    frame = _clean_ratings(ratings, kind="mos")
    matrix = _reliability_matrix(frame, level).to_numpy(float)
    values = matrix[np.isfinite(matrix)]
    if level in ("interval", "ratio") and len(np.unique(values)) > MAX_DISTINCT_VALUES:
        low, step = values.min(), np.ptp(values) / (MAX_DISTINCT_VALUES - 1)
        matrix = low + np.round((matrix - low) / step) * step
    return _alpha_or_nan(matrix, level)


def _alpha_or_nan(matrix: np.ndarray, level: str) -> float:
    """Call the krippendorff package; its ValueErrors (undefined alpha) become NaN."""
    if matrix.size == 0 or np.sum(np.sum(np.isfinite(matrix), axis=0) >= 2) == 0:
        return math.nan
    values = matrix[np.isfinite(matrix)]
    if len(np.unique(values)) < 2:
        return math.nan
    try:
        return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level))
    except (ValueError, ZeroDivisionError):
        return math.nan


def _largest_complete_block(wide: pd.DataFrame) -> pd.DataFrame:
    """Greedy complete sub-table: repeatedly drop the row or column with the largest share of missing cells."""
    present = wide.notna().to_numpy()
    rows, cols = np.ones(present.shape[0], bool), np.ones(present.shape[1], bool)
    while rows.any() and cols.any():
        sub = present[np.ix_(rows, cols)]
        if sub.all():
            break
        row_missing = 1 - sub.mean(axis=1)
        col_missing = 1 - sub.mean(axis=0)
        if row_missing.max() >= col_missing.max():
            rows[np.flatnonzero(rows)[row_missing.argmax()]] = False
        else:
            cols[np.flatnonzero(cols)[col_missing.argmax()]] = False
    return wide.loc[rows, cols]


def icc(ratings: pd.DataFrame) -> pd.DataFrame:
    """Six intraclass correlations with both naming conventions, on the largest complete units × listeners block.

    Units are (item, system) cells; a listener's repeats of a cell are averaged. Each row names the
    Shrout & Fleiss (1979) form (ICC(1,1), ICC(2,1), ICC(3,1), ICC(1,k), ICC(2,k), ICC(3,k)) and the
    McGraw & Wong (1996) form (ICC(1), ICC(A,1), ICC(C,1), ICC(k), ICC(A,k), ICC(C,k)) with the model in
    words, pingouin's 95 % F-based interval, and ``n_units`` / ``k_raters`` of the block used. If no block
    of at least 3 units × 2 listeners exists the values are NaN with a ``note``.

    Example:
        >>> table = icc(ratings)  # doctest: +SKIP
        >>> row = table.set_index("mcgraw_wong").loc["ICC(A,1)"]  # doctest: +SKIP
        >>> row[["icc", "ci_low", "ci_high", "n_units", "k_raters"]]  # doctest: +SKIP
    """
    import pingouin

    frame = _clean_ratings(ratings, kind="mos")
    units = _unit_columns(frame)
    wide = frame.pivot_table(index=units, columns="listener", values="score", aggfunc="mean")
    block = _largest_complete_block(wide)
    n_units, k = block.shape
    total_cells = int(wide.notna().sum().sum())
    note = None if n_units * k == total_cells else (
        f"incomplete design: computed on the largest complete block found ({n_units} units × {k} listeners, "
        f"{n_units * k} of {total_cells} rated cells)")
    if n_units < 3 or k < 2:
        reason = f"no complete block of at least 3 units × 2 listeners (largest found: {n_units} × {k})"
        rows = [dict(zip(ICC_COLUMNS, (*names, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan,
                                       n_units, k, reason))) for names in ICC_NAMES.values()]
        return pd.DataFrame(rows, columns=ICC_COLUMNS)
    long = block.reset_index(drop=True).rename_axis("unit").reset_index().melt(
        id_vars="unit", var_name="listener", value_name="score")
    long["listener"] = pd.factorize(long["listener"])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = pingouin.intraclass_corr(data=long, targets="unit", raters="listener", ratings="score")
    rows = []
    for _, r in res.iterrows():
        key = _PINGOUIN_OLD_NAMES.get(r["Type"], r["Type"])
        ci = r["CI95%"] if "CI95%" in r else r["CI95"]
        rows.append(dict(zip(ICC_COLUMNS, (*ICC_NAMES[key], float(r["ICC"]), float(ci[0]), float(ci[1]),
                                           float(r["F"]), int(r["df1"]), int(r["df2"]), float(r["pval"]),
                                           int(n_units), int(k), note))))
    return pd.DataFrame(rows, columns=ICC_COLUMNS)


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
    alphas = {level: krippendorff_alpha(frame, level=level) for level in levels}
    notes = []
    if kind in ("mos", "smos"):
        notes.append("ordinal alpha is primary for a 5-point scale; interval alpha is shown for comparison with papers "
                     "that treat MOS as interval")
    table = icc(frame)
    notes += sorted({n for n in table["note"] if n})
    return {
        "kind": kind,
        "primary_level": primary,
        "alpha": alphas,
        "alpha_primary": alphas[primary],
        "units": int(frame[_unit_columns(frame)].drop_duplicates().shape[0]),
        "listeners": int(frame["listener"].nunique()),
        "ratings": int(len(frame)),
        "icc": [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
                for row in table.to_dict("records")],
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
        raise ValueError(f"counts must be (units, categories) with at least 2 categories; got shape {c.shape}")
    r = c.sum(axis=1)
    c, r = c[r >= 1], r[r >= 1]
    multi = r >= 2
    out = {"n_units": int(len(c)), "n_units_multi": int(multi.sum()), "categories": int(c.shape[1]),
           "raters_min": int(r.min()) if len(r) else 0, "raters_max": int(r.max()) if len(r) else 0}
    if not multi.any():
        return {**out, "percent_agreement": math.nan, "fleiss_kappa": math.nan, "gwet_ac1": math.nan,
                "pe_fleiss": math.nan, "pe_gwet": math.nan, "kappa_method": None}
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
    return {**out, "percent_agreement": pa, "fleiss_kappa": float(kappa), "gwet_ac1": float(ac1),
            "pe_fleiss": pe_f, "pe_gwet": pe_g,
            "kappa_method": "statsmodels fleiss_kappa (equal raters per unit)" if balanced
            else "Fleiss' kappa generalised to unequal raters per unit (Gwet 2014)"}


def gwet_ac1(counts: np.ndarray | pd.DataFrame) -> float:
    """Gwet's AC1 from a units × categories count table; stays meaningful when one category is rare."""
    return agreement_coefficients(counts)["gwet_ac1"]


def flag_agreement(flags: pd.DataFrame, presented: pd.DataFrame) -> dict:
    """Agreement of listeners on flagged / not flagged per stimulus: percent agreement, Fleiss' kappa, Gwet's AC1.

    Units are stimuli, raters the listeners who heard them, categories "not flagged" and "flagged".
    With rare flags kappa collapses even when listeners almost always agree (the kappa paradox); AC1 does
    not, so both are reported. ``flag_share`` is the share of presentations flagged.

    Example:
        >>> flag_agreement(flags, presented)["gwet_ac1"]  # doctest: +SKIP
    """
    pres = presentation_flags(flags, presented)
    table = pd.crosstab(pres["stimulus"], pres["flagged"]).reindex(columns=[False, True], fill_value=0)
    out = agreement_coefficients(table.to_numpy())
    out["flag_share"] = float(pres["flagged"].mean()) if len(pres) else math.nan
    out["alpha_nominal"] = flag_category_alpha(flags, presented)
    return out


def flag_category_alpha(flags: pd.DataFrame, presented: pd.DataFrame) -> float:
    """Krippendorff's nominal alpha over flag categories, so agreement on *what* was heard is measured too.

    Units are stimuli. A listener who heard a stimulus and did not flag it contributes the category
    "none"; one who used several categories on it contributes the one with the longest flagged duration
    (see :func:`evalsite.analysis.flags.presentation_flags`).
    """
    pres = presentation_flags(flags, presented)
    labels = pres["category"].where(pres["flagged"], NO_FLAG).astype(str)
    codes, _ = pd.factorize(labels, sort=True)
    wide = (pres.assign(code=codes.astype(float))
            .pivot_table(index="listener", columns="stimulus", values="code", aggfunc="first"))
    return _alpha_or_nan(wide.to_numpy(float), "nominal")
