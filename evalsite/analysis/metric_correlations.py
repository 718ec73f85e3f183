"""The human ↔ metric section of a listening test's results: correlations of human scores with the objective
metrics of the rated checkpoints, at system and item level, and the points behind them (for scatter plots)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evalsite.analysis import correlation
from evalsite.listening.models import Condition, ListeningTest
from metrics.jsonable import jsonable

MAX_ITEM_POINTS = 5000
CORRELATION_METHOD = "{level}-level means; scipy pearsonr, spearmanr, kendalltau (tau-b), two-sided p"
"""What ``correlation.human_metric_correlations`` writes in ``attrs["method"]`` (the tests compare them)."""


def human_for_metrics(kind: str, kept: pd.DataFrame) -> pd.DataFrame:
    """Human score per (system, item) to correlate with metrics: ratings of checkpoints only.

    AB: the share of a system's decided comparisons it won (1 won, 0 lost), per item and overall.
    """
    if kept.empty:
        return pd.DataFrame(columns=["system", "item", "score"])
    if kind == ListeningTest.Kind.AB:
        decided = kept.loc[kept["preferred"].notna()]
        loser = np.where(decided["preferred"] == decided["a"], decided["b"], decided["a"])
        return pd.concat(
            [
                pd.DataFrame({"system": decided["preferred"], "item": decided["item"], "score": 1.0}),
                pd.DataFrame({"system": loser, "item": decided["item"].to_numpy(), "score": 0.0}),
            ]
        )
    frame = kept if "role" not in kept else kept.loc[kept["role"] == Condition.Role.SYSTEM]
    return frame[["system", "item", "score"]]


def metric_correlations(kind: str, kept: pd.DataFrame, metrics: pd.DataFrame) -> dict:
    """Human ↔ metric correlations at system and item level, with the points behind them (for scatter plots).

    The rows are :func:`correlation.human_metric_correlations`'s (the tests check they are equal): human means
    per key and metric means per (metric, key) are each one groupby, and every metric is then a join of two
    sorted key lists, instead of the function's pandas merges per metric and level.
    """
    out: dict = {
        "metrics": [],
        "system": [],
        "item": [],
        "points": {"system": {}, "item": {}},
        "method": None,
        # What is stored even without human scores, so an empty section can say that metrics exist.
        "stored_metrics": sorted(set(metrics["metric"])) if not metrics.empty else [],
    }
    human = human_for_metrics(kind, kept)
    if metrics.empty or human.empty:
        return out
    out["metrics"] = jsonable(
        [
            {
                "name": name,
                "higher_is_better": g["higher_is_better"].dropna().iloc[0]
                if g["higher_is_better"].notna().any()
                else None,
                "systems": int(g["system"].nunique()),
                "matched_outputs": bool(g["matched"].all()),
                "params_hash": sorted(set(g["params_hash"])),
            }
            for name, g in metrics.groupby("metric", sort=True)
        ]
    )
    system_metrics = metrics[["system", "metric", "value"]]
    item_rows = [
        (r.system, str(item), r.metric, value)
        for r in metrics.itertuples()
        for item, value in (r.per_item or {}).items()
        if isinstance(value, (int, float))
    ]
    item_metrics = pd.DataFrame(item_rows, columns=["system", "item", "metric", "value"])
    human = human.assign(item=human["item"].astype(str), score=pd.to_numeric(human["score"], errors="coerce"))
    human = human.loc[human["score"].notna()]
    out["method"] = CORRELATION_METHOD.format(level="system")
    out["system"], out["points"]["system"] = _level_correlations(
        "system", human.groupby("system")["score"].mean(), system_metrics, limit=None
    )
    if not item_metrics.empty:
        out["item"], out["points"]["item"] = _level_correlations(
            "item", human.groupby(["system", "item"])["score"].mean(), item_metrics, limit=MAX_ITEM_POINTS
        )
    return out


def _level_correlations(
    level: str, human_means: pd.Series, metrics: pd.DataFrame, *, limit: int | None
) -> tuple[list[dict], dict]:
    """Rows of ``correlation.human_metric_correlations(human, metrics, level=level)`` and the scatter points per
    metric (metric means joined with the human means, NaN metric values kept there), keys in sorted order."""
    keys = correlation.LEVEL_KEYS[level]
    metrics = metrics.assign(value=pd.to_numeric(metrics["value"], errors="coerce"))
    means = metrics.groupby(["metric", *keys], sort=True)["value"].mean()
    human = dict(zip(human_means.index, human_means.to_numpy()))
    rows, points = [], {}
    for metric, block in means.groupby(level=0, sort=True):
        key_list = [k[1] if len(keys) == 1 else k[1:] for k in block.index]
        joined = [(key, human[key], value) for key, value in zip(key_list, block.to_numpy()) if key in human]
        shown = joined if limit is None else joined[:limit]
        columns = (
            {"systems": [k for k, _, _ in shown]}
            if len(keys) == 1
            else {"systems": [k[0] for k, _, _ in shown], "items": [k[1] for k, _, _ in shown]}
        )
        points[metric] = jsonable(
            {
                **columns,
                "human": np.array([h for _, h, _ in shown], dtype=float),
                "metric": np.array([v for _, _, v in shown], dtype=float),
            }
        )
        valid = [(h, v) for _, h, v in joined if not math.isnan(v)]
        if not valid and block.isna().all():
            continue  # only missing values: the metric is not in the correlation table
        x, y = np.array([h for h, _ in valid], dtype=float), np.array([v for _, v in valid], dtype=float)
        values, note = correlation._correlate(x, y)
        rows.append(jsonable({"metric": metric, "level": level, "n": len(valid), **values, "note": note}))
    return rows, points
