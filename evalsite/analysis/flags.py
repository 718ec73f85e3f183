"""Artifact flags: which stimuli listeners flag more often than chance, and where in time.

A flag is a time span a listener marked in a stimulus, with a category (e.g. "click", "buzz"). Who
*could* have flagged comes from the presented frame, so a share is always "flagging listeners / listeners
who heard it". Point flags (``end_s <= start_s``) cover one time step; flags without times count for
rates and agreement but not for densities and regions. Flags by a listener who, according
to the presented frame, never heard the stimulus are ignored with a warning. Frame conventions:
:mod:`evalsite.analysis.stats`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from evalsite.analysis.stats import _require_columns

FLAG_COLUMNS = ("listener", "stimulus", "start_s", "end_s", "category")
PRESENTED_COLUMNS = ("listener", "stimulus", "item", "system", "role", "duration_s")
HIDDEN_REFERENCE = "hidden_reference"


def presentation_flags(flags: pd.DataFrame, presented: pd.DataFrame) -> pd.DataFrame:
    """One row per (listener, stimulus) heard, with its flag count, flagged or not and its main category.

    The main ``category`` is the one with the longest total flagged duration (ties: alphabetical); it is
    None when the listener did not flag the stimulus. This is the unit of every rate and agreement.
    """
    _require_columns(flags, FLAG_COLUMNS, "flags")
    _require_columns(presented, PRESENTED_COLUMNS, "presented")
    heard = (presented.groupby(["listener", "stimulus"], sort=True)
             .agg(item=("item", "first"), system=("system", "first"), role=("role", "first"),
                  duration_s=("duration_s", "max"))
             .reset_index())
    f = _usable_flags(flags, heard)
    f["length"] = (f["end_s"] - f["start_s"]).clip(lower=0).fillna(0.0)
    count = f.groupby(["listener", "stimulus"]).size().rename("n_flags")
    by_cat = (f.groupby(["listener", "stimulus", "category"])["length"].sum().reset_index()
              .sort_values(["listener", "stimulus", "length", "category"], ascending=[True, True, False, True]))
    main = by_cat.drop_duplicates(["listener", "stimulus"]).set_index(["listener", "stimulus"])["category"]
    out = heard.join(count, on=["listener", "stimulus"]).join(main, on=["listener", "stimulus"])
    out["n_flags"] = out["n_flags"].fillna(0).astype(int)
    out["flagged"] = out["n_flags"] > 0
    out["category"] = out["category"].astype(object).where(out["flagged"], None)
    return out


def _usable_flags(flags: pd.DataFrame, heard: pd.DataFrame) -> pd.DataFrame:
    """Flags whose (listener, stimulus) was presented; the rest are dropped with a warning."""
    key = pd.MultiIndex.from_frame(heard[["listener", "stimulus"]])
    f = _numeric_flags(flags)
    ok = pd.MultiIndex.from_frame(f[["listener", "stimulus"]]).isin(key)
    if (~ok).any():
        warnings.warn(f"{int((~ok).sum())} flag(s) come from listeners who were not presented the stimulus; ignored",
                      stacklevel=3)
    return f.loc[ok]


def _numeric_flags(flags: pd.DataFrame) -> pd.DataFrame:
    """Flags with float times (NaN where missing) and "unspecified" for a missing category."""
    f = flags.copy()
    f["start_s"] = pd.to_numeric(f["start_s"], errors="coerce").astype(float)
    f["end_s"] = pd.to_numeric(f["end_s"], errors="coerce").astype(float)
    f["category"] = f["category"].astype(object).where(f["category"].notna(), "unspecified")
    return f


def _baseline(pres: pd.DataFrame, baseline_rate: float | None, min_baseline_rate: float) -> tuple[float, str]:
    """False-flag rate measured on hidden references, else the caller's ``baseline_rate``."""
    refs = pres.loc[pres["role"] == HIDDEN_REFERENCE]
    if len(refs):
        measured = float(refs["flagged"].mean())
        source = f"hidden_reference ({int(refs['flagged'].sum())} of {len(refs)} presentations flagged)"
        if measured < min_baseline_rate:
            return min_baseline_rate, f"{source}, floored at {min_baseline_rate:g}"
        return measured, source
    if baseline_rate is None:
        raise ValueError("no hidden-reference presentations to measure the false-flag rate on; "
                         "pass baseline_rate= (e.g. 0.05)")
    if not 0 < baseline_rate < 1:
        raise ValueError(f"baseline_rate must be in (0, 1); got {baseline_rate}")
    return float(baseline_rate), "argument"


