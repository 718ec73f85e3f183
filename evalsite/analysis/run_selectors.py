"""Reads behind the run analysis page and the checkpoint comparison page, as plain lists and dicts.

Metric values are grouped so that only comparable ones share a series or a column: same metric name,
same ``spec_key`` (everything that changes the value: version, embedder, weights, preprocessing,
reference set) and same generation parameters (``params_hash``). Figures are built from these values by
:mod:`evalsite.analysis.figures_runs`.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from django.core.cache import cache
from django.db.models import Count, Exists, OuterRef, QuerySet, Sum
from django.db.models.functions import Coalesce

from evalsite.analysis.flag_summary import REGION_MIN_LISTENERS, REGION_MIN_SHARE
from evalsite.analysis.flags import flag_regions
from evalsite.analysis.frames import stimuli_flag_frames
from evalsite.analysis.leaders import leaders_mark, screening_statement
from evalsite.analysis.snapshots import listening_test_results
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.listening.access import listening_tests_visible
from evalsite.listening.models import Condition, ListeningTest, Stimulus
from evalsite.runs.access import checkpoints_visible
from evalsite.runs.models import Generation, Run
from evalsite.scoring.detection import run_detector_names
from evalsite.scoring.models import DetectorEvent, DetectorPass, MetricResult
from metrics.detectors import region_agreement

AGREEMENT_TOLERANCE_S = 0.1
AGREEMENT_EXAMPLES = 30
REGIONS_CACHE_S = 24 * 3600


def _finite(value: Any) -> float | None:
    """A float for JSON and templates, or None for missing / NaN / infinite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _best_index(values: Sequence[float], keys: Sequence[int], higher_is_better: bool | None) -> int | None:
    """Index of the best value; ties go to the larger key, the rule of ``scoring.selectors.run_metric_table``."""
    if higher_is_better is None or not values:
        return None
    pairs = [(v, k, i) for i, (v, k) in enumerate(zip(values, keys))]
    return (max if higher_is_better else min)(pairs, key=lambda p: (p[0], p[1]))[2]


def _generation_settings(
    params_hashes: Iterable[str], outputs: QuerySet[Generation], known: dict[str, dict]
) -> dict[str, dict]:
    """The generation params behind each hash, read from one of ``outputs`` made with them (``{}`` if none is
    left).

    ``known`` carries what earlier metrics of the same page looked up: one query per hash, not per metric.
    """
    for params_hash in dict.fromkeys(params_hashes):
        if params_hash not in known:
            params = outputs.filter(params_hash=params_hash).values_list("params", flat=True).first()
            known[params_hash] = params if isinstance(params, dict) else {}
    return {h: known[h] for h in dict.fromkeys(params_hashes)}


def _settings_differences(settings: dict[str, dict]) -> dict[str, str]:
    """Per params hash, the settings in which it differs from the others (``"top_k=200, top_p=0.95"``).

    Only keys that change the audio count: batch size, TF32 and device are not in the hash either.
    """
    known = [p for p in settings.values() if p]
    keys = sorted({k for p in known for k in p} - {"batch_size", "tf32", "device"})
    differing = [k for k in keys if len({repr(p.get(k)) for p in known}) > 1]
    return {
        h: ", ".join(f"{k}={p.get(k)}" for k in differing) if p and differing else ""
        for h, p in settings.items()
    }


def _series_labels(
    keys: list[tuple[str, str]], settings: dict[str, str] | None = None
) -> dict[tuple[str, str], str]:
    """'spec i of k' / 'params j of m' only where a metric has more than one of them; a params group is
    named by the settings it differs in (from ``settings``) when they are known, else by its hash."""
    specs = list(dict.fromkeys(k[0] for k in keys))
    params = list(dict.fromkeys(k[1] for k in keys))
    settings = settings or {}
    labels = {}
    for spec, param in keys:
        parts = []
        if len(specs) > 1:
            parts.append(f"spec {specs.index(spec) + 1} of {len(specs)} ({spec[:8]})")
        if len(params) > 1:
            parts.append(
                f"params {params.index(param) + 1} of {len(params)} ({settings.get(param) or param[:8]})"
            )
        labels[(spec, param)] = ", ".join(parts) or "value"
    return labels


