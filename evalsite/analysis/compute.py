"""Everything known about one listening test's answers, computed as one JSON-ready dict (page, report, exports,
API, alerts).

:func:`compute_listening_test_results` reads the test's frames (:mod:`evalsite.analysis.frames`: training and
gold/trapping answers are not votes), runs the pure statistics (:mod:`~.stats`, :mod:`~.screening`,
:mod:`~.reliability`, :mod:`~.flags`, :mod:`~.correlation`) and returns plain Python values: undefined numbers
(NaN) are ``None``, listeners are opaque ids (:func:`~evalsite.analysis.plain.listener_id`). Callers read the
results through :func:`evalsite.analysis.snapshots.listening_test_results`, which stores them.

The mixed model is :func:`evalsite.analysis.stats.crossed_mixed_model` rather than statsmodels, whose crossed
formulation took minutes on 50 000 ratings; it gives the same numbers (see the tests) in about 20-50 ms.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import time
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from evalsite.analysis import flags, frames, reliability, screening, stats
from evalsite.analysis.flag_summary import flag_summary
from evalsite.analysis.leaders import leaders_mark, screening_statement
from evalsite.analysis.metric_correlations import metric_correlations
from evalsite.analysis.plain import listener_id, records
from evalsite.analysis.stats import crossed_mixed_model
from evalsite.audio.headphone_check import N_TRIALS, PASS_CORRECT
from evalsite.listening.models import Assignment, Condition, ListeningTest, Participant, Stimulus, Trial
from evalsite.listening.selectors import headphone_trials, scale_of
from metrics.jsonable import jsonable

try:
    from threadpoolctl import ThreadpoolController
except (
    ImportError
):  # a transitive dependency (scikit-learn, through librosa and pingouin); only an optimisation
    ThreadpoolController = None

RESULTS_VERSION = 6
"""Part of the cache key and the fingerprint: bump it when the dict's shape or values change, so no process
reads an old one (2: ICC intervals no longer rounded to 2 decimals; 3: per-system flag rows carry ``p`` and
``flagging_listeners``, which the alerts read; 4: CrowdMOS intervals on score rows, Hochberg p beside Holm,
the Friedman test of MUSHRA and Bradley–Terry scores of AB; only completed trials are votes, MUSHRA's
constant rule judges all of a listener's ratings, ``unfinished``, ``warnings`` and ``test.min_listeners``;
5: ``mark`` ("best" / "tied" / "top") on the kept score rows of rated systems and ``screening_statement``;
6: ``failed`` (a statistic that raised, with a stated reason), ``correlations.stored_metrics``, mixed-model
reasons without exception text)."""

logger = logging.getLogger(__name__)
STAT_FAILED = (
    "could not be computed on these answers (a degenerate case, e.g. every score equal or one listener); "
    "the server log has the details"
)
"""The stated reason for a statistic that raised: the page shows it, the exception goes to the log."""
DEFAULT_N_BOOT = 2000
BOOT_SEED = 0
ALPHA = 0.05
HEADPHONE_RULE = "headphone_check"
SCREENED_OUT_RULE = "screened_out"
SOFTWARE = ("numpy", "pandas", "scipy", "statsmodels", "Django")
NO_RATINGS = "No ratings yet."
TOO_FEW_LISTENERS = (
    "{kept} after screening; this test asks for at least {minimum}: the scores below rest on too few "
    "listeners (BS.1534-3 §4.2 suggests at least 20 after post-screening)."
)


def software_versions() -> dict[str, str]:
    """Versions of evalsite and of the statistics stack, for the report's "software" line."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> tuple[tuple[str, str], ...]:
    """Looked up once per process: each ``importlib.metadata`` lookup scans the installed distributions (~8 ms)."""
    out = {"evalsite": _version("evalsite"), "python": sys.version.split()[0]}
    out.update({name: _version(name) for name in SOFTWARE})
    return tuple(out.items())


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "evalsite":
            pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
            if pyproject.exists():
                return tomllib.loads(pyproject.read_text())["project"]["version"]
        return "unknown"


def _design(test: ListeningTest) -> dict:
    """What was built: conditions, items, trials per listener, training, controls, durations, scale."""
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
    crowd = stats.crowdmos_intervals(frame, kind=kind)
    crowdmos = {
        tuple(r[c] for c in group_cols): {
            "crowdmos_low": r["crowdmos_low"],
            "crowdmos_high": r["crowdmos_high"],
            "crowdmos_se": r["se"],
        }
        for r in crowd.to_dict("records")
    }
    scored = frame.assign(score=pd.to_numeric(frame["score"], errors="coerce"))
    boxes = _box(scored.loc[scored["score"].notna()], group_cols)
    rows = []
    for row in table.to_dict("records"):
        box = boxes.get(tuple(row[c] for c in group_cols), {})
        key = tuple(row[c] for c in group_cols)
        rows.append({**row, **crowdmos.get(key, {}), **{f"box_{k}": v for k, v in box.items()}})
    rows.sort(key=lambda r: -r["mean"])
    method = table.attrs.get("method")
    return jsonable(rows), f"{method}; {crowd.attrs['method']}" if method else None


def _mark_systems(rows: list[dict]) -> None:
    """Mark the leading rated systems of the kept scores (per comparison for CMOS) by the rule of every other
    surface (:func:`~evalsite.analysis.leaders.leaders_mark`, on the t 95 % CI). References and anchors are not
    candidates: a hidden reference leading a MUSHRA test says nothing about the systems."""
    groups: dict = {}
    for row in rows:
        if row.get("role") in (None, "", Condition.Role.SYSTEM) and row.get("mean") is not None:
            groups.setdefault(row.get("comparison"), []).append(row)
    for group in groups.values():
        cells = [{"value": r["mean"], "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high")} for r in group]
        leaders_mark(cells, higher_is_better=True)
        for row, cell in zip(group, cells):
            row["mark"] = cell.get("mark")


def pairwise_for_correction(pairwise: dict | None, correction: str, alpha: float = ALPHA) -> dict | None:
    """The stored pairwise results as read under one correction (``holm`` or ``hochberg``): each row and the
    matrix get ``p_adjusted`` and ``significant`` by that correction, so a page can switch without recomputing.
    Refuses an unknown correction with the known ones."""
    if correction not in stats.CORRECTIONS:
        raise ValueError(f"correction must be one of {sorted(stats.CORRECTIONS)}; got {correction!r}")
    if not pairwise:
        return pairwise
    column = f"p_{correction}"
    rows = [
        {**r, "p_adjusted": r.get(column), "significant": r.get(column) is not None and r[column] < alpha}
        for r in pairwise["rows"]
    ]
    matrix = pairwise.get("matrix")
    if matrix:
        p = matrix[column]
        matrix = {
            **matrix,
            "p_adjusted": p,
            "significant": [[v is not None and v < alpha for v in row] for row in p],
        }
    # The stored method sentence names the correction it was computed with (Holm); say the one shown instead.
    method = pairwise["method"].replace("Holm over all pairs", f"{correction.capitalize()} over all pairs")
    return {**pairwise, "method": method, "correction": correction, "rows": rows, "matrix": matrix}


def _matrix(pairs: pd.DataFrame, order: list[str]) -> dict:
    """Square matrices (rows/columns in ``order``) of Holm and Hochberg p, Holm significance and mean difference
    row − column."""
    index = {s: k for k, s in enumerate(order)}
    size = len(order)
    p = [[None] * size for _ in range(size)]
    p_hochberg = [[None] * size for _ in range(size)]
    diff = [[None] * size for _ in range(size)]
    sig = [[False] * size for _ in range(size)]
    for r in pairs.to_dict("records"):
        a, b = index.get(r["system_a"]), index.get(r["system_b"])
        if a is None or b is None:
            continue
        p[a][b] = p[b][a] = r["p_holm"]
        p_hochberg[a][b] = p_hochberg[b][a] = r["p_hochberg"]
        diff[a][b] = r["mean_diff"]
        diff[b][a] = -r["mean_diff"] if r["mean_diff"] is not None and math.isfinite(r["mean_diff"]) else None
        sig[a][b] = sig[b][a] = bool(r["significant"])
    return jsonable(
        {"systems": order, "p_holm": p, "p_hochberg": p_hochberg, "mean_diff": diff, "significant": sig}
    )


def _screening(
    test: ListeningTest, ratings: pd.DataFrame, people: pd.DataFrame, qc: dict, kind: str, rename: Callable
) -> tuple[dict, set]:
    """Pre-screening (participant status: the headphone check) and post-screening, each exclusion with reasons."""
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
        not_applied = records(result.not_applied, rename)
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


def _one_blas_thread():
    """Limit NumPy's BLAS to one thread: a web worker has one core, and on the small matrices here (the mixed
    model's q × q factorisations) idle BLAS threads spinning cost up to 8× the CPU time on a busy machine."""
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    """One controller per process: ``threadpool_limits()`` inspects every loaded library on each call (~4 ms)."""
    return ThreadpoolController() if ThreadpoolController is not None else None


def _guarded(results: dict, name: str, compute: Callable, *args, **kwargs):
    """``compute(*args, **kwargs)``, or None with ``results["failed"][name]`` set to a stated reason when it
    raises on thin or degenerate data: one statistic that cannot be computed must not take the page down or
    show a reader an exception class, so the exception is logged instead."""
    try:
        return compute(*args, **kwargs)
    except Exception:
        logger.exception("%s failed for listening test %s", name, results["test"]["id"])
        results["failed"][name] = f"{name.replace('_', ' ')} {STAT_FAILED}"
        return None