def flag_rates(
    flags: pd.DataFrame,
    presented: pd.DataFrame,
    *,
    alpha: float = 0.05,
    baseline_rate: float | None = None,
    min_baseline_rate: float = 0.01,
) -> pd.DataFrame:
    """Per stimulus: listeners who heard it, who flagged it, the share, and an exact test against false flags.

    The false-flag (baseline) rate is the share of hidden-reference presentations that got a flag; with no
    hidden reference in ``presented`` it is ``baseline_rate``. A measured rate below ``min_baseline_rate``
    is raised to it (a zero rate would make any single flag "significant"). Each stimulus gets a one-sided
    exact binomial test (``scipy.stats.binomtest``, ``alternative="greater"``) of flagging listeners out of
    listeners who heard it; ``significant`` is ``p < alpha`` per stimulus, and ``p_fdr`` the
    Benjamini-Hochberg adjustment over all stimuli for reading many stimuli at once.

    Example:
        >>> rates = flag_rates(flags, presented)  # doctest: +SKIP
        >>> rates.loc[rates["significant"], ["stimulus", "flagged", "heard", "share"]]  # doctest: +SKIP
    """
    return _stimulus_rates(presentation_flags(flags, presented), alpha=alpha, baseline_rate=baseline_rate,
                           min_baseline_rate=min_baseline_rate)


def _stimulus_rates(
    pres: pd.DataFrame, *, alpha: float, baseline_rate: float | None, min_baseline_rate: float
) -> pd.DataFrame:
    """flag_rates on an already built presentation table."""
    rate, source = _baseline(pres, baseline_rate, min_baseline_rate)
    per = (pres.groupby("stimulus", sort=True)
           .agg(item=("item", "first"), system=("system", "first"), role=("role", "first"),
                heard=("listener", "nunique"), flagged=("flagged", "sum"))
           .reset_index())
    per["flagged"] = per["flagged"].astype(int)
    per["share"] = per["flagged"] / per["heard"]
    per["baseline_rate"] = rate
    per["baseline_source"] = source
    per["p"] = [float(sps.binomtest(int(k), int(n), rate, alternative="greater").pvalue)
                for k, n in zip(per["flagged"], per["heard"])]
    per["p_fdr"] = multipletests(per["p"], method="fdr_bh")[1] if len(per) else []
    per["significant"] = per["p"] < alpha
    per.attrs["method"] = (f"one-sided exact binomial test per stimulus against a false-flag rate of {rate:.3g} "
                           f"({source}); significant: p < {alpha} without multiplicity correction; "
                           "p_fdr: Benjamini-Hochberg")
    return per


def system_flag_rates(
    flags: pd.DataFrame,
    presented: pd.DataFrame,
    *,
    alpha: float = 0.05,
    baseline_rate: float | None = None,
    min_baseline_rate: float = 0.01,
) -> pd.DataFrame:
    """Per system (and role): presentations, share flagged, and how many of its stimuli flag_rates calls significant."""
    pres = presentation_flags(flags, presented)
    per_stim = _stimulus_rates(pres, alpha=alpha, baseline_rate=baseline_rate, min_baseline_rate=min_baseline_rate)
    sig = per_stim.groupby(["system", "role"])["significant"].sum().rename("stimuli_significant")
    out = (pres.groupby(["system", "role"], sort=True)
           .agg(stimuli=("stimulus", "nunique"), listeners=("listener", "nunique"),
                presentations=("flagged", "size"), flagged_presentations=("flagged", "sum"))
           .reset_index()
           .join(sig, on=["system", "role"]))
    out["flagged_presentations"] = out["flagged_presentations"].astype(int)
    out["share"] = out["flagged_presentations"] / out["presentations"]
    out["stimuli_significant"] = out["stimuli_significant"].fillna(0).astype(int)
    out["baseline_rate"] = per_stim["baseline_rate"].iloc[0] if len(per_stim) else math.nan
    return out


def _coverage(
    flags: pd.DataFrame, listeners: list, n_bins: int, resolution_s: float
) -> np.ndarray:
    """(listeners, bins) boolean: does the union of a listener's flags cover each time step."""
    index = {l: k for k, l in enumerate(listeners)}
    diff = np.zeros((len(listeners), n_bins + 1), dtype=np.int32)
    if len(flags):
        rows = flags["listener"].map(index).to_numpy(int)
        first = np.floor(flags["start_s"].to_numpy(float) / resolution_s + 1e-9).astype(int)
        last = np.ceil(flags["end_s"].to_numpy(float) / resolution_s - 1e-9).astype(int)
        last = np.maximum(last, first + 1)
        first, last = np.clip(first, 0, n_bins), np.clip(last, 0, n_bins)
        np.add.at(diff, (rows, first), 1)
        np.add.at(diff, (rows, last), -1)
    return np.cumsum(diff, axis=1)[:, :n_bins] > 0


