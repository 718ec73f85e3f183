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
from collections import Counter
from collections.abc import Hashable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from evalsite.analysis.stats import _require_columns

FLAG_COLUMNS = ("listener", "stimulus", "start_s", "end_s", "category")
PRESENTED_COLUMNS = ("listener", "stimulus", "item", "system", "role", "duration_s")
HIDDEN_REFERENCE = "hidden_reference"
SYSTEM_FLAG_COLUMNS = [
    "system",
    "role",
    "stimuli",
    "listeners",
    "flagging_listeners",
    "presentations",
    "flagged_presentations",
    "stimuli_significant",
    "share",
    "baseline_rate",
    "p",
]


def presentation_flags(flags: pd.DataFrame, presented: pd.DataFrame) -> pd.DataFrame:
    """One row per (listener, stimulus) heard, with its flag count, flagged or not and its main category.

    The main ``category`` is the one with the longest total flagged duration (ties: alphabetical); it is
    None when the listener did not flag the stimulus. This is the unit of every rate and agreement; build it
    once and pass it on (:func:`stimulus_flag_rates`, ``reliability.flag_agreement(presentations=...)``).
    Rows are sorted by listener, then stimulus.
    """
    _require_columns(flags, FLAG_COLUMNS, "flags")
    _require_columns(presented, PRESENTED_COLUMNS, "presented")
    listener_codes, listener_ids = pd.factorize(presented["listener"], sort=True)
    stimulus_codes, stimulus_ids = pd.factorize(presented["stimulus"], sort=True)
    width = max(len(stimulus_ids), 1)
    keys, first = np.unique(listener_codes.astype(np.int64) * width + stimulus_codes, return_index=True)
    columns = ["listener", "stimulus", "item", "system", "role", "duration_s"]
    if len(keys) == len(presented):  # one row per presentation: each group's first / max is its only row
        heard = presented.iloc[first][columns].reset_index(drop=True)
    else:
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
    f = _numeric_flags(flags)
    flag_listeners = pd.Index(listener_ids).get_indexer(f["listener"])
    flag_stimuli = pd.Index(stimulus_ids).get_indexer(f["stimulus"])
    flag_keys = flag_listeners.astype(np.int64) * width + flag_stimuli
    position = np.searchsorted(keys, flag_keys).clip(max=max(len(keys) - 1, 0))
    ok = (flag_listeners >= 0) & (flag_stimuli >= 0) & (keys[position] == flag_keys if len(keys) else False)
    if (~ok).any():
        warnings.warn(
            f"{int((~ok).sum())} flag(s) come from listeners who were not presented the stimulus; ignored",
            stacklevel=2,
        )
    f, position = f.loc[ok], position[ok]
    n_flags = np.bincount(position, minlength=len(keys)).astype(int)
    category = np.full(len(keys), None, dtype=object)
    if len(f):
        length = (f["end_s"] - f["start_s"]).clip(lower=0).fillna(0.0).to_numpy(float)
        by_cat = (
            pd.DataFrame({"position": position, "category": f["category"].to_numpy(object), "length": length})
            .groupby(["position", "category"], sort=True)["length"]
            .sum()
            .reset_index()
            .sort_values(["position", "length", "category"], ascending=[True, False, True])
            .drop_duplicates("position")
        )
        category[by_cat["position"].to_numpy()] = by_cat["category"].to_numpy(object)
    heard["n_flags"] = n_flags
    heard["category"] = pd.Series(category, dtype=object)
    heard["flagged"] = n_flags > 0
    return heard


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
        raise ValueError(
            "no hidden-reference presentations to measure the false-flag rate on; "
            "pass baseline_rate= (e.g. 0.05)"
        )
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
    exact binomial test (``scipy.stats.binomtest``, ``alternative="greater"``, i.e. ``binom.sf(k - 1, n, rate)``)
    of flagging listeners out of listeners who heard it; ``significant`` is ``p < alpha`` per stimulus, and
    ``p_fdr`` the Benjamini-Hochberg adjustment over all stimuli for reading many stimuli at once.

    Example:
        >>> rates = flag_rates(flags, presented)  # doctest: +SKIP
        >>> rates.loc[rates["significant"], ["stimulus", "flagged", "heard", "share"]]  # doctest: +SKIP
    """
    return stimulus_flag_rates(
        presentation_flags(flags, presented),
        alpha=alpha,
        baseline_rate=baseline_rate,
        min_baseline_rate=min_baseline_rate,
    )


def stimulus_flag_rates(
    pres: pd.DataFrame,
    *,
    alpha: float = 0.05,
    baseline_rate: float | None = None,
    min_baseline_rate: float = 0.01,
) -> pd.DataFrame:
    """:func:`flag_rates` from the table :func:`presentation_flags` built (one row per listener and stimulus)."""
    rate, source = _baseline(pres, baseline_rate, min_baseline_rate)
    stimuli, stimulus_ids = pd.factorize(pres["stimulus"], sort=True)
    first = np.unique(stimuli, return_index=True)[1]
    per = pd.DataFrame(
        {
            "stimulus": stimulus_ids,
            "item": pres["item"].to_numpy(object)[first],
            "system": pres["system"].to_numpy(object)[first],
            "role": pres["role"].to_numpy(object)[first],
        }
    )
    per["heard"] = np.bincount(stimuli, minlength=len(stimulus_ids))
    per["flagged"] = np.bincount(
        stimuli, weights=pres["flagged"].to_numpy(bool), minlength=len(stimulus_ids)
    ).astype(int)
    per["share"] = per["flagged"] / per["heard"]
    per["baseline_rate"] = rate
    per["baseline_source"] = source
    per["p"] = sps.binom.sf(per["flagged"].to_numpy() - 1, per["heard"].to_numpy(), rate).astype(float)
    per["p_fdr"] = multipletests(per["p"], method="fdr_bh")[1] if len(per) else []
    per["significant"] = per["p"] < alpha
    per.attrs["method"] = (
        f"one-sided exact binomial test per stimulus against a false-flag rate of {rate:.3g} "
        f"({source}); significant: p < {alpha} without multiplicity correction; "
        "p_fdr: Benjamini-Hochberg"
    )
    return per


def presentations_p(flagged: ArrayLike, presentations: ArrayLike, rate: ArrayLike) -> np.ndarray:
    """One-sided exact binomial p of ``flagged`` of ``presentations`` against a false-flag ``rate`` (the
    ``binomtest(..., alternative="greater")`` p-value, vectorised).

    Example:
        >>> presentations_p([0, 2], [10, 10], 0.05).round(4).tolist()
        [1.0, 0.0861]
    """
    flagged = np.asarray(flagged, dtype=float)
    return sps.binom.sf(flagged - 1, np.asarray(presentations, dtype=float), rate).astype(float)


def system_flag_rates(
    flags: pd.DataFrame,
    presented: pd.DataFrame,
    *,
    alpha: float = 0.05,
    baseline_rate: float | None = None,
    min_baseline_rate: float = 0.01,
) -> pd.DataFrame:
    """Per system (and role): presentations, share flagged, how many of its stimuli flag_rates calls significant,
    the listeners who flagged any of its stimuli, and the one-sided exact binomial p of its flagged presentations
    against the false-flag rate (:func:`presentations_p`)."""
    pres = presentation_flags(flags, presented)
    per_stim = stimulus_flag_rates(
        pres, alpha=alpha, baseline_rate=baseline_rate, min_baseline_rate=min_baseline_rate
    )
    sig = per_stim.groupby(["system", "role"])["significant"].sum().rename("stimuli_significant")
    flagging = (
        pres.loc[pres["flagged"]]
        .groupby(["system", "role"])["listener"]
        .nunique()
        .rename("flagging_listeners")
    )
    out = (
        pres.groupby(["system", "role"], sort=True)
        .agg(
            stimuli=("stimulus", "nunique"),
            listeners=("listener", "nunique"),
            presentations=("flagged", "size"),
            flagged_presentations=("flagged", "sum"),
        )
        .reset_index()
        .join(sig, on=["system", "role"])
        .join(flagging, on=["system", "role"])
    )
    out["flagging_listeners"] = out["flagging_listeners"].fillna(0).astype(int)
    out["flagged_presentations"] = out["flagged_presentations"].astype(int)
    out["share"] = out["flagged_presentations"] / out["presentations"]
    out["stimuli_significant"] = out["stimuli_significant"].fillna(0).astype(int)
    out["baseline_rate"] = per_stim["baseline_rate"].iloc[0] if len(per_stim) else math.nan
    out["p"] = presentations_p(out["flagged_presentations"], out["presentations"], out["baseline_rate"])
    return out[SYSTEM_FLAG_COLUMNS]


def _coverage(flags: pd.DataFrame, listeners: list, n_bins: int, resolution_s: float) -> np.ndarray:
    """(listeners, bins) boolean: does the union of a listener's flags cover each time step."""
    index = {l: k for k, l in enumerate(listeners)}
    return _coverage_of(
        flags["listener"].map(index).to_numpy(int),
        flags["start_s"].to_numpy(float),
        flags["end_s"].to_numpy(float),
        len(listeners),
        n_bins,
        resolution_s,
    )