def _params_note(settings: dict[str, str]) -> str:
    """Why values of one metric stand apart: the generation settings they were made with differ."""
    if len(settings) < 2:
        return ""
    named = [text for text in settings.values() if text]
    if not named:
        return "Values generated with different params are shown apart, not side by side."
    keys = sorted({part.split("=", 1)[0] for text in named for part in text.split(", ")})
    return (
        f"Values generated with different settings ({', '.join(keys)}) are shown apart, not side by side: "
        + "; ".join(named)
        + "."
    )


def run_metric_series(*, run: Run) -> list[dict[str, Any]]:
    """Every metric of the run over checkpoint step, one series per comparable group of values.

    Returns one dict per metric name (sorted): ``name``, ``higher_is_better``, ``series`` (each with
    ``spec_key``, ``params_hash``, ``label``, parallel lists ``steps``, ``checkpoints``, ``values``,
    ``ci_low``, ``ci_high``, ``n``, and ``best`` — ``{"step", "checkpoint", "value"}`` or None) and
    ``failed`` (``[{"step", "error"}]``, failures have no spec) and ``params_note`` (which generation
    settings differ between series, "" when all values share one params hash).
    """
    rows = (
        MetricResult.objects.filter(checkpoint__run=run)
        .order_by("name", "checkpoint__step", "spec_key", "params_hash")
        .values_list(
            "name",
            "checkpoint_id",
            "checkpoint__step",
            "status",
            "spec_key",
            "params_hash",
            "value",
            "ci_low",
            "ci_high",
            "n",
            "higher_is_better",
            "error",
        )
    )
    by_name: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        by_name[row[0]].append(row)
    looked_up: dict[str, dict] = {}
    out = []
    for name, results in by_name.items():
        hib = next((r[10] for r in results if r[10] is not None), None)
        groups: dict[tuple[str, str], dict[str, list]] = {}
        failed = []
        for _, ckpt, step, status, spec, params, value, lo, hi, n, _, error in results:
            if status != MetricResult.Status.DONE or _finite(value) is None:
                failed.append({"step": step, "error": error or "no value"})
                continue
            g = groups.setdefault(
                (spec, params), {k: [] for k in ("steps", "checkpoints", "values", "ci_low", "ci_high", "n")}
            )
            g["steps"].append(step)
            g["checkpoints"].append(ckpt)
            g["values"].append(float(value))
            g["ci_low"].append(_finite(lo))
            g["ci_high"].append(_finite(hi))
            g["n"].append(n)
        hashes = list(dict.fromkeys(params for _, params in groups))
        settings = (
            _settings_differences(
                _generation_settings(hashes, Generation.objects.filter(checkpoint__run=run), looked_up)
            )
            if len(hashes) > 1
            else {}
        )
        labels = _series_labels(list(groups), settings)
        series = []
        for (spec, params), g in groups.items():
            best = _best_index(g["values"], g["checkpoints"], hib)
            # The chart's star says "best" by the rule of every other surface (its interval separates);
            # else the leading value is marked "tied" or "top" (no interval), or is the series' only value.
            cells = [
                {"value": v, "ci_low": lo, "ci_high": hi}
                for v, lo, hi in zip(g["values"], g["ci_low"], g["ci_high"])
            ]
            leaders_mark(cells, higher_is_better=hib)
            series.append(
                {
                    "spec_key": spec,
                    "params_hash": params,
                    "label": labels[(spec, params)],
                    **g,
                    "best": None
                    if best is None
                    else {
                        "step": g["steps"][best],
                        "checkpoint": g["checkpoints"][best],
                        "value": g["values"][best],
                        "mark": cells[best].get("mark") or "only",
                    },
                }
            )
        out.append(
            {
                "name": name,
                "higher_is_better": hib,
                "series": series,
                "failed": failed,
                "params_note": _params_note(settings),
            }
        )
    return out