def _stimulus_frames(
    flags: pd.DataFrame, presented: pd.DataFrame, stimulus: Hashable
) -> tuple[pd.DataFrame, list, float]:
    """Usable flags, listeners who heard it, and the duration of one stimulus."""
    _require_columns(flags, FLAG_COLUMNS, "flags")
    _require_columns(presented, PRESENTED_COLUMNS, "presented")
    heard = presented.loc[presented["stimulus"] == stimulus]
    if heard.empty:
        raise ValueError(f"stimulus {stimulus!r} is not in the presented frame")
    listeners = sorted(heard["listener"].unique(), key=str)
    f = _numeric_flags(flags.loc[(flags["stimulus"] == stimulus) & flags["listener"].isin(listeners)])
    f = f.loc[f["start_s"].notna() & f["end_s"].notna()]
    duration = float(pd.to_numeric(heard["duration_s"], errors="coerce").max())
    if not math.isfinite(duration) or duration <= 0:
        duration = float(f["end_s"].max()) if len(f) else 0.0
    return f, listeners, duration


def flag_density(
    flags: pd.DataFrame, presented: pd.DataFrame, stimulus: Hashable, *, resolution_s: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Share of the listeners who heard ``stimulus`` whose flags cover each time step, for plotting.

    Returns ``(times, shares)``: bin centres in seconds (step ``resolution_s``, up to the stimulus
    duration) and the share of listeners at each. A listener with overlapping flags counts once.

    Example:
        >>> t, share = flag_density(flags, presented, "stim-17")  # doctest: +SKIP
    """
    if resolution_s <= 0:
        raise ValueError(f"resolution_s must be positive; got {resolution_s}")
    f, listeners, duration = _stimulus_frames(flags, presented, stimulus)
    n_bins = max(1, int(math.ceil(duration / resolution_s - 1e-9)))
    covered = _coverage(f, listeners, n_bins, resolution_s)
    times = (np.arange(n_bins) + 0.5) * resolution_s
    return times, covered.sum(axis=0) / len(listeners)


def flag_regions(
    flags: pd.DataFrame,
    presented: pd.DataFrame,
    *,
    resolution_s: float = 0.01,
    min_share: float = 0.3,
    min_listeners: int = 2,
    merge_gap_s: float = 0.1,
) -> pd.DataFrame:
    """Time regions of each stimulus where at least ``min_share`` of its listeners flagged, with who and what.

    Spans of the :func:`flag_density` curve at or above ``min_share`` that are at most ``merge_gap_s``
    apart are merged. A region needs flags from at least ``min_listeners`` listeners. Each region has
    ``start_s``, ``end_s``, ``peak_share``, ``n_listeners`` (listeners whose flags overlap it), ``heard``,
    ``listeners`` and ``categories`` ({category: listeners naming it in the region}).

    Example:
        >>> regions = flag_regions(flags, presented, min_share=0.5)  # doctest: +SKIP
        >>> regions[["stimulus", "start_s", "end_s", "peak_share", "categories"]]  # doctest: +SKIP
    """
    _require_columns(flags, FLAG_COLUMNS, "flags")
    _require_columns(presented, PRESENTED_COLUMNS, "presented")
    columns = ["stimulus", "item", "system", "role", "start_s", "end_s", "peak_share", "n_listeners", "heard",
               "listeners", "categories"]
    info = presented.groupby("stimulus").agg(item=("item", "first"), system=("system", "first"), role=("role", "first"))
    rows = []
    for stimulus in sorted(set(flags["stimulus"]) & set(presented["stimulus"]), key=str):
        f, listeners, duration = _stimulus_frames(flags, presented, stimulus)
        if f.empty:
            continue
        times, shares = flag_density(flags, presented, stimulus, resolution_s=resolution_s)
        for b0, b1 in _runs(shares >= min_share - 1e-12, max_gap_bins=int(round(merge_gap_s / resolution_s))):
            start, end = b0 * resolution_s, b1 * resolution_s
            flag_end = np.maximum(f["end_s"], f["start_s"] + resolution_s)
            inside = f.loc[(f["start_s"] < end) & (flag_end > start)]
            who = sorted(inside["listener"].unique(), key=str)
            if len(who) < min_listeners:
                continue
            cats = inside.drop_duplicates(["listener", "category"])["category"].value_counts()
            rows.append(dict(stimulus=stimulus, **info.loc[stimulus].to_dict(), start_s=float(start), end_s=float(end),
                             peak_share=float(shares[b0:b1].max()), n_listeners=len(who), heard=len(listeners),
                             listeners=who, categories={str(k): int(v) for k, v in cats.sort_index().items()}))
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["method"] = (f"density of flagging listeners per {resolution_s:g} s step; regions at or above "
                           f"{min_share:g} of listeners, merged across gaps up to {merge_gap_s:g} s, "
                           f"at least {min_listeners} listeners")
    return out


def _runs(mask: np.ndarray, *, max_gap_bins: int) -> list[tuple[int, int]]:
    """Half-open [start, stop) bin runs where mask is true, merging runs separated by at most max_gap_bins."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
    merged: list[tuple[int, int]] = []
    for start, stop in runs:
        if merged and start - merged[-1][1] <= max_gap_bins:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged
