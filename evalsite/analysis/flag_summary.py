"""The flag section of a listening test's results: per-system and per-stimulus flag shares against the
false-flag rate, flagged regions and per-stimulus flag timelines (what the results page plots)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from evalsite.analysis import flags
from evalsite.analysis.plain import records
from metrics.jsonable import jsonable

ASSUMED_FALSE_FLAG_RATE = 0.05
"""False-flag rate assumed when a test has no hidden reference to measure it on (SMOS, MOS, CMOS, AB)."""
REGION_MIN_SHARE = 0.3
REGION_MIN_LISTENERS = 2
TIMELINE_RESOLUTION_S = 0.05
MAX_TIMELINES = 24


def flag_summary(
    kept_flags: pd.DataFrame,
    kept_presented: pd.DataFrame,
    pres: pd.DataFrame | None,
    rename: Callable,
    *,
    alpha: float,
) -> dict:
    """Per-stimulus and per-system flag shares against the false-flag rate, regions and per-stimulus timelines.

    ``pres``: :func:`flags.presentation_flags` of the two frames (None when nothing was presented), built once
    for this and the flag agreement.
    """
    out: dict = {
        "flags": int(len(kept_flags)),
        "presentations": int(len(kept_presented)),
        "baseline": None,
        "systems": [],
        "stimuli": [],
        "regions": [],
        "timelines": [],
        "method": None,
    }
    if kept_presented.empty or pres is None:
        return out
    has_reference = bool((kept_presented["role"] == flags.HIDDEN_REFERENCE).any())
    baseline = None if has_reference else ASSUMED_FALSE_FLAG_RATE
    per_stimulus = flags.stimulus_flag_rates(pres, alpha=alpha, baseline_rate=baseline)
    source = per_stimulus["baseline_source"].iloc[0] if len(per_stimulus) else None
    out["baseline"] = {
        "rate": float(per_stimulus["baseline_rate"].iloc[0]) if len(per_stimulus) else None,
        "source": source
        if has_reference
        else f"assumed {ASSUMED_FALSE_FLAG_RATE:g}: this test has no hidden reference to measure it on",
        "measured": has_reference,
    }
    out["method"] = per_stimulus.attrs.get("method")
    out["systems"] = records(system_flag_rates(per_stimulus, pres))
    flagged = per_stimulus.loc[per_stimulus["flagged"] > 0].sort_values(["share", "flagged"], ascending=False)
    out["stimuli"] = records(flagged)
    out["stimuli_total"] = int(len(per_stimulus))
    timed = kept_flags.loc[kept_flags["start_s"].notna() & kept_flags["end_s"].notna()]
    if timed.empty:
        return out
    # flag_regions works stimulus by stimulus (a few ms each). A region needs at least REGION_MIN_LISTENERS
    # listeners and REGION_MIN_SHARE of those who heard the stimulus flagging the same moment, so a stimulus
    # with fewer distinct flagging listeners than that cannot have one: only the others are passed (exact).
    flaggers = timed.groupby("stimulus")["listener"].nunique()
    heard_by = per_stimulus.set_index("stimulus")["heard"]
    need = np.maximum(
        REGION_MIN_LISTENERS, np.ceil(REGION_MIN_SHARE * heard_by.reindex(flaggers.index) - 1e-9)
    )
    candidates = set(flaggers.index[flaggers.to_numpy() >= need.to_numpy()])
    regions = flags.flag_regions(
        timed.loc[timed["stimulus"].isin(candidates)],
        kept_presented.loc[kept_presented["stimulus"].isin(candidates)],
        min_share=REGION_MIN_SHARE,
        min_listeners=REGION_MIN_LISTENERS,
    )
    out["regions_method"] = regions.attrs.get("method")
    out["regions"] = records(regions.sort_values(["peak_share", "n_listeners"], ascending=False), rename)
    peak = regions.groupby("stimulus")["peak_share"].max() if len(regions) else pd.Series(dtype=float)
    chosen = (
        flagged.assign(peak=flagged["stimulus"].map(peak).fillna(0.0))
        .loc[lambda f: f["stimulus"].isin(set(timed["stimulus"]))]
        .sort_values(["peak", "share", "flagged"], ascending=False)
        .head(MAX_TIMELINES)
    )
    wanted = set(chosen["stimulus"])
    durations = (
        kept_presented.loc[kept_presented["stimulus"].isin(wanted)].groupby("stimulus")["duration_s"].max()
    )
    spans = timed.loc[timed["stimulus"].isin(wanted)]
    span_rows = spans.groupby("stimulus").indices
    span_listeners = spans["listener"].to_numpy(object)
    span_start, span_end = spans["start_s"].to_numpy(float), spans["end_s"].to_numpy(float)
    own_regions: dict = {}
    for r in regions.to_dict("records"):
        own_regions.setdefault(r["stimulus"], []).append(
            {k: r[k] for k in ("start_s", "end_s", "peak_share", "n_listeners", "heard", "categories")}
        )
    for row in chosen.to_dict("records"):
        stimulus = row["stimulus"]
        mine = span_rows[stimulus]
        duration = float(durations.get(stimulus, np.nan))
        if not math.isfinite(duration) or duration <= 0:
            duration = float(span_end[mine].max())
        times, shares = _density(
            pd.factorize(span_listeners[mine])[0],
            span_start[mine],
            span_end[mine],
            int(row["heard"]),
            duration,
            TIMELINE_RESOLUTION_S,
        )
        out["timelines"].append(
            jsonable(
                {
                    "stimulus": stimulus,
                    "item": row["item"],
                    "system": row["system"],
                    "role": row["role"],
                    "heard": row["heard"],
                    "flagged": row["flagged"],
                    "share": row["share"],
                    "p": row["p"],
                    "significant": row["significant"],
                    "duration_s": duration,
                    "resolution_s": TIMELINE_RESOLUTION_S,
                    "times": np.round(times, 4),
                    "density": np.round(shares, 4),
                    "regions": own_regions.get(stimulus, []),
                }
            )
        )
    out["timelines_total"] = int(timed["stimulus"].nunique())
    return out


def flag_density_of(
    spans: pd.DataFrame, heard: int, duration_s: float, resolution_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`evalsite.analysis.flags.flag_density` of one stimulus from its flags alone, in plain NumPy.

    ``spans``: the stimulus's flags (``listener``, ``start_s``, ``end_s``) from listeners who heard it; ``heard``:
    how many listeners heard it. Same bins and the same rule (a listener whose flags cover a step counts once; a
    point flag covers one step), without flag_density's per-call frame filtering, which cost ~9 ms a stimulus.
    """
    return _density(
        pd.factorize(spans["listener"])[0],
        spans["start_s"].to_numpy(float),
        spans["end_s"].to_numpy(float),
        heard,
        duration_s,
        resolution_s,
    )