def run_metric_grid(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The run page's metric table from :func:`run_metric_series`: one column per series, one row per step.

    Returns ``{"columns": [{"name", "label", "spec_key", "params_hash", "higher_is_better"}], "rows": [{"step",
    "cells": [{"text", "best", "mark", "error"}]}]}``; ``mark`` is ``leaders_mark``'s among the column's values
    (``best`` when it is "best"); ``text`` is the value to 4 decimals ("-" when missing), a failure
    (which has no spec) shows in the metric's first column. Built from plain values, so 200 checkpoints x 12
    metrics cost milliseconds rather than thousands of model instances.
    """
    columns, at = [], {}
    for metric in metrics:
        series = metric["series"] or [
            {"spec_key": "", "params_hash": "", "label": "value", "steps": [], "values": [], "best": None}
        ]
        for s in series:
            label = metric["name"] if len(series) == 1 else f"{metric['name']} ({s['label']})"
            columns.append(
                {
                    "name": metric["name"],
                    "label": label,
                    "spec_key": s["spec_key"],
                    "params_hash": s["params_hash"],
                    "higher_is_better": metric["higher_is_better"],
                }
            )
            # "best" only where the interval separates, as on every other surface (``leaders_mark``).
            marked = [
                {"value": v, "ci_low": lo, "ci_high": hi}
                for v, lo, hi in zip(s["values"], s.get("ci_low", []), s.get("ci_high", []))
            ]
            leaders_mark(marked, higher_is_better=metric["higher_is_better"])
            for step, value, cell in zip(s["steps"], s["values"], marked):
                at[(step, len(columns) - 1)] = {
                    "text": f"{value:.4f}",
                    "best": cell.get("mark") == "best",
                    "mark": cell.get("mark"),
                    "error": "",
                }
        first = len(columns) - len(series)
        for failure in metric["failed"]:
            at.setdefault(
                (failure["step"], first),
                {"text": "failed", "best": False, "mark": None, "error": failure["error"]},
            )
    empty = {"text": "-", "best": False, "mark": None, "error": ""}
    steps = sorted({step for step, _ in at})
    return {
        "columns": columns,
        "rows": [
            {"step": step, "cells": [at.get((step, i), empty) for i in range(len(columns))]} for step in steps
        ],
    }


def run_metric_keys(*, run: Run) -> dict[str, Any]:
    """How the API names each metric value of the run so that values generated with different settings (or
    computed with different specs) never share a name: the run page's column label per (name, spec_key,
    params_hash) — the bare name where the run has one group of that metric, else ``"name (params 1 of 2
    (cfg_scale=1.0))"`` — and the generation params behind each params hash, to join a value to its settings.

    Returns ``{"keys": {(name, spec_key, params_hash): key}, "settings": {params_hash: params}}``.
    """
    metrics = run_metric_series(run=run)
    keys = {
        (col["name"], col["spec_key"], col["params_hash"]): col["label"]
        for col in run_metric_grid(metrics)["columns"]
    }
    hashes = MetricResult.objects.filter(checkpoint__run=run).values_list("params_hash", flat=True).distinct()
    settings = _generation_settings(hashes, Generation.objects.filter(checkpoint__run=run), {})
    return {"keys": keys, "settings": settings}


def _detector_names(run: Run, seen: Iterable[str]) -> list[str]:
    """The detectors the run is configured to run, then any other name found in its events."""

    try:
        configured = run_detector_names(run)
    except ApplicationError:
        configured = []
    return list(dict.fromkeys([*configured, *sorted(set(seen))]))


def run_detector_rates(*, run: Run) -> dict[str, Any]:
    """Detector events per minute of analysed audio, per detector and checkpoint.

    Returns ``steps``, ``checkpoints``, ``clips``, ``minutes`` (parallel lists over checkpoints that went
    through the detectors, by step) and ``detectors``: ``{name: {"events": [...], "per_minute": [...]}}``.
    """
    passes = list(
        DetectorPass.objects.filter(checkpoint__run=run)
        .values("checkpoint_id", "checkpoint__step")
        .annotate(seconds=Sum("duration_s"), clips=Count("id"))
        .order_by("checkpoint__step")
    )
    counts: dict[tuple[int, str], int] = {
        (ckpt, det): n
        for ckpt, det, n in DetectorEvent.objects.filter(checkpoint__run=run)
        .values("checkpoint_id", "detector")
        .annotate(n=Count("id"))
        .values_list("checkpoint_id", "detector", "n")
    }
    names = _detector_names(run, (det for _, det in counts)) if passes or counts else []
    minutes = [(p["seconds"] or 0.0) / 60 for p in passes]
    detectors = {}
    for name in names:
        events = [counts.get((p["checkpoint_id"], name), 0) for p in passes]
        detectors[name] = {
            "events": events,
            "per_minute": [e / m if m > 0 else None for e, m in zip(events, minutes)],
        }
    return {
        "steps": [p["checkpoint__step"] for p in passes],
        "checkpoints": [p["checkpoint_id"] for p in passes],
        "clips": [p["clips"] for p in passes],
        "minutes": minutes,
        "detectors": detectors,
    }


def run_failed_jobs(*, run: Run, limit: int = 50) -> QuerySet[Job]:
    """The run's failed jobs, newest first, with the full reason and whether a later job of the same
    kind for the same checkpoint replaced it (``superseded``)."""
    later = Job.objects.filter(
        run=run,
        kind=OuterRef("kind"),
        checkpoint=OuterRef("checkpoint"),
        created_at__gt=OuterRef("created_at"),
    )
    return (
        Job.objects.filter(run=run, status=Job.Status.FAILED)
        .select_related("checkpoint")
        .annotate(superseded=Exists(later))
        .order_by("-created_at")[:limit]
    )


def _listener_regions(
    flags: pd.DataFrame, presented: pd.DataFrame, *, min_share: float, min_listeners: int
) -> dict[int, list[tuple[float, float]]]:
    """``flag_regions`` as {stimulus: [(start_s, end_s)]}, cached under a hash of its input.

    flag_regions costs several ms per flagged stimulus (pandas work per stimulus); the frames are cheap to read
    and hash, so a repeat view of an unchanged run skips it, and any new flag or listener changes the key.
    """

    if flags.empty:
        return {}
    digest = hashlib.sha256(f"{min_share!r}:{min_listeners!r}".encode())
    for frame in (flags, presented):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    key = f"analysis:listener-regions:{digest.hexdigest()}"
    regions = cache.get(key)
    if regions is None:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # flags of listeners not shown the stimulus: dropped, as on the test page
            found = flag_regions(flags, presented, min_share=min_share, min_listeners=min_listeners)
        regions = defaultdict(list)
        for r in found.itertuples(index=False):
            regions[int(r.stimulus)].append((float(r.start_s), float(r.end_s)))
        regions = dict(regions)
        cache.set(key, regions, REGIONS_CACHE_S)
    return regions


def _agreement_row(detector: str, counts: dict[str, int]) -> dict[str, Any]:
    """Pooled precision and recall from summed match counts (None where nothing to divide by)."""
    det, flg = counts["n_detected"], counts["n_flagged"]
    return {
        "detector": detector,
        **counts,
        "precision": counts["n_detected_matched"] / det if det else None,
        "recall": counts["n_flagged_matched"] / flg if flg else None,
    }


def run_detector_agreement(
    *,
    run: Run,
    tolerance_s: float = AGREEMENT_TOLERANCE_S,
    min_share: float = REGION_MIN_SHARE,
    min_listeners: int = REGION_MIN_LISTENERS,
) -> dict[str, Any]:
    """Each detector's events against the regions listeners flagged in the same clips.

    A listening stimulus is matched to the run's generations through its audio asset; a clip counts when
    listeners heard it on a main trial and the detectors analysed its generation. Listener regions are
    ``analysis.flags.flag_regions`` (at least ``min_share`` of the clip's listeners and ``min_listeners``
    listeners). Per clip, ``metrics.detectors.region_agreement`` matches events and regions (overlap after
    widening regions by ``tolerance_s``); counts are summed over clips, so precision is matched events /
    events and recall matched regions / regions over all clips. A clip heard in two tests counts twice.

    Returns ``flags`` (raw flags on these clips), ``clips`` (heard and analysed), ``clips_not_analysed``,
    ``regions``, ``tests``, ``rows`` (per detector, then ``"any detector"``), ``examples`` (clips with
    regions or events, most regions first) and ``rule`` (the method in words).
    """

    run_assets = Generation.objects.filter(checkpoint__run=run, asset__isnull=False).values("asset_id")
    # A loudness-aligned stimulus is a scaled copy (same timing): its generation is that of its source asset.
    stimuli = list(
        Stimulus.objects.annotate(generated=Coalesce("source_asset_id", "asset_id"))
        .filter(generated__in=run_assets, trial__is_training=False, trial__control="")
        .values_list("id", "generated", "trial__test_id", "trial__test__name")
    )
    rule = (
        f"listener regions: at least {min_share:.0%} of a clip's listeners and at least {min_listeners} "
        f"listeners flagged (analysis.flags.flag_regions); an event matches a region when they overlap after "
        f"widening the region by {tolerance_s:g} s on each side; counts pooled over clips"
    )
    empty = {
        "flags": 0,
        "clips": 0,
        "clips_not_analysed": 0,
        "regions": 0,
        "tests": [],
        "rows": [],
        "examples": [],
        "rule": rule,
        "tolerance_s": tolerance_s,
    }
    if not stimuli:
        return empty
    flags, presented = stimuli_flag_frames([s[0] for s in stimuli])
    heard = set(presented["stimulus"])
    stimuli = [s for s in stimuli if s[0] in heard]
    if not stimuli:
        return empty
    gens = list(
        Generation.objects.filter(checkpoint__run=run, asset_id__in={s[1] for s in stimuli}).values_list(
            "id", "asset_id", "checkpoint__step", "item__key", "detector_pass__id"
        )
    )
    gens_of: dict[int, list[tuple]] = defaultdict(list)
    for g in gens:
        gens_of[g[1]].append(g)
    events: dict[int, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    seen = set()
    for gen_id, det, start, end in DetectorEvent.objects.filter(
        generation_id__in=[g[0] for g in gens]
    ).values_list("generation_id", "detector", "start_s", "end_s"):
        events[gen_id][det].append((start, end))
        seen.add(det)
    names = _detector_names(run, seen)
    regions = _listener_regions(flags, presented, min_share=min_share, min_listeners=min_listeners)
    totals = {
        name: dict.fromkeys(
            ("clips", "n_detected", "n_detected_matched", "n_flagged", "n_flagged_matched"), 0
        )
        for name in [*names, "any detector"]
    }
    clips = not_analysed = 0
    tests: dict[int, str] = {}
    examples = []
    for stimulus_id, asset_id, test_id, test_name in stimuli:
        for gen_id, _, step, item_key, pass_id in gens_of[asset_id]:
            if pass_id is None:
                not_analysed += 1
                continue
            clips += 1
            tests[test_id] = test_name
            flagged = regions.get(stimulus_id, [])
            by_det = events.get(gen_id, {})
            every = [e for name in names for e in by_det.get(name, [])]
            for name, detected in [*((n, by_det.get(n, [])) for n in names), ("any detector", every)]:
                found = region_agreement(detected, flagged, tolerance_s=tolerance_s)
                t = totals[name]
                t["clips"] += 1
                for key in ("n_detected", "n_detected_matched", "n_flagged", "n_flagged_matched"):
                    t[key] += found[key]
            if flagged or every:
                examples.append(
                    {
                        "test": test_name,
                        "test_id": test_id,
                        "item": item_key,
                        "step": step,
                        "regions": flagged,
                        "events": {n: sorted(by_det[n]) for n in names if by_det.get(n)},
                    }
                )
    examples.sort(key=lambda e: (-len(e["regions"]), e["step"], e["item"]))
    return {
        "flags": int(len(flags)),
        "clips": clips,
        "clips_not_analysed": not_analysed,
        "regions": totals["any detector"]["n_flagged"],
        "tests": sorted(tests.values()),
        "rows": [_agreement_row(name, t) for name, t in totals.items()],
        "examples": examples[:AGREEMENT_EXAMPLES],
        "rule": rule,
        "tolerance_s": tolerance_s,
    }


def checkpoint_choices(*, user) -> list[dict[str, Any]]:
    """Every checkpoint ``user`` may see, by run, for the comparison page's picker: ``[{"run", "checkpoints":
    [(id, step, status)]}]``."""
    grouped: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for pk, step, status, run_name in (
        checkpoints_visible(user)
        .order_by("run__name", "step")
        .values_list("id", "step", "status", "run__name")
    ):
        grouped[run_name].append((pk, step, status))
    return [{"run": name, "checkpoints": ckpts} for name, ckpts in grouped.items()]


def _metric_columns(checkpoint_ids: Sequence[int]) -> tuple[list[dict], dict[tuple[int, int], dict]]:
    """Comparable metric columns (name, spec_key, params_hash) and the cell of each (checkpoint, column).

    A failed result has no spec; it shows in the metric's first column, as on the run page.
    """
    rows = list(
        MetricResult.objects.filter(checkpoint_id__in=checkpoint_ids)
        .order_by("name", "checkpoint__run__name", "checkpoint__step", "spec_key", "params_hash")
        .values_list(
            "name",
            "checkpoint_id",
            "status",
            "spec_key",
            "params_hash",
            "value",
            "ci_low",
            "ci_high",
            "n",
            "higher_is_better",
            "error",
            "metric_version",
            "embedder",
        )
    )
    by_name: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        by_name[row[0]].append(row)
    columns: list[dict] = []
    cells: dict[tuple[int, int], dict] = {}
    looked_up: dict[str, dict] = {}
    for name, results in by_name.items():
        hib = next((r[9] for r in results if r[9] is not None), None)
        done = [r for r in results if r[2] == MetricResult.Status.DONE and _finite(r[5]) is not None]
        done_set = set(done)
        keys = list(dict.fromkeys((r[3], r[4]) for r in done)) or [("", "")]
        hashes = list(dict.fromkeys(params for _, params in keys))
        settings = (
            _settings_differences(
                _generation_settings(
                    hashes, Generation.objects.filter(checkpoint_id__in=checkpoint_ids), looked_up
                )
            )
            if len(hashes) > 1
            else {}
        )
        labels = _series_labels(keys, settings)
        note = _params_note(settings)
        first = len(columns)
        for spec, params in keys:
            provenance = next(((r[11], r[12]) for r in done if (r[3], r[4]) == (spec, params)), ("", ""))
            label = name if labels[(spec, params)] == "value" else f"{name} · {labels[(spec, params)]}"
            columns.append(
                {
                    "kind": "metric",
                    "name": name,
                    "spec_key": spec,
                    "params_hash": params,
                    "label": label,
                    "higher_is_better": hib,
                    "title": f"{name}: spec {spec or '–'}, params {params or '–'}, version "
                    f"{provenance[0] or '–'}, embedder {provenance[1] or '–'}"
                    + (f". {note}" if note else ""),
                    "params_note": note,
                }
            )
        index = {key: first + i for i, key in enumerate(keys)}
        for r in results:
            if r in done_set:
                cells[(r[1], index[(r[3], r[4])])] = {
                    "value": float(r[5]),
                    "ci_low": _finite(r[6]),
                    "ci_high": _finite(r[7]),
                    "n": r[8],
                }
            else:
                cells.setdefault((r[1], first), {"failed": r[10] or "no value"})
    return columns, cells


def _human_columns(checkpoint_ids: Sequence[int], user) -> tuple[list[dict], dict[tuple[int, int], dict]]:
    """One column per listening test ``user`` may see that rated any of the checkpoints (per comparison for
    CMOS, per pair for AB), read from the test's analysis results: screened listeners and completed trials only,
    so every number equals the test page's, the report's and the results API's. A test that also rates a
    run the user may not see is left out (``listening_tests_visible``): its labels would name that run."""
    ckpt_of: dict[int, dict[str, int]] = defaultdict(dict)
    for test_id, label, ckpt in Condition.objects.filter(checkpoint_id__in=checkpoint_ids).values_list(
        "test_id", "label", "checkpoint_id"
    ):
        ckpt_of[test_id][label] = ckpt
    columns: list[dict] = []
    cells: dict[tuple[int, int], dict] = {}
    for test in listening_tests_visible(user).filter(pk__in=ckpt_of).order_by("name"):
        ours = ckpt_of[test.pk]
        results = listening_test_results(test)
        base = {
            "kind": "human",
            "test_id": test.pk,
            "test": test.name,
            "test_kind": test.kind,
            "higher_is_better": True,
            "screening": screening_statement(results["counts"]),
        }
        if results["scores"] is None and results["preference"] is None:
            columns.append({**base, "label": f"{test.name} ({test.kind.upper()})", "title": "no votes yet"})
            continue
        if results["preference"] is not None:
            for pair in results["preference"]["kept"]:
                if pair["system_a"] not in ours and pair["system_b"] not in ours:
                    continue
                columns.append(
                    {
                        **base,
                        "label": f"{test.name} (AB: {pair['system_a']} vs {pair['system_b']})",
                        "title": "share of decided answers preferring this system, Wilson 95% interval",
                    }
                )
                rate, lo, hi = (
                    _finite(pair["preference_rate"]),
                    _finite(pair["ci_low"]),
                    _finite(pair["ci_high"]),
                )
                for label, flip in ((pair["system_a"], False), (pair["system_b"], True)):
                    if label in ours:
                        cells[(ours[label], len(columns) - 1)] = {
                            "value": None if rate is None else (1 - rate if flip else rate),
                            "ci_low": None if hi is None or lo is None else (1 - hi if flip else lo),
                            "ci_high": None if hi is None or lo is None else (1 - lo if flip else hi),
                            "n": pair["decided"],
                            "ties": pair["ties"],
                            "listeners": pair["listeners"],
                        }
            continue
        rows = results["scores"]["kept"]
        if not rows:
            columns.append(
                {
                    **base,
                    "label": f"{test.name} ({test.kind.upper()})",
                    "title": "every listener is excluded by the screening",
                }
            )
            continue
        if test.kind == ListeningTest.Kind.CMOS:
            for comparison in sorted({r["comparison"] for r in rows}):
                columns.append(
                    {
                        **base,
                        "label": f"{test.name} (CMOS vs {comparison})",
                        "title": "CMOS relative to the comparison: mean, t and bootstrap 95% CI",
                    }
                )
                if comparison in ours:
                    cells[(ours[comparison], len(columns) - 1)] = {"baseline": True}
                for r in rows:
                    if r["comparison"] == comparison and r["system"] in ours:
                        cells[(ours[r["system"]], len(columns) - 1)] = _score_cell(r)
            continue
        columns.append(
            {
                **base,
                "label": f"{test.name} ({test.kind.upper()})",
                "title": results["scores"]["method"] or "",
            }
        )
        for r in rows:
            if r["system"] in ours:
                cells[(ours[r["system"]], len(columns) - 1)] = _score_cell(r)
    return columns, cells


def _score_cell(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "value": _finite(row["mean"]),
        "ci_low": _finite(row["ci_low"]),
        "ci_high": _finite(row["ci_high"]),
        "boot_low": _finite(row["boot_low"]),
        "boot_high": _finite(row["boot_high"]),
        "n": int(row["n"]),
        "listeners": int(row["listeners"]),
    }


def _marked(columns: list[dict], cells: dict[tuple[int, int], dict], checkpoint_ids: Sequence[int]) -> None:
    """Mark best / tied in each column among the given checkpoints' values (the one rule, ``leaders_mark``)."""
    for index, col in enumerate(columns):
        scored = [
            cells[(c, index)] for c in checkpoint_ids if cells.get((c, index), {}).get("value") is not None
        ]
        leaders_mark(scored, higher_is_better=col["higher_is_better"])


def run_human_scores(*, run: Run, user) -> dict[str, Any]:
    """The run page's human scores: one column per listening test ``user`` may see that rated checkpoints of the
    run (read like the compare page's, from the test's screened results), one row per rated checkpoint.

    Returns ``{"columns", "rows": [{"checkpoint", "cells"}]}`` (cells as in :func:`checkpoint_comparison`, marked
    among this run's checkpoints); both empty when no test rated the run.
    """
    checkpoints = list(run.checkpoints.order_by("step"))
    ids = [c.pk for c in checkpoints]
    columns, cells = _human_columns(ids, user) if ids else ([], {})
    _marked(columns, cells, ids)
    rated = {c for c, _ in cells}
    return {
        "columns": columns,
        "rows": [
            {"checkpoint": c, "cells": [cells.get((c.pk, i)) for i in range(len(columns))]}
            for c in checkpoints
            if c.pk in rated
        ],
    }


def checkpoint_comparison(*, checkpoint_ids: Sequence[int], user) -> dict[str, Any]:
    """Checkpoints (of any runs ``user`` may see) side by side: human scores per listening test, then comparable
    metric columns.

    Returns ``checkpoints`` (found, by run and step), ``missing`` (ids not found), ``columns`` (dicts with
    ``kind`` "human" or "metric", ``label``, ``title``, ``higher_is_better``; a human column also has
    ``screening``) and ``rows`` (``{"checkpoint", "cells"}``, a cell being None, ``{"failed": reason}``,
    ``{"baseline": True}`` or ``{"value", "ci_low", "ci_high", "n", ...}`` with ``mark`` set by
    :func:`~evalsite.analysis.leaders.leaders_mark` on the leaders of two or more values) and ``params_notes`` (one line per metric
    whose values were generated with different settings: they get separate columns, never one, and the
    note names the settings that differ).
    """
    ids = list(dict.fromkeys(int(i) for i in checkpoint_ids))
    # A checkpoint of a run the user may not see is "not found", like one that does not exist.
    checkpoints = list(
        checkpoints_visible(user).filter(pk__in=ids).select_related("run").order_by("run__name", "step")
    )
    found = [c.pk for c in checkpoints]
    # Human scores first: they are what the page is read for, and they stay on screen however many metrics.
    human_cols, human_cells = _human_columns(found, user) if found else ([], {})
    metric_cols, metric_cells = _metric_columns(found) if found else ([], {})
    offset = len(human_cols)
    cells = {**human_cells, **{(c, offset + i): v for (c, i), v in metric_cells.items()}}
    columns = human_cols + metric_cols
    _marked(columns, cells, found)
    rows = [
        {"checkpoint": c, "cells": [cells.get((c.pk, i)) for i in range(len(columns))]} for c in checkpoints
    ]
    return {
        "checkpoints": checkpoints,
        "missing": [i for i in ids if i not in set(found)],
        "columns": columns,
        "rows": rows,
        "params_notes": list(dict.fromkeys(c["params_note"] for c in metric_cols if c["params_note"])),
    }
