"""Correlation of human scores with objective metrics, per system or per (system, item).

``human``: ``system`` (+ ``item`` for item level) and ``score``, one row per rating or already averaged.
``metrics``: ``system`` (+ ``item``), ``metric``, ``value``. Both are averaged to the chosen level before
correlating, and only keys present in both enter.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from evalsite.analysis.stats import _require_columns

LEVEL_KEYS = {"system": ["system"], "item": ["system", "item"]}
MIN_POINTS = 3
COLUMNS = [
    "metric",
    "level",
    "n",
    "pearson_r",
    "pearson_p",
    "spearman_rho",
    "spearman_p",
    "kendall_tau",
    "kendall_p",
    "note",
]


def _correlate(x: np.ndarray, y: np.ndarray) -> tuple[dict, str | None]:
    """Pearson, Spearman and Kendall (tau-b) with p-values; NaN and a note when undefined."""
    nan = dict(
        pearson_r=math.nan,
        pearson_p=math.nan,
        spearman_rho=math.nan,
        spearman_p=math.nan,
        kendall_tau=math.nan,
        kendall_p=math.nan,
    )
    if len(x) < MIN_POINTS:
        return nan, f"only {len(x)} points (at least {MIN_POINTS} needed)"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan, "constant human scores or metric values; correlation undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.ConstantInputWarning)
        p, s, k = sps.pearsonr(x, y), sps.spearmanr(x, y), sps.kendalltau(x, y)
    return dict(
        pearson_r=float(p.statistic),
        pearson_p=float(p.pvalue),
        spearman_rho=float(s.statistic),
        spearman_p=float(s.pvalue),
        kendall_tau=float(k.statistic),
        kendall_p=float(k.pvalue),
    ), None


def human_metric_correlations(
    human: pd.DataFrame, metrics: pd.DataFrame, *, level: str = "system"
) -> pd.DataFrame:
    """Pearson, Spearman and Kendall correlation of each metric with human scores, with p-values and n.

    Args:
        human: ``system`` (+ ``item``) and ``score``.
        metrics: ``system`` (+ ``item``), ``metric``, ``value``.
        level: ``"system"`` (means per system) or ``"item"`` (means per system × item).

    Returns:
        One row per metric: ``n`` points, ``pearson_r``/``pearson_p``, ``spearman_rho``/``spearman_p``,
        ``kendall_tau``/``kendall_p`` (tau-b, SciPy's default), and a ``note`` where they are NaN
        (fewer than 3 points, constant input). Signs are raw: a lower-is-better metric correlates negatively.

    Example:
        >>> human = pd.DataFrame({"system": list("abcd"), "score": [1.0, 2.0, 3.0, 4.0]})
        >>> metrics = pd.DataFrame({"system": list("abcd"), "metric": "pesq", "value": [1.1, 1.9, 3.2, 3.9]})
        >>> human_metric_correlations(human, metrics)[["metric", "n", "spearman_rho"]].to_dict("records")
        [{'metric': 'pesq', 'n': 4, 'spearman_rho': 1.0}]
    """
    if level not in LEVEL_KEYS:
        raise ValueError(f"level must be one of {tuple(LEVEL_KEYS)}; got {level!r}")
    keys = LEVEL_KEYS[level]
    _require_columns(human, [*keys, "score"], "human")
    _require_columns(metrics, [*keys, "metric", "value"], "metrics")
    h = human.assign(score=pd.to_numeric(human["score"], errors="coerce")).dropna(subset=["score"])
    h = h.groupby(keys)["score"].mean()
    m = metrics.assign(value=pd.to_numeric(metrics["value"], errors="coerce")).dropna(subset=["value"])
    rows = []
    for metric, g in m.groupby("metric", sort=True):
        joined = pd.concat([h, g.groupby(keys)["value"].mean()], axis=1, join="inner")
        stats, note = _correlate(joined["score"].to_numpy(float), joined["value"].to_numpy(float))
        rows.append(dict(metric=metric, level=level, n=len(joined), **stats, note=note))
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.attrs["method"] = f"{level}-level means; scipy pearsonr, spearmanr, kendalltau (tau-b), two-sided p"
    return out
