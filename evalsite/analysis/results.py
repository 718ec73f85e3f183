"""Everything known about one listening test's answers, as one JSON-ready dict (page, report, exports, API).

:func:`listening_test_results` reads the test's rows (the same frames as :mod:`evalsite.analysis.selectors`
gives: training and gold/trapping answers are not votes), runs the pure statistics (:mod:`~.stats`,
:mod:`~.screening`, :mod:`~.reliability`, :mod:`~.flags`, :mod:`~.correlation`) and returns plain Python values:
undefined numbers (NaN) are ``None``, listeners are opaque ids (:func:`listener_id`).

Results are keyed by the test and a fingerprint of its inputs (:func:`results_fingerprint`: count and latest
``updated_at`` of ratings, flags, participants and the conditions' metric results, plus the participants'
statuses). They are stored twice: as an :class:`~evalsite.analysis.models.AnalysisSnapshot` row, shared by every
web and worker process, and in Django's cache (without a ``CACHES`` setting that is each process's local memory,
so it only saves a process the snapshot's read). A page view, export, report or API call after no new answer reads
one of them and recomputes nothing; any new or changed rating or flag, a listener screened out, or a new metric
changes the fingerprint, so the next call recomputes and stores a new snapshot. The beat task
:func:`evalsite.analysis.tasks.analysis_refresh_task` does that for published tests in the background, so a
researcher usually finds the snapshot already there.

The mixed model is :func:`evalsite.analysis.stats.crossed_mixed_model` rather than statsmodels, whose crossed
formulation took minutes on 50 000 ratings; it gives the same numbers (see the tests) in about 20-50 ms.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from itertools import chain

import numpy as np
import pandas as pd
from django.core.cache import cache
from django.db import connections
from django.db.models import Count, Max, Min, Q, QuerySet
from django.utils import timezone
from django.utils.crypto import salted_hmac

from evalsite.analysis import correlation, flags, reliability, screening, selectors, stats
from evalsite.analysis.models import AnalysisSnapshot
from evalsite.analysis.stats import crossed_mixed_model
from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    Condition,
    ListeningTest,
    Participant,
    Rating,
    Stimulus,
    StimulusHandle,
    Trial,
)

RESULTS_VERSION = 2
"""Part of the cache key and the fingerprint: bump it when the dict's shape or values change, so no process
reads an old one (2: ICC intervals no longer rounded to 2 decimals)."""
CACHE_TIMEOUT_S = 7 * 24 * 3600
DEFAULT_N_BOOT = 2000
BOOT_SEED = 0
ALPHA = 0.05
ASSUMED_FALSE_FLAG_RATE = 0.05
"""False-flag rate assumed when a test has no hidden reference to measure it on (SMOS, MOS, CMOS, AB)."""
REGION_MIN_SHARE = 0.3
REGION_MIN_LISTENERS = 2
TIMELINE_RESOLUTION_S = 0.05
MAX_TIMELINES = 24
MAX_ITEM_POINTS = 5000
FETCH_CHUNK_ROWS = 2000
CORRELATION_METHOD = "{level}-level means; scipy pearsonr, spearmanr, kendalltau (tau-b), two-sided p"
"""What ``correlation.human_metric_correlations`` writes in ``attrs["method"]`` (the tests compare them)."""
HEADPHONE_RULE = "headphone_check"
SCREENED_OUT_RULE = "screened_out"
SOFTWARE = ("numpy", "pandas", "scipy", "statsmodels", "Django")
NO_RATINGS = "No ratings yet."


# ---------------------------------------------------------------------------------------------
# Plain values


def jsonable(value):
    """NaN/inf → None, NumPy scalars and arrays → Python, tuples → lists, timestamps → ISO strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return [x if isinstance(x, (int, bool)) or math.isfinite(x) else None for x in value.tolist()]
    if isinstance(value, (list, tuple, np.ndarray, pd.Index)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _records(frame: pd.DataFrame | None, rename: Callable | None = None) -> list[dict]:
    """DataFrame rows as JSON-ready dicts (listener ids through ``rename`` where a column holds them).

    Column by column (what ``jsonable(frame.to_dict("records"))`` gives, without visiting every cell in Python
    twice): numeric columns become lists at once, other columns go through :func:`jsonable`.
    """
    if frame is None or frame.empty:
        return []
    columns = []
    for name in frame.columns:
        values = frame[name].to_numpy()
        if rename is not None and name == "listener":
            column = [jsonable(rename(v) if v is not None else None) for v in frame[name].tolist()]
        elif rename is not None and name == "listeners":
            column = [
                jsonable([rename(v) for v in vs] if isinstance(vs, (list, tuple)) else vs)
                for vs in frame[name].tolist()
            ]
        elif values.dtype.kind == "f":
            column = [x if math.isfinite(x) else None for x in values.tolist()]
        elif values.dtype.kind in "iub":
            column = values.tolist()
        else:
            column = [jsonable(v) for v in frame[name].tolist()]
        columns.append(column)
    keys = [str(name) for name in frame.columns]
    return [dict(zip(keys, row)) for row in zip(*columns)]


def listener_id(test_id: int, participant_id: int) -> str:
    """Opaque, stable id of a participant: not their token (which opens their session) nor their crowd id."""
    return "L" + salted_hmac("evalsite.analysis.listener", f"{test_id}:{participant_id}").hexdigest()[:10]


def software_versions() -> dict[str, str]:
    """Versions of evalsite and of the statistics stack, for the report's "software" line."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> tuple[tuple[str, str], ...]:
    """Looked up once per process: each ``importlib.metadata`` lookup scans the installed distributions (~8 ms)."""
    import sys

    out = {"evalsite": _version("evalsite"), "python": sys.version.split()[0]}
    out.update({name: _version(name) for name in SOFTWARE})
    return tuple(out.items())


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "evalsite":
            import tomllib
            from pathlib import Path

            pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
            if pyproject.exists():
                return tomllib.loads(pyproject.read_text())["project"]["version"]
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Snapshots and cache


def results_fingerprint(test: ListeningTest) -> str:
    """A cheap hash of everything the results depend on (five aggregate queries, no row is read)."""
    ratings = Rating.objects.filter(participant__test=test).aggregate(n=Count("id"), last=Max("updated_at"))
    flag_rows = ArtifactFlag.objects.filter(participant__test=test).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    people = Participant.objects.filter(test=test).aggregate(
        n=Count("id"),
        last=Max("updated_at"),
        screened=Count("id", filter=Q(status=Participant.Status.SCREENED_OUT)),
        completed=Count("id", filter=Q(status=Participant.Status.COMPLETED)),
        headphone_failed=Count("id", filter=Q(headphone_passed=False)),
    )
    from evalsite.scoring.models import MetricResult

    checkpoints = Condition.objects.filter(test=test, checkpoint__isnull=False).values("checkpoint_id")
    metric_rows = MetricResult.objects.filter(checkpoint_id__in=checkpoints).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    test_row = (
        ListeningTest.objects.filter(pk=test.pk).values_list("created_at", "updated_at", "status").first()
    )
    parts = (
        RESULTS_VERSION,
        test.pk,
        test_row,
        sorted(ratings.items()),
        sorted(flag_rows.items()),
        sorted(people.items()),
        sorted(metric_rows.items()),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def results_cache_key(test: ListeningTest, fingerprint: str, n_boot: int) -> str:
    return f"analysis:test-results:v{RESULTS_VERSION}:{test.pk}:{n_boot}:{fingerprint}"


def listening_test_results(test: ListeningTest, *, n_boot: int = DEFAULT_N_BOOT) -> dict:
    """The test's results (see the module docstring): from this process's cache, else from the stored snapshot
    for the current inputs, else computed now and stored for every other process.

    The returned dict has ``source`` (``"cache"``, ``"snapshot"`` or ``"computed"``), ``cache_hit`` (not
    computed by this call) and ``fingerprint``; everything else is described in
    :func:`compute_listening_test_results`.
    """
    started = time.perf_counter()
    fingerprint = results_fingerprint(test)
    fingerprint_s = time.perf_counter() - started
    key = results_cache_key(test, fingerprint, n_boot)
    found, source = cache.get(key), "cache"
    if found is None:
        found, source = analysis_snapshot_get(test=test, fingerprint=fingerprint, n_boot=n_boot), "snapshot"
        if found is not None:
            cache.set(key, found, CACHE_TIMEOUT_S)
    if found is not None:
        return {
            **found,
            "cache_hit": True,
            "source": source,
            "timings": {**found["timings"], "fingerprint": fingerprint_s},
        }
    results = _compute_and_store(test, fingerprint=fingerprint, n_boot=n_boot)
    results["timings"]["fingerprint"] = fingerprint_s
    cache.set(key, results, CACHE_TIMEOUT_S)
    return {**results, "cache_hit": False, "source": "computed"}


def analysis_snapshot_get(*, test: ListeningTest, fingerprint: str, n_boot: int) -> dict | None:
    """The stored results for exactly these inputs, or None."""
    return (
        AnalysisSnapshot.objects.filter(test=test, fingerprint=fingerprint, n_boot=n_boot)
        .values_list("data", flat=True)
        .first()
    )


def _compute_and_store(test: ListeningTest, *, fingerprint: str, n_boot: int) -> dict:
    """Compute the results and store their snapshot, stamped with the time the inputs were read."""
    read_at, started = timezone.now(), time.perf_counter()
    results = compute_listening_test_results(test, n_boot=n_boot)
    results["fingerprint"] = fingerprint
    analysis_snapshot_store(
        test=test,
        fingerprint=fingerprint,
        n_boot=n_boot,
        data=results,
        computed_at=read_at,
        duration_s=time.perf_counter() - started,
    )
    return results


def analysis_snapshot_store(
    *,
    test: ListeningTest,
    fingerprint: str,
    n_boot: int,
    data: dict,
    computed_at: datetime,
    duration_s: float,
) -> None:
    """Upsert the snapshot of (test, fingerprint, n_boot) and drop the test's snapshots of older inputs.

    One ``INSERT ... ON CONFLICT DO UPDATE``: two processes storing the same inputs at once both succeed (the
    results are the same but for their timings). Snapshots read before ``computed_at`` with another fingerprint
    are deleted; one stored by a slower, older computation after that stays until the next store.
    """
    row = AnalysisSnapshot(
        test=test,
        fingerprint=fingerprint,
        n_boot=n_boot,
        data=data,
        computed_at=computed_at,
        duration_s=max(0.0, duration_s),
    )
    # ``data`` is not validated here: the insert serialises it anyway (and fails on anything that is not JSON).
    row.full_clean(exclude=["data"], validate_unique=False, validate_constraints=False)
    AnalysisSnapshot.objects.bulk_create(
        [row],
        update_conflicts=True,
        unique_fields=["test", "fingerprint", "n_boot"],
        update_fields=["data", "computed_at", "duration_s", "updated_at"],
    )
    (
        AnalysisSnapshot.objects.filter(test=test, n_boot=n_boot, computed_at__lt=computed_at)
        .exclude(fingerprint=fingerprint)
        .delete()
    )


def analysis_snapshots_refresh(*, n_boot: int = DEFAULT_N_BOOT) -> list[int]:
    """Compute and store the results of every published test whose current inputs have no snapshot yet, so that
    a researcher's next view reads a snapshot instead of computing; returns the ids of the tests refreshed."""
    refreshed = []
    for test in ListeningTest.objects.filter(status=ListeningTest.Status.PUBLISHED).order_by("pk"):
        fingerprint = results_fingerprint(test)
        if AnalysisSnapshot.objects.filter(test=test, fingerprint=fingerprint, n_boot=n_boot).exists():
            continue
        results = _compute_and_store(test, fingerprint=fingerprint, n_boot=n_boot)
        cache.set(results_cache_key(test, fingerprint, n_boot), results, CACHE_TIMEOUT_S)
        refreshed.append(test.pk)
    return refreshed


# ---------------------------------------------------------------------------------------------
# Reading the test


def _design(test: ListeningTest) -> dict:
    """What was built: conditions, items, trials per listener, training, controls, durations, scale."""
    from evalsite.listening.selectors import scale_of

    conditions = list(
        Condition.objects.filter(test=test).select_related("checkpoint__run").order_by("role", "label")
    )
    trials = Trial.objects.filter(test=test).aggregate(
        main=Count("id", filter=Q(is_training=False, control="")),
        training=Count("id", filter=Q(is_training=True)),
        gold=Count("id", filter=Q(control=Trial.Control.GOLD)),
        trapping=Count("id", filter=Q(control=Trial.Control.TRAPPING)),
        items=Count("item", distinct=True, filter=Q(is_training=False, control="")),
    )
    main_stimuli = Stimulus.objects.filter(trial__test=test, trial__is_training=False, trial__control="")
    durations = main_stimuli.aggregate(
        low=Min("asset__duration_s"),
        high=Max("asset__duration_s"),
        rate_low=Min("asset__sample_rate"),
        rate_high=Max("asset__sample_rate"),
    )
    per_trial = list(main_stimuli.values("trial_id").annotate(n=Count("id")).values_list("n", flat=True))
    per_listener = list(
        Assignment.objects.filter(participant__test=test, trial__is_training=False, trial__control="")
        .values("participant_id")
        .annotate(n=Count("id"))
        .values_list("n", flat=True)
    )
    return {
        "conditions": [
            {
                "label": c.label,
                "role": c.role,
                "role_label": str(c.get_role_display()),
                "checkpoint": (
                    {
                        "id": c.checkpoint_id,
                        "run": c.checkpoint.run.name,
                        "run_id": c.checkpoint.run_id,
                        "step": c.checkpoint.step,
                    }
                    if c.checkpoint_id
                    else None
                ),
            }
            for c in conditions
            if c.role not in (Condition.Role.GOLD, Condition.Role.TRAPPING)
        ],
        "scale": scale_of(test),
        "main_trials": trials["main"],
        "training_trials": trials["training"],
        "items": trials["items"],
        "gold_trials": trials["gold"],
        "trapping_trials": trials["trapping"],
        "stimuli_per_trial": {"min": min(per_trial, default=0), "max": max(per_trial, default=0)},
        "trials_per_listener": {
            "set": test.trials_per_participant,
            "min": min(per_listener, default=0),
            "max": max(per_listener, default=0),
            "mean": float(np.mean(per_listener)) if per_listener else None,
        },
        "item_duration_s": {"min": durations["low"], "max": durations["high"]},
        "sample_rate_hz": {"min": durations["rate_low"], "max": durations["rate_high"]},
    }


def _answer_frames(test: ListeningTest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings and presented frames as :func:`selectors.ratings_frame` / :func:`selectors.presented_frame` give them.

    Same rows and columns, read with two narrow queries (participant, stimulus, score / participant, stimulus)
    and one over the test's few hundred stimuli, instead of two five-way joins over every answer: on 50 000
    ratings that is about a quarter of the time. CMOS and AB answers need their presentation order undone, so
    they come from the selector. Training and quality-control stimuli are left out, as in the selectors.
    """
    stimuli = pd.DataFrame.from_records(
        list(
            Stimulus.objects.filter(
                trial__test=test, trial__is_training=False, trial__control=""
            ).values_list(
                "id",
                "trial__item__key",
                "condition__label",
                "condition__role",
                "condition__checkpoint_id",
                "condition__checkpoint__step",
                "asset__duration_s",
            )
        ),
        columns=["stimulus", "item", "system", "role", "checkpoint", "step", "duration_s"],
    ).set_index("stimulus")
    # Unordered: sorting 50 000 handles by the model's ordering cost PostgreSQL more than the join (row order is
    # not used: every use of the presented frame groups or sorts it).
    handles = _numeric_rows(
        StimulusHandle.objects.filter(assignment__participant__test=test)
        .order_by()
        .values_list("assignment__participant_id", "stimulus_id"),
        {"listener": np.int64, "stimulus": np.int64},
    )
    presented = (
        handles.loc[handles["stimulus"].isin(stimuli.index)]
        .join(stimuli[["item", "system", "role", "duration_s"]], on="stimulus")
        .reset_index(drop=True)
    )
    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        return selectors.ratings_frame(test), presented
    answers = _numeric_rows(
        Rating.objects.filter(participant__test=test, is_training=False).values_list(
            "participant_id", "stimulus_id", "score"
        ),
        {"listener": np.int64, "stimulus": np.int64, "score": np.float64},
    )
    answers = answers.loc[answers["stimulus"].isin(stimuli.index)]
    ratings = answers.join(
        stimuli[["item", "system", "role", "checkpoint", "step"]], on="stimulus"
    ).reset_index(drop=True)
    return ratings[["listener", "item", "system", "role", "score", "checkpoint", "step"]], presented


def _numeric_rows(rows: QuerySet, columns: dict[str, type]) -> pd.DataFrame:
    """A ``values_list`` query of non-null numbers (ids below 2**53, scores) as a DataFrame with these column
    names and dtypes.

    The query's SQL runs on a plain cursor and rows are turned into a float64 array a few thousand at a time:
    ``list(queryset)`` keeps 50 000 row tuples alive at once, and allocating that many tracked objects set off
    full garbage collections of the whole process heap that cost more than the query (~100 ms on 50 000 ratings).
    """
    sql, params = rows.query.get_compiler(using=rows.db).as_sql()
    width, parts = len(columns), []
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        while chunk := cursor.fetchmany(FETCH_CHUNK_ROWS):
            parts.append(np.fromiter(chain.from_iterable(chunk), dtype=np.float64, count=width * len(chunk)))
    table = np.concatenate(parts).reshape(-1, width) if parts else np.zeros((0, width))
    return pd.DataFrame({name: table[:, k].astype(dtype) for k, (name, dtype) in enumerate(columns.items())})


def _participants(test: ListeningTest) -> pd.DataFrame:
    rows = Participant.objects.filter(test=test).values_list(
        "id",
        "status",
        "external_id",
        "study_id",
        "headphone_passed",
        "headphone_answers",
        "calibrated_at",
        "consented_at",
        "completed_at",
    )
    return pd.DataFrame.from_records(
        list(rows),
        columns=[
            "listener",
            "status",
            "external_id",
            "study_id",
            "headphone_passed",
            "headphone_answers",
            "calibrated_at",
            "consented_at",
            "completed_at",
        ],
    )


def _metrics(test: ListeningTest) -> pd.DataFrame:
    """The metric results of the checkpoints behind the conditions: one row per (condition, metric).

    Where a checkpoint has results for several generation settings, the one whose outputs are the stimuli of
    this test is taken (matched by ``params_hash`` through the outputs' audio), else the latest.
    """
    from evalsite.runs.models import Generation
    from evalsite.scoring.models import MetricResult

    conditions = {
        c["checkpoint_id"]: c
        for c in Condition.objects.filter(test=test, checkpoint__isnull=False)
        .exclude(role__in=(Condition.Role.GOLD, Condition.Role.TRAPPING))
        .values("checkpoint_id", "label", "role")
    }
    if not conditions:
        return pd.DataFrame(
            columns=[
                "system",
                "role",
                "checkpoint",
                "metric",
                "value",
                "per_item",
                "higher_is_better",
                "params_hash",
                "matched",
            ]
        )
    assets = Stimulus.objects.filter(trial__test=test, condition__checkpoint__isnull=False).values("asset_id")
    used = set(
        Generation.objects.filter(checkpoint_id__in=list(conditions), asset_id__in=assets)
        .values_list("checkpoint_id", "params_hash")
        .distinct()
    )
    rows = {}
    for r in (
        MetricResult.objects.filter(checkpoint_id__in=list(conditions), status=MetricResult.Status.DONE)
        .order_by("updated_at")
        .values("checkpoint_id", "name", "value", "per_item", "higher_is_better", "params_hash", "n")
    ):
        key = (r["checkpoint_id"], r["name"])
        matched = (r["checkpoint_id"], r["params_hash"]) in used
        if key in rows and rows[key]["matched"] and not matched:
            continue
        c = conditions[r["checkpoint_id"]]
        rows[key] = {
            "system": c["label"],
            "role": c["role"],
            "checkpoint": r["checkpoint_id"],
            "metric": r["name"],
            "value": r["value"],
            "per_item": r["per_item"] or {},
            "higher_is_better": r["higher_is_better"],
            "params_hash": r["params_hash"],
            "matched": matched,
        }
    return pd.DataFrame(
        list(rows.values()),
        columns=[
            "system",
            "role",
            "checkpoint",
            "metric",
            "value",
            "per_item",
            "higher_is_better",
            "params_hash",
            "matched",
        ],
    )


# ---------------------------------------------------------------------------------------------
# Pieces of the results


def _box(frame: pd.DataFrame, group_cols: list[str]) -> dict[tuple, dict]:
    """Box-plot statistics per group: quartiles, Tukey whiskers (1.5 IQR, BS.1534-3 §4.1.2 outliers), outliers."""
    out = {}
    if frame.empty:
        return out
    codes = stats._codes(frame, group_cols)
    scores = frame["score"].to_numpy(float)
    for key, idx in zip(codes.groups, stats._group_rows(codes.group)):
        s = np.sort(scores[idx])
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        iqr = q3 - q1
        inside = s[(s >= q1 - 1.5 * iqr) & (s <= q3 + 1.5 * iqr)]
        out[key] = {
            "q1": float(q1),
            "median": float(med),
            "q3": float(q3),
            "lowerfence": float(inside.min()) if len(inside) else float(q1),
            "upperfence": float(inside.max()) if len(inside) else float(q3),
            "outliers": int(len(s) - len(inside)),
        }
    return out


def _scores(frame: pd.DataFrame, kind: str, n_boot: int) -> tuple[list[dict], str | None]:
    """system_scores rows plus box statistics, ordered by mean (best first), and the method sentence."""
    if frame.empty:
        return [], None
    table = stats.system_scores(frame, kind=kind, n_boot=n_boot, seed=BOOT_SEED)
    group_cols = ["system", "comparison"] if kind == "cmos" else ["system"]
    scored = frame.assign(score=pd.to_numeric(frame["score"], errors="coerce"))
    boxes = _box(scored.loc[scored["score"].notna()], group_cols)
    rows = []
    for row in table.to_dict("records"):
        box = boxes.get(tuple(row[c] for c in group_cols), {})
        rows.append({**row, **{f"box_{k}": v for k, v in box.items()}})
    rows.sort(key=lambda r: -r["mean"])
    return jsonable(rows), table.attrs.get("method")


def _matrix(pairs: pd.DataFrame, order: list[str]) -> dict:
    """Square matrices (rows/columns in ``order``) of Holm p, significance and mean difference row − column."""
    index = {s: k for k, s in enumerate(order)}
    size = len(order)
    p = [[None] * size for _ in range(size)]
    diff = [[None] * size for _ in range(size)]
    sig = [[False] * size for _ in range(size)]
    for r in pairs.to_dict("records"):
        a, b = index.get(r["system_a"]), index.get(r["system_b"])
        if a is None or b is None:
            continue
        p[a][b] = p[b][a] = r["p_holm"]
        diff[a][b] = r["mean_diff"]
        diff[b][a] = -r["mean_diff"] if r["mean_diff"] is not None and math.isfinite(r["mean_diff"]) else None
        sig[a][b] = sig[b][a] = bool(r["significant"])
    return jsonable({"systems": order, "p_holm": p, "mean_diff": diff, "significant": sig})


def _screening(
    test: ListeningTest, ratings: pd.DataFrame, people: pd.DataFrame, qc: dict, kind: str, rename: Callable
) -> tuple[dict, set]:
    """Pre-screening (participant status: the headphone check) and post-screening, each exclusion with reasons."""
    from evalsite.audio.headphone_check import N_TRIALS, PASS_CORRECT
    from evalsite.listening.selectors import headphone_trials

    excluded: dict = {}
    pre = people.loc[people["status"] == Participant.Status.SCREENED_OUT]
    if len(pre):
        by_pk = {p.pk: p for p in Participant.objects.filter(pk__in=list(pre["listener"]))}
        for row in pre.itertuples():
            if row.headphone_passed is False:
                answers = list(row.headphone_answers or [])
                right = sum(a == t["answer"] for a, t in zip(answers, headphone_trials(by_pk[row.listener])))
                rule, reason = (
                    HEADPHONE_RULE,
                    (
                        f"failed the headphone check: {right} of {N_TRIALS} antiphase "
                        f"trials right ({PASS_CORRECT} needed); screened out before rating"
                    ),
                )
            else:
                rule, reason = (
                    SCREENED_OUT_RULE,
                    "screened out by the listening session (status screened_out)",
                )
            excluded[row.listener] = {"rules": [rule], "reasons": [reason]}
    rules_text, parameters, not_applied = [], {}, []
    if test.headphone_check:
        rules_text.append(
            f"Pre-screening: level calibration, then the antiphase headphone check (Woods et al. 2017); "
            f"listeners with fewer than {PASS_CORRECT} of {N_TRIALS} trials right were screened out "
            "before the first trial."
        )
    if not ratings.empty:
        if kind == ListeningTest.Kind.AB:
            rules = screening.ScreeningRules(bs1534=None, constant=None, agreement=None)
            frame = ratings.assign(system="ab", score=0.0)[["listener", "item", "system", "score"]]
            result = screening.screen_listeners(frame, kind="mos", qc=qc or None, rules=rules)
        else:
            result = screening.screen_listeners(ratings, kind=kind, qc=qc or None)
        rules_text += result.describe_rules()
        parameters = result.parameters()
        for row in result.excluded.itertuples():
            entry = excluded.setdefault(row.listener, {"rules": [], "reasons": []})
            entry["rules"].append(row.rule)
            entry["reasons"].append(row.reason)
        not_applied = _records(result.not_applied, rename)
    counts = ratings.groupby("listener").size().to_dict() if not ratings.empty else {}
    rows = [
        {
            "listener": rename(pk),
            "rules": e["rules"],
            "reasons": e["reasons"],
            "ratings": int(counts.get(pk, 0)),
        }
        for pk, e in sorted(excluded.items(), key=lambda kv: rename(kv[0]))
    ]
    return {
        "rules": jsonable(parameters),
        "rules_text": rules_text,
        "excluded": rows,
        "not_applied": not_applied,
        "qc": {rename(pk): v for pk, v in sorted(qc.items())},
    }, set(excluded)


def _flags(
    kept_flags: pd.DataFrame, kept_presented: pd.DataFrame, pres: pd.DataFrame | None, rename: Callable
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
    per_stimulus = flags.stimulus_flag_rates(pres, alpha=ALPHA, baseline_rate=baseline)
    source = per_stimulus["baseline_source"].iloc[0] if len(per_stimulus) else None
    out["baseline"] = {
        "rate": float(per_stimulus["baseline_rate"].iloc[0]) if len(per_stimulus) else None,
        "source": source
        if has_reference
        else f"assumed {ASSUMED_FALSE_FLAG_RATE:g}: this test has no hidden reference to measure it on",
        "measured": has_reference,
    }
    out["method"] = per_stimulus.attrs.get("method")
    out["systems"] = _records(_system_flag_rates(per_stimulus, pres))
    flagged = per_stimulus.loc[per_stimulus["flagged"] > 0].sort_values(["share", "flagged"], ascending=False)
    out["stimuli"] = _records(flagged)
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
    out["regions"] = _records(regions.sort_values(["peak_share", "n_listeners"], ascending=False), rename)
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


def _system_flag_rates(per_stimulus: pd.DataFrame, presented: pd.DataFrame) -> pd.DataFrame:
    """:func:`flags.system_flag_rates` from flag_rates' rows, without building the presentation table again.

    A presentation is one (listener, stimulus) pair, so a system's presentations are the sum of its stimuli's
    ``heard`` and its flagged presentations the sum of their ``flagged`` (the tests check the two agree).
    """
    columns = [
        "system",
        "role",
        "stimuli",
        "listeners",
        "presentations",
        "flagged_presentations",
        "stimuli_significant",
        "share",
        "baseline_rate",
    ]
    if per_stimulus.empty:
        return pd.DataFrame(columns=columns)
    out = (
        per_stimulus.groupby(["system", "role"], sort=True)
        .agg(
            stimuli=("stimulus", "nunique"),
            presentations=("heard", "sum"),
            flagged_presentations=("flagged", "sum"),
            stimuli_significant=("significant", "sum"),
        )
        .join(_listeners_per_system(presented))
        .reset_index()
    )
    out["share"] = out["flagged_presentations"] / out["presentations"]
    out["baseline_rate"] = per_stimulus["baseline_rate"].iloc[0]
    return out[columns].sort_values("share", ascending=False, kind="stable")


def _listeners_per_system(presented: pd.DataFrame) -> pd.Series:
    """Distinct listeners per (system, role) of a presented frame, from integer codes (a pandas nunique per group
    over every presentation cost more than the rest of the flag statistics)."""
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


def _human_for_metrics(kind: str, kept: pd.DataFrame) -> pd.DataFrame:
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


def _correlations(kind: str, kept: pd.DataFrame, metrics: pd.DataFrame) -> dict:
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
    }
    human = _human_for_metrics(kind, kept)
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


def _ab_reliability(kept: pd.DataFrame) -> dict:
    """Nominal Krippendorff alpha of AB answers: units are (item, pair), values a / b / no preference."""
    a_s, b_s = kept["a"].astype(str), kept["b"].astype(str)
    first = np.where(a_s < b_s, a_s, b_s)
    second = np.where(a_s < b_s, b_s, a_s)
    code = np.where(kept["preferred"].isna(), 2.0, np.where(kept["preferred"].astype(str) == first, 0.0, 1.0))
    frame = pd.DataFrame(
        {
            "listener": kept["listener"],
            "item": kept["item"],
            "system": pd.Series(first) + " vs " + pd.Series(second),
            "score": code,
        }
    )
    alpha = reliability.krippendorff_alpha(frame, level="nominal")
    return {
        "kind": "ab",
        "primary_level": "nominal",
        "alpha": {"nominal": alpha},
        "alpha_primary": alpha,
        "units": int(frame[["item", "system"]].drop_duplicates().shape[0]),
        "listeners": int(frame["listener"].nunique()),
        "ratings": int(len(frame)),
        "icc": [],
        "notes": [
            "units are (item, system pair); values: first system preferred, second preferred, no preference"
        ],
    }


# ---------------------------------------------------------------------------------------------
# All of it


def _one_blas_thread():
    """Limit NumPy's BLAS to one thread: a web worker has one core, and on the small matrices here (the mixed
    model's q × q factorisations) idle BLAS threads spinning cost up to 8× the CPU time on a busy machine."""
    controller = _blas_controller()
    if controller is None:
        import contextlib

        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    """One controller per process: ``threadpool_limits()`` inspects every loaded library on each call (~4 ms)."""
    try:
        from threadpoolctl import ThreadpoolController
    except (
        ImportError
    ):  # a transitive dependency (scikit-learn, through librosa and pingouin); only an optimisation
        return None
    return ThreadpoolController()


def compute_listening_test_results(test: ListeningTest, *, n_boot: int = DEFAULT_N_BOOT) -> dict:
    """Compute the results without the cache (one BLAS thread). Top-level keys:

    ``version``, ``computed_at``, ``n_boot``, ``test`` (id, name, kind, status, seed, settings), ``design``
    (conditions with their checkpoints, scale, trials, items, stimuli per trial, trials per listener,
    durations), ``participants`` (statuses, recruitment, headphone check, QC), ``counts``, ``screening``,
    ``scores`` (MOS/SMOS/MUSHRA/CMOS: per system, ``kept`` and ``all`` listeners), ``preference`` (AB),
    ``pairwise`` (rows and a Holm p matrix), ``mixed_model``, ``reliability`` (``ratings``, ``flags``),
    ``flags``, ``correlations``, ``software``, ``timings`` and ``cpu_timings`` (wall and CPU seconds per stage),
    ``notes``.
    """
    with _one_blas_thread():
        return _compute(test, n_boot=n_boot)


def _compute(test: ListeningTest, *, n_boot: int) -> dict:
    """The results of one test (see :func:`compute_listening_test_results`)."""
    timings: dict[str, float] = {}
    cpu_timings: dict[str, float] = {}
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(stage: str) -> None:
        """Wall and CPU seconds since the last lap (CPU time does not depend on what else the machine runs)."""
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        timings[stage] = timings.get(stage, 0.0) + now - clock
        cpu_timings[stage] = cpu_timings.get(stage, 0.0) + cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

    kind = test.kind
    ids: dict = {}

    def rename(pk) -> str:
        if pk not in ids:
            ids[pk] = listener_id(test.pk, pk)
        return ids[pk]

    design = _design(test)
    people = _participants(test)
    ratings, presented = _answer_frames(test)
    flag_frame = selectors.flags_frame(test)
    qc = selectors.quality_control(test)
    metrics = _metrics(test)
    lap("queries")

    screening_out, excluded = _screening(test, ratings, people, qc, kind, rename)
    kept = ratings.loc[~ratings["listener"].isin(excluded)] if not ratings.empty else ratings
    lap("screening")

    results: dict = {
        "version": RESULTS_VERSION,
        "computed_at": timezone.now().isoformat(),
        "n_boot": n_boot,
        "bootstrap_seed": BOOT_SEED,
        "alpha": ALPHA,
        "test": jsonable(
            {
                "id": test.pk,
                "name": test.name,
                "kind": kind,
                "kind_label": str(test.get_kind_display()),
                "status": test.status,
                "seed": test.seed,
                "votes_target": test.votes_target,
                "published_at": test.published_at,
                "closed_at": test.closed_at,
                "headphone_check": test.headphone_check,
                "require_play_all": test.require_play_all,
                "gold_items": test.gold_items,
                "trapping_items": test.trapping_items,
                "allow_no_preference": test.allow_no_preference,
                "build_warnings": test.build_warnings,
            }
        ),
        "design": jsonable(design),
        "screening": screening_out,
        "scores": None,
        "preference": None,
        "pairwise": None,
        "mixed_model": None,
        "reliability": {"ratings": None, "flags": None},
        "notes": [],
    }
    results["participants"] = _participant_summary(people, qc, excluded)
    ratings_listeners = set(ratings["listener"]) if not ratings.empty else set()
    results["counts"] = {
        "participants": int(len(people)),
        "listeners": len(ratings_listeners),
        "listeners_kept": len(ratings_listeners - excluded),
        "listeners_excluded": len(ratings_listeners & excluded),
        "screened_out_before_rating": len(excluded - ratings_listeners),
        "ratings": int(len(ratings)),
        "ratings_kept": int(len(kept)),
        "ratings_excluded": int(len(ratings) - len(kept)),
        "flags": int(len(flag_frame)),
        "flags_kept": int((~flag_frame["listener"].isin(excluded)).sum()) if len(flag_frame) else 0,
    }
    if ratings.empty:
        results["notes"].append(NO_RATINGS)

    if kind == ListeningTest.Kind.AB and not ratings.empty:
        pref_kept, pref_all = stats.ab_preference(kept), stats.ab_preference(ratings)
        results["preference"] = {
            "method": pref_kept.attrs["method"],
            "kept": _records(pref_kept),
            "all": _records(pref_all),
        }
        lap("scores")
    elif not ratings.empty:
        kept_rows, method = _scores(kept, kind, n_boot)
        all_rows, all_method = _scores(ratings, kind, n_boot)
        results["scores"] = {"method": method or all_method, "kept": kept_rows, "all": all_rows}
        lap("scores")
        pairs = stats.pairwise_tests(kept, kind=kind, alpha=ALPHA) if not kept.empty else pd.DataFrame()
        if len(pairs):
            order = [r["system"] for r in kept_rows] if kind != "cmos" else []
            results["pairwise"] = {
                "method": pairs.attrs["method"],
                "alpha": ALPHA,
                "correction": "holm",
                "rows": _records(pairs),
                "matrix": _matrix(pairs, order) if order else None,
            }
        lap("pairwise")
        if not kept.empty:
            systems = (
                sorted(set(kept.loc[kept["role"] == Condition.Role.SYSTEM, "system"]))
                if "role" in kept
                else sorted(set(kept["system"]))
            )
            results["mixed_model"] = jsonable(
                crossed_mixed_model(kept, baseline=systems[0] if systems else None)
            )
        lap("mixed_model")
        if not kept.empty:
            results["reliability"]["ratings"] = jsonable(reliability.reliability_summary(kept, kind=kind))
        lap("reliability")
    if kind == ListeningTest.Kind.AB and not kept.empty:
        results["reliability"]["ratings"] = jsonable(_ab_reliability(kept))
        lap("reliability")

    kept_presented = presented.loc[~presented["listener"].isin(excluded)] if len(presented) else presented
    kept_flags = flag_frame.loc[~flag_frame["listener"].isin(excluded)] if len(flag_frame) else flag_frame
    kept_flags = (
        kept_flags.loc[kept_flags["listener"].isin(set(kept_presented["listener"]))]
        if len(kept_flags)
        else kept_flags
    )
    pres = flags.presentation_flags(kept_flags, kept_presented) if len(kept_presented) else None
    results["flags"] = _flags(kept_flags, kept_presented, pres, rename)
    if len(kept_presented) and len(kept_flags):
        agreement = reliability.flag_agreement(kept_flags, kept_presented, presentations=pres)
        results["reliability"]["flags"] = jsonable(agreement)
    lap("flags")
    results["correlations"] = _correlations(kind, kept, metrics)
    lap("correlations")
    results["software"] = software_versions()
    results["timings"] = timings
    results["cpu_timings"] = cpu_timings
    return results


def _participant_summary(people: pd.DataFrame, qc: dict, excluded: set) -> dict:
    """Who took part and how they were recruited and checked, for the report's listener section."""
    if people.empty:
        return {
            "total": 0,
            "by_status": {},
            "crowd": 0,
            "invite_link": 0,
            "studies": 0,
            "headphone": {},
            "calibrated": 0,
            "qc": {},
            "median_session_minutes": None,
        }
    # utc=True: a column with no completion yet is all None, which pandas would otherwise parse as naive
    # and refuse to subtract from the aware consent times (a 500 for a test nobody has finished).
    durations = (
        pd.to_datetime(people["completed_at"], utc=True) - pd.to_datetime(people["consented_at"], utc=True)
    ).dropna()
    totals: dict = {}
    for record in qc.values():
        for check, c in record.items():
            t = totals.setdefault(check, {"listeners": 0, "passed": 0, "total": 0})
            t["listeners"] += 1
            t["passed"] += int(c.get("passed", 0))
            t["total"] += int(c.get("total", 0))
    return jsonable(
        {
            "total": len(people),
            "by_status": people["status"].value_counts().to_dict(),
            "crowd": int((people["external_id"] != "").sum()),
            "invite_link": int((people["external_id"] == "").sum()),
            "studies": int(people.loc[people["study_id"] != "", "study_id"].nunique()),
            "headphone": {
                "passed": int((people["headphone_passed"] == True).sum()),  # noqa: E712 (nullable column)
                "failed": int((people["headphone_passed"] == False).sum()),  # noqa: E712
                "not_taken": int(people["headphone_passed"].isna().sum()),
            },
            "calibrated": int(people["calibrated_at"].notna().sum()),
            "qc": totals,
            "median_session_minutes": float(durations.median().total_seconds() / 60)
            if len(durations)
            else None,
        }
    )