def _coverage_of(
    rows: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    n_listeners: int,
    n_bins: int,
    resolution_s: float,
) -> np.ndarray:
    """:func:`_coverage` on arrays: the listener row, start and end of each flag."""
    diff = np.zeros((n_listeners, n_bins + 1), dtype=np.int32)
    if len(rows):
        first = np.floor(start_s / resolution_s + 1e-9).astype(int)
        last = np.ceil(end_s / resolution_s - 1e-9).astype(int)
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
    return f, listeners, _duration(heard, f)


def _duration(heard: pd.DataFrame, f: pd.DataFrame) -> float:
    """A stimulus's duration from its presentations, else the end of its last timed flag."""
    return _duration_of(
        pd.to_numeric(heard["duration_s"], errors="coerce").to_numpy(float), f["end_s"].to_numpy(float)
    )


def _duration_of(durations: np.ndarray, flag_ends: np.ndarray) -> float:
    """:func:`_duration` on arrays (NaN durations are skipped, as pandas' max does)."""
    duration = float(np.fmax.reduce(durations)) if len(durations) else math.nan
    if not math.isfinite(duration) or duration <= 0:
        duration = float(np.fmax.reduce(flag_ends)) if len(flag_ends) else 0.0
    return duration


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
    columns = [
        "stimulus",
        "item",
        "system",
        "role",
        "start_s",
        "end_s",
        "peak_share",
        "n_listeners",
        "heard",
        "listeners",
        "categories",
    ]
    common = sorted(set(flags["stimulus"].unique()) & set(presented["stimulus"].unique()), key=str)
    # Each stimulus's rows are found once and the loop works on arrays: filtering both frames per stimulus
    # (twice, for the density) and pandas calls per region were the cost on a page with many flagged stimuli.
    wanted = presented.loc[presented["stimulus"].isin(common)]
    info = (
        wanted.groupby("stimulus")
        .agg(item=("item", "first"), system=("system", "first"), role=("role", "first"))
        .to_dict("index")
    )
    heard_rows = wanted.groupby("stimulus").indices
    heard_listeners = wanted["listener"].to_numpy(object)
    heard_durations = pd.to_numeric(wanted["duration_s"], errors="coerce").to_numpy(float)
    numeric = _numeric_flags(flags.loc[flags["stimulus"].isin(common)])
    numeric = numeric.loc[numeric["start_s"].notna() & numeric["end_s"].notna()]
    flag_rows = numeric.groupby("stimulus").indices
    who_all, cat_all = numeric["listener"].to_numpy(object), numeric["category"].to_numpy(object)
    start_all, end_all = numeric["start_s"].to_numpy(float), numeric["end_s"].to_numpy(float)
    max_gap_bins = int(round(merge_gap_s / resolution_s))
    rows = []
    for stimulus in common:
        listeners = sorted(set(heard_listeners[heard_rows[stimulus]]), key=str)
        index = {listener: k for k, listener in enumerate(listeners)}
        mine = flag_rows.get(stimulus, np.zeros(0, dtype=int))
        mine = mine[[who in index for who in who_all[mine]]]
        if len(mine) == 0:
            continue
        who, cat, start_s, end_s = who_all[mine], cat_all[mine], start_all[mine], end_all[mine]
        duration = _duration_of(heard_durations[heard_rows[stimulus]], end_s)
        n_bins = max(1, int(math.ceil(duration / resolution_s - 1e-9)))
        covered = _coverage_of(
            np.array([index[w] for w in who]), start_s, end_s, len(listeners), n_bins, resolution_s
        )
        shares = covered.sum(axis=0) / len(listeners)
        flag_end = np.maximum(end_s, start_s + resolution_s)
        for b0, b1 in _runs(shares >= min_share - 1e-12, max_gap_bins=max_gap_bins):
            start, end = b0 * resolution_s, b1 * resolution_s
            inside = (start_s < end) & (flag_end > start)
            names = sorted(set(who[inside]), key=str)
            if len(names) < min_listeners:
                continue
            named = Counter(c for _, c in set(zip(who[inside], cat[inside])))
            rows.append(
                dict(
                    stimulus=stimulus,
                    **info[stimulus],
                    start_s=float(start),
                    end_s=float(end),
                    peak_share=float(shares[b0:b1].max()),
                    n_listeners=len(names),
                    heard=len(listeners),
                    listeners=names,
                    categories={str(k): int(v) for k, v in sorted(named.items())},
                )
            )
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["method"] = (
        f"density of flagging listeners per {resolution_s:g} s step; regions at or above "
        f"{min_share:g} of listeners, merged across gaps up to {merge_gap_s:g} s, "
        f"at least {min_listeners} listeners"
    )
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