def _density(
    rows: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    heard: int,
    duration_s: float,
    resolution_s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`flag_density_of` on arrays: each flag's listener (0..n-1), start and end."""
    n_bins = max(1, int(math.ceil(duration_s / resolution_s - 1e-9)))
    first = np.floor(start_s / resolution_s + 1e-9).astype(int)
    last = np.ceil(end_s / resolution_s - 1e-9).astype(int)
    last = np.maximum(last, first + 1)
    first, last = np.clip(first, 0, n_bins), np.clip(last, 0, n_bins)
    diff = np.zeros((max(1, rows.max(initial=-1) + 1), n_bins + 1), dtype=np.int32)
    np.add.at(diff, (rows, first), 1)
    np.add.at(diff, (rows, last), -1)
    covered = np.cumsum(diff, axis=1)[:, :n_bins] > 0
    return (np.arange(n_bins) + 0.5) * resolution_s, covered.sum(axis=0) / max(1, heard)


def system_flag_rates(per_stimulus: pd.DataFrame, pres: pd.DataFrame) -> pd.DataFrame:
    """:func:`flags.system_flag_rates` from flag_rates' rows and the presentation table they were built from.

    A presentation is one (listener, stimulus) pair, so a system's presentations are the sum of its stimuli's
    ``heard`` and its flagged presentations the sum of their ``flagged`` (the tests check the two agree). The
    alerts read ``p`` and ``flagging_listeners`` from these rows, so an alert says what the page says.
    """
    if per_stimulus.empty:
        return pd.DataFrame(columns=flags.SYSTEM_FLAG_COLUMNS)
    out = (
        per_stimulus.groupby(["system", "role"], sort=True)
        .agg(
            stimuli=("stimulus", "nunique"),
            presentations=("heard", "sum"),
            flagged_presentations=("flagged", "sum"),
            stimuli_significant=("significant", "sum"),
        )
        .join(_listeners_per_system(pres))
        .join(_listeners_per_system(pres.loc[pres["flagged"].to_numpy(bool)]).rename("flagging_listeners"))
        .reset_index()
    )
    out["flagging_listeners"] = out["flagging_listeners"].fillna(0).astype(int)
    out["share"] = out["flagged_presentations"] / out["presentations"]
    out["baseline_rate"] = per_stimulus["baseline_rate"].iloc[0]
    out["p"] = flags.presentations_p(out["flagged_presentations"], out["presentations"], out["baseline_rate"])
    return out[flags.SYSTEM_FLAG_COLUMNS].sort_values("share", ascending=False, kind="stable")


def _listeners_per_system(presented: pd.DataFrame) -> pd.Series:
    """Distinct listeners per (system, role) of a presented frame, from integer codes (a pandas nunique per group
    over every presentation cost more than the rest of the flag statistics)."""
    if presented.empty:
        empty = pd.MultiIndex.from_arrays([[], []], names=["system", "role"])
        return pd.Series([], index=empty, name="listeners", dtype=np.int64)
    systems, system_ids = pd.factorize(presented["system"], sort=True)
    roles, role_ids = pd.factorize(presented["role"], sort=True)
    listeners, listener_ids = pd.factorize(presented["listener"])
    width = max(len(listener_ids), 1)
    groups = systems.astype(np.int64) * len(role_ids) + roles
    present, counts = np.unique(np.unique(groups * width + listeners) // width, return_counts=True)
    index = pd.MultiIndex.from_arrays(
        [system_ids[present // len(role_ids)], role_ids[present % len(role_ids)]], names=["system", "role"]
    )
    return pd.Series(counts, index=index, name="listeners")