def compute_listening_test_results(test: ListeningTest, *, n_boot: int = DEFAULT_N_BOOT) -> dict:
    """Compute the results without the cache (one BLAS thread). Top-level keys:

    ``version``, ``computed_at``, ``n_boot``, ``test`` (id, name, kind, status, seed, settings), ``design``
    (conditions with their checkpoints, scale, trials, items, stimuli per trial, trials per listener,
    durations), ``participants`` (statuses, recruitment, headphone check, QC), ``counts``, ``screening``,
    ``screening_statement`` (the sentence every surface states), ``scores`` (MOS/SMOS/MUSHRA/CMOS: per system,
    ``kept`` and ``all`` listeners; kept rows of rated systems carry ``mark``), ``preference`` (AB),
    ``pairwise`` (rows with Holm and Hochberg p, and matrices of both), ``friedman`` (MUSHRA), ``mixed_model``, ``reliability`` (``ratings``, ``flags``),
    ``flags``, ``correlations``, ``software``, ``timings`` and ``cpu_timings`` (wall and CPU seconds per stage),
    ``notes``, ``warnings`` (fewer listeners kept than ``test.min_listeners``) and ``unfinished`` (main trials
    begun but not completed, per listener: not votes, shown apart).
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
    people = frames.participants_frame(test)
    ratings, presented = frames.answer_frames(test)
    flag_frame = frames.flags_frame(test)
    qc = frames.quality_control(test)
    metrics = frames.metrics_frame(test)
    unfinished = frames.unfinished_frame(test)
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
                "min_listeners": test.min_listeners,
                "published_at": test.published_at,
                "closed_at": test.closed_at,
                "headphone_check": test.headphone_check,
                "require_play_all": test.require_play_all,
                "gold_items": test.gold_items,
                "trapping_items": test.trapping_items,
                "allow_no_preference": test.allow_no_preference,
                "build_warnings": test.build_warnings,
                "design_warnings": test.design_warnings,
                "loudness_target_lufs": test.loudness_target_lufs,
                "loudness_served_lufs": test.loudness_served_lufs,
            }
        ),
        "design": jsonable(design),
        "screening": screening_out,
        "scores": None,
        "preference": None,
        "pairwise": None,
        "friedman": None,
        "mixed_model": None,
        "reliability": {"ratings": None, "flags": None},
        "notes": [],
        "warnings": [],
        "failed": {},
        "unfinished": {
            "listeners": int(len(unfinished)),
            "trials": int(unfinished["trials"].sum()),
            "ratings": int(unfinished["ratings"].sum()),
            "rows": [
                {"listener": rename(row.listener), "trials": int(row.trials), "ratings": int(row.ratings)}
                for row in unfinished.itertuples()
            ],
        },
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
    results["screening_statement"] = screening_statement(results["counts"])
    if ratings.empty:
        results["notes"].append(NO_RATINGS)
    elif results["counts"]["listeners_kept"] < test.min_listeners:
        results["warnings"].append(too_few_listeners(results["counts"]["listeners_kept"], test.min_listeners))

    if kind == ListeningTest.Kind.AB and not ratings.empty:
        pref_kept, pref_all = stats.ab_preference(kept), stats.ab_preference(ratings)
        results["preference"] = {
            "method": pref_kept.attrs["method"],
            "kept": records(pref_kept),
            "all": records(pref_all),
            "bradley_terry": jsonable(_guarded(results, "bradley_terry", stats.bradley_terry, kept))
            if not kept.empty
            else None,
        }
        lap("scores")
    elif not ratings.empty:
        kept_rows, method = _scores(kept, kind, n_boot)
        all_rows, all_method = _scores(ratings, kind, n_boot)
        _mark_systems(kept_rows)
        results["scores"] = {"method": method or all_method, "kept": kept_rows, "all": all_rows}
        lap("scores")
        pairs = (
            _guarded(results, "pairwise", stats.pairwise_tests, kept, kind=kind, alpha=ALPHA)
            if not kept.empty
            else None
        )
        if pairs is not None and len(pairs):
            order = [r["system"] for r in kept_rows] if kind != "cmos" else []
            results["pairwise"] = {
                "method": pairs.attrs["method"],
                "alpha": ALPHA,
                "correction": "holm",
                "corrections": list(stats.CORRECTIONS),
                "rows": records(pairs),
                "matrix": _matrix(pairs, order) if order else None,
            }
        if kind == ListeningTest.Kind.MUSHRA and not kept.empty:
            results["friedman"] = jsonable(
                _guarded(results, "friedman", stats.friedman_test, kept, kind="mushra")
            )
        lap("pairwise")
        if not kept.empty:
            systems = (
                sorted(set(kept.loc[kept["role"] == Condition.Role.SYSTEM, "system"]))
                if "role" in kept
                else sorted(set(kept["system"]))
            )
            results["mixed_model"] = jsonable(
                _guarded(
                    results,
                    "mixed_model",
                    crossed_mixed_model,
                    kept,
                    baseline=systems[0] if systems else None,
                )
            )
        lap("mixed_model")
        if not kept.empty:
            results["reliability"]["ratings"] = jsonable(
                _guarded(results, "reliability", reliability.reliability_summary, kept, kind=kind)
            )
        lap("reliability")
    if kind == ListeningTest.Kind.AB and not kept.empty:
        results["reliability"]["ratings"] = jsonable(_guarded(results, "reliability", _ab_reliability, kept))
        lap("reliability")

    kept_presented = presented.loc[~presented["listener"].isin(excluded)] if len(presented) else presented
    kept_flags = flag_frame.loc[~flag_frame["listener"].isin(excluded)] if len(flag_frame) else flag_frame
    kept_flags = (
        kept_flags.loc[kept_flags["listener"].isin(set(kept_presented["listener"]))]
        if len(kept_flags)
        else kept_flags
    )
    pres = flags.presentation_flags(kept_flags, kept_presented) if len(kept_presented) else None
    results["flags"] = flag_summary(kept_flags, kept_presented, pres, rename, alpha=ALPHA)
    if len(kept_presented) and len(kept_flags):
        agreement = _guarded(
            results,
            "flag_agreement",
            reliability.flag_agreement,
            kept_flags,
            kept_presented,
            presentations=pres,
        )
        results["reliability"]["flags"] = jsonable(agreement)
    lap("flags")
    results["correlations"] = _guarded(results, "correlations", metric_correlations, kind, kept, metrics) or {
        "metrics": [],
        "system": [],
        "item": [],
        "points": {"system": {}, "item": {}},
        "method": None,
        "stored_metrics": [],
    }
    lap("correlations")
    results["software"] = software_versions()
    results["timings"] = timings
    results["cpu_timings"] = cpu_timings
    return results


def too_few_listeners(kept: int, minimum: int) -> str:
    """The warning for a test left with fewer listeners than it asks for after screening."""
    return TOO_FEW_LISTENERS.format(
        kept=f"{kept} listener remains" if kept == 1 else f"{kept} listeners remain", minimum=minimum
    )


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
