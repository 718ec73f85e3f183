"""Everything known about one listening test's answers, as one JSON-ready dict (page, report, exports, API).

:func:`listening_test_results` reads the test's rows (the same frames as :mod:`evalsite.analysis.selectors`
gives: training and gold/trapping answers are not votes), runs the pure statistics (:mod:`~.stats`,
:mod:`~.screening`, :mod:`~.reliability`, :mod:`~.flags`, :mod:`~.correlation`) and returns plain Python values:
undefined numbers (NaN) are ``None``, listeners are opaque ids (:func:`listener_id`).

The result is cached (Django's cache; without a ``CACHES`` setting that is each process's local memory) under
the test and a fingerprint of its inputs (:func:`results_fingerprint`: count and latest ``updated_at`` of ratings,
flags, participants and the conditions' metric results, plus the participants' statuses). A page view, export,
report or API call after no new answer reads the cache and recomputes nothing; any new or changed rating or flag,
a listener screened out, or a new metric changes the fingerprint, so the next call recomputes.

The mixed model is fitted here (:func:`crossed_mixed_model`) rather than with statsmodels, whose crossed
formulation took minutes on 50 000 ratings; it gives the same numbers (see the tests) in about 20-50 ms.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from importlib import metadata

import numpy as np
import pandas as pd
from django.core.cache import cache
from django.db.models import Count, Max, Min, Q
from django.utils import timezone
from django.utils.crypto import salted_hmac
from scipy import linalg, optimize
from scipy import stats as sps

from evalsite.analysis import correlation, flags, reliability, screening, selectors, stats
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

RESULTS_VERSION = 1
"""Part of the cache key: bump it when the dict's shape changes, so no process reads an old shape."""
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
HEADPHONE_RULE = "headphone_check"
SCREENED_OUT_RULE = "screened_out"
SOFTWARE = ("numpy", "pandas", "scipy", "statsmodels", "pingouin", "krippendorff", "Django")
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
    """DataFrame rows as JSON-ready dicts (listener ids through ``rename`` where a column holds them)."""
    if frame is None or frame.empty:
        return []
    rows = frame.to_dict("records")
    if rename is not None:
        for row in rows:
            if "listener" in row and row["listener"] is not None:
                row["listener"] = rename(row["listener"])
            if "listeners" in row and isinstance(row["listeners"], (list, tuple)):
                row["listeners"] = [rename(v) for v in row["listeners"]]
    return jsonable(rows)


def listener_id(test_id: int, participant_id: int) -> str:
    """Opaque, stable id of a participant: not their token (which opens their session) nor their crowd id."""
    return "L" + salted_hmac("evalsite.analysis.listener", f"{test_id}:{participant_id}").hexdigest()[:10]


def software_versions() -> dict[str, str]:
    """Versions of evalsite and of the statistics stack, for the report's "software" line."""
    import sys

    out = {"evalsite": _version("evalsite"), "python": sys.version.split()[0]}
    out.update({name: _version(name) for name in SOFTWARE})
    return out


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
# Cache


def results_fingerprint(test: ListeningTest) -> str:
    """A cheap hash of everything the results depend on (five aggregate queries, no row is read)."""
    ratings = Rating.objects.filter(participant__test=test).aggregate(n=Count("id"), last=Max("updated_at"))
    flag_rows = ArtifactFlag.objects.filter(participant__test=test).aggregate(n=Count("id"), last=Max("updated_at"))
    people = Participant.objects.filter(test=test).aggregate(
        n=Count("id"), last=Max("updated_at"),
        screened=Count("id", filter=Q(status=Participant.Status.SCREENED_OUT)),
        completed=Count("id", filter=Q(status=Participant.Status.COMPLETED)),
        headphone_failed=Count("id", filter=Q(headphone_passed=False)))
    from evalsite.scoring.models import MetricResult

    checkpoints = Condition.objects.filter(test=test, checkpoint__isnull=False).values("checkpoint_id")
    metric_rows = MetricResult.objects.filter(checkpoint_id__in=checkpoints).aggregate(n=Count("id"),
                                                                                      last=Max("updated_at"))
    test_row = ListeningTest.objects.filter(pk=test.pk).values_list("created_at", "updated_at", "status").first()
    parts = (RESULTS_VERSION, test.pk, test_row, sorted(ratings.items()), sorted(flag_rows.items()),
             sorted(people.items()), sorted(metric_rows.items()))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def results_cache_key(test: ListeningTest, fingerprint: str, n_boot: int) -> str:
    return f"analysis:test-results:v{RESULTS_VERSION}:{test.pk}:{n_boot}:{fingerprint}"


def listening_test_results(test: ListeningTest, *, n_boot: int = DEFAULT_N_BOOT) -> dict:
    """The test's results (see the module docstring), from the cache when no answer changed since.

    The returned dict has ``cache_hit`` (this call read the cache) and ``fingerprint``; everything else is
    described in :func:`compute_listening_test_results`.
    """
    started = time.perf_counter()
    fingerprint = results_fingerprint(test)
    fingerprint_s = time.perf_counter() - started
    key = results_cache_key(test, fingerprint, n_boot)
    cached = cache.get(key)
    if cached is not None:
        return {**cached, "cache_hit": True, "timings": {**cached["timings"], "fingerprint": fingerprint_s}}
    results = compute_listening_test_results(test, n_boot=n_boot)
    results["fingerprint"] = fingerprint
    results["timings"]["fingerprint"] = fingerprint_s
    cache.set(key, results, CACHE_TIMEOUT_S)
    return {**results, "cache_hit": False}


# ---------------------------------------------------------------------------------------------
# Reading the test


def _design(test: ListeningTest) -> dict:
    """What was built: conditions, items, trials per listener, training, controls, durations, scale."""
    from evalsite.listening.selectors import scale_of

    conditions = list(Condition.objects.filter(test=test).select_related("checkpoint__run")
                      .order_by("role", "label"))
    trials = Trial.objects.filter(test=test).aggregate(
        main=Count("id", filter=Q(is_training=False, control="")),
        training=Count("id", filter=Q(is_training=True)),
        gold=Count("id", filter=Q(control=Trial.Control.GOLD)),
        trapping=Count("id", filter=Q(control=Trial.Control.TRAPPING)),
        items=Count("item", distinct=True, filter=Q(is_training=False, control="")))
    main_stimuli = Stimulus.objects.filter(trial__test=test, trial__is_training=False, trial__control="")
    durations = main_stimuli.aggregate(low=Min("asset__duration_s"), high=Max("asset__duration_s"),
                                       rate_low=Min("asset__sample_rate"), rate_high=Max("asset__sample_rate"))
    per_trial = list(main_stimuli.values("trial_id").annotate(n=Count("id")).values_list("n", flat=True))
    per_listener = list(Assignment.objects.filter(participant__test=test, trial__is_training=False,
                                                  trial__control="")
                        .values("participant_id").annotate(n=Count("id")).values_list("n", flat=True))
    return {
        "conditions": [{"label": c.label, "role": c.role, "role_label": str(c.get_role_display()),
                        "checkpoint": ({"id": c.checkpoint_id, "run": c.checkpoint.run.name,
                                        "run_id": c.checkpoint.run_id, "step": c.checkpoint.step}
                                       if c.checkpoint_id else None)}
                       for c in conditions if c.role not in (Condition.Role.GOLD, Condition.Role.TRAPPING)],
        "scale": scale_of(test),
        "main_trials": trials["main"], "training_trials": trials["training"], "items": trials["items"],
        "gold_trials": trials["gold"], "trapping_trials": trials["trapping"],
        "stimuli_per_trial": {"min": min(per_trial, default=0), "max": max(per_trial, default=0)},
        "trials_per_listener": {"set": test.trials_per_participant,
                                "min": min(per_listener, default=0), "max": max(per_listener, default=0),
                                "mean": float(np.mean(per_listener)) if per_listener else None},
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
        list(Stimulus.objects.filter(trial__test=test, trial__is_training=False, trial__control="").values_list(
            "id", "trial__item__key", "condition__label", "condition__role", "condition__checkpoint_id",
            "condition__checkpoint__step", "asset__duration_s")),
        columns=["stimulus", "item", "system", "role", "checkpoint", "step", "duration_s"]).set_index("stimulus")
    handles = pd.DataFrame.from_records(
        list(StimulusHandle.objects.filter(assignment__participant__test=test)
             .values_list("assignment__participant_id", "stimulus_id")), columns=["listener", "stimulus"])
    presented = handles.loc[handles["stimulus"].isin(stimuli.index)].join(
        stimuli[["item", "system", "role", "duration_s"]], on="stimulus").reset_index(drop=True)
    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        return selectors.ratings_frame(test), presented
    answers = pd.DataFrame.from_records(
        list(Rating.objects.filter(participant__test=test, is_training=False)
             .values_list("participant_id", "stimulus_id", "score")), columns=["listener", "stimulus", "score"])
    answers = answers.loc[answers["stimulus"].isin(stimuli.index)]
    ratings = (answers.join(stimuli[["item", "system", "role", "checkpoint", "step"]], on="stimulus")
               .reset_index(drop=True))
    return ratings[["listener", "item", "system", "role", "score", "checkpoint", "step"]], presented


def _participants(test: ListeningTest) -> pd.DataFrame:
    rows = Participant.objects.filter(test=test).values_list(
        "id", "status", "external_id", "study_id", "headphone_passed", "headphone_answers", "calibrated_at",
        "consented_at", "completed_at")
    return pd.DataFrame.from_records(list(rows), columns=["listener", "status", "external_id", "study_id",
                                                          "headphone_passed", "headphone_answers", "calibrated_at",
                                                          "consented_at", "completed_at"])


def _metrics(test: ListeningTest) -> pd.DataFrame:
    """The metric results of the checkpoints behind the conditions: one row per (condition, metric).

    Where a checkpoint has results for several generation settings, the one whose outputs are the stimuli of
    this test is taken (matched by ``params_hash`` through the outputs' audio), else the latest.
    """
    from evalsite.runs.models import Generation
    from evalsite.scoring.models import MetricResult

    conditions = {c["checkpoint_id"]: c for c in Condition.objects.filter(test=test, checkpoint__isnull=False)
                  .exclude(role__in=(Condition.Role.GOLD, Condition.Role.TRAPPING))
                  .values("checkpoint_id", "label", "role")}
    if not conditions:
        return pd.DataFrame(columns=["system", "role", "checkpoint", "metric", "value", "per_item", "higher_is_better",
                                     "params_hash", "matched"])
    assets = Stimulus.objects.filter(trial__test=test, condition__checkpoint__isnull=False).values("asset_id")
    used = set(Generation.objects.filter(checkpoint_id__in=list(conditions), asset_id__in=assets)
               .values_list("checkpoint_id", "params_hash").distinct())
    rows = {}
    for r in (MetricResult.objects.filter(checkpoint_id__in=list(conditions), status=MetricResult.Status.DONE)
              .order_by("updated_at")
              .values("checkpoint_id", "name", "value", "per_item", "higher_is_better", "params_hash", "n")):
        key = (r["checkpoint_id"], r["name"])
        matched = (r["checkpoint_id"], r["params_hash"]) in used
        if key in rows and rows[key]["matched"] and not matched:
            continue
        c = conditions[r["checkpoint_id"]]
        rows[key] = {"system": c["label"], "role": c["role"], "checkpoint": r["checkpoint_id"], "metric": r["name"],
                     "value": r["value"], "per_item": r["per_item"] or {}, "higher_is_better": r["higher_is_better"],
                     "params_hash": r["params_hash"], "matched": matched}
    return pd.DataFrame(list(rows.values()), columns=["system", "role", "checkpoint", "metric", "value", "per_item",
                                                      "higher_is_better", "params_hash", "matched"])


# ---------------------------------------------------------------------------------------------
# The mixed model


def crossed_mixed_model(ratings: pd.DataFrame, *, baseline: str | None = None) -> dict:
    """score ~ system + (1|listener) + (1|item) by profiled REML on sufficient statistics; same dict as
    :func:`evalsite.analysis.stats.mixed_effects`.

    Why not statsmodels here: its crossed formulation (one group, variance components) works on the n × q
    random-effects design of the whole data and took minutes on 50 000 ratings. With crossed random
    intercepts the likelihood only needs Z'Z, Z'X, X'X, Z'y, X'y and y'y (q = listeners + items), so each
    evaluation of the profiled REML criterion (Bates, Mächler, Bolker & Walker 2015, lme4, eq. 42) is a
    q × q Cholesky factorisation; the two relative standard deviations are found by L-BFGS-B (bounded at 0).
    Fixed effects are treatment contrasts against ``baseline``; Wald (normal) 95 % CIs and p-values from
    σ²(X'V⁻¹X)⁻¹. The tests check it against statsmodels ``MixedLM`` on a small data set.
    """
    frame = ratings.assign(score=pd.to_numeric(ratings["score"], errors="coerce"))
    frame = frame.loc[frame["score"].notna()]
    systems = sorted(frame["system"].unique(), key=str)
    baseline = systems[0] if baseline is None and systems else baseline
    result: dict = {
        "ok": False, "reason": None, "baseline": baseline,
        "formula": "score ~ C(system, Treatment(baseline)) + (1 | listener) + (1 | item)",
        "method": ("crossed random intercepts for listener and item, REML (profiled criterion of Bates et al. 2015 "
                   "evaluated on sufficient statistics); Wald z p-values and 95% CIs"),
        "n": int(len(frame)), "listeners": int(frame["listener"].nunique()), "items": int(frame["item"].nunique()),
        "converged": False, "intercept": None, "effects": [], "variance_components": {}, "warnings": [],
    }
    problem = None
    if baseline not in systems:
        problem = f"baseline {baseline!r} is not among the systems {systems}"
    elif len(systems) < 2:
        problem = f"needs at least 2 systems; got {len(systems)}"
    elif result["listeners"] < 2 or result["items"] < 2:
        problem = f"needs at least 2 listeners and 2 items; got {result['listeners']} and {result['items']}"
    elif len(frame) <= len(systems) + 3:
        problem = f"{len(frame)} ratings are too few for {len(systems)} fixed effects and 3 variance parameters"
    elif float(frame["score"].std()) == 0.0:
        problem = "all scores are equal; no variance to model"
    if problem:
        result["reason"] = problem
        return result

    order = [baseline] + [s for s in systems if s != baseline]
    y = frame["score"].to_numpy(float)
    n, p = len(y), len(order)
    s_code = frame["system"].map({s: k for k, s in enumerate(order)}).to_numpy(int)
    l_code, l_uniq = pd.factorize(frame["listener"])
    i_code, i_uniq = pd.factorize(frame["item"])
    nl, ni = len(l_uniq), len(i_uniq)
    q = nl + ni
    # X = [1, dummies of the non-baseline systems]; Z = [listener indicators, item indicators].
    per_system = np.bincount(s_code, minlength=p).astype(float)
    xtx = np.zeros((p, p))
    xtx[0, 0] = n
    xtx[0, 1:] = xtx[1:, 0] = per_system[1:]
    xtx[np.arange(1, p), np.arange(1, p)] = per_system[1:]
    sums = np.bincount(s_code, weights=y, minlength=p)
    xty = np.r_[y.sum(), sums[1:]]
    ztz = np.zeros((q, q))
    cross = np.bincount(l_code * ni + i_code, minlength=nl * ni).reshape(nl, ni).astype(float)
    ztz[np.arange(nl), np.arange(nl)] = cross.sum(axis=1)
    ztz[nl + np.arange(ni), nl + np.arange(ni)] = cross.sum(axis=0)
    ztz[:nl, nl:] = cross
    ztz[nl:, :nl] = cross.T
    ztx = np.zeros((q, p))
    by_ls = np.bincount(l_code * p + s_code, minlength=nl * p).reshape(nl, p)
    by_is = np.bincount(i_code * p + s_code, minlength=ni * p).reshape(ni, p)
    ztx[:nl, 0], ztx[nl:, 0] = by_ls.sum(axis=1), by_is.sum(axis=1)
    ztx[:nl, 1:], ztx[nl:, 1:] = by_ls[:, 1:], by_is[:, 1:]
    zty = np.r_[np.bincount(l_code, weights=y, minlength=nl), np.bincount(i_code, weights=y, minlength=ni)]
    yty = float(y @ y)
    eye = np.eye(q)

    def factors(theta: np.ndarray):
        lam = np.r_[np.full(nl, theta[0]), np.full(ni, theta[1])]
        chol = linalg.cholesky(lam[:, None] * ztz * lam[None, :] + eye, lower=True)
        rzx = linalg.solve_triangular(chol, lam[:, None] * ztx, lower=True)
        cu = linalg.solve_triangular(chol, lam * zty, lower=True)
        rx = linalg.cholesky(xtx - rzx.T @ rzx, lower=True)
        cb = linalg.solve_triangular(rx, xty - rzx.T @ cu, lower=True)
        return chol, rx, cb, yty - cu @ cu - cb @ cb

    def criterion(theta: np.ndarray) -> float:
        chol, rx, _, r2 = factors(theta)
        return float(2 * np.log(np.diag(chol)).sum() + 2 * np.log(np.diag(rx)).sum()
                     + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p))))

    try:
        with np.errstate(all="raise"):
            fit = optimize.minimize(criterion, x0=np.ones(2), method="L-BFGS-B", bounds=[(0, None), (0, None)])
            chol, rx, cb, r2 = factors(fit.x)
    except (linalg.LinAlgError, FloatingPointError, ValueError) as exc:
        result["reason"] = f"model could not be fitted: {type(exc).__name__}: {exc}"
        return result
    beta = linalg.solve_triangular(rx.T, cb, lower=False)
    sigma2 = float(r2 / (n - p))
    cov = sigma2 * linalg.cho_solve((rx, True), np.eye(p))
    se = np.sqrt(np.diag(cov))
    z = sps.norm.ppf(0.975)
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(se))):
        result["reason"] = "fit produced non-finite estimates or standard errors (singular model)"
        return result
    if not fit.success:
        result["warnings"].append(f"optimiser: {fit.message}")
    if np.any(fit.x < 1e-6):
        result["warnings"].append("a random-intercept variance is estimated at 0 (singular fit)")
    effects = [dict(system=s, estimate=float(beta[k]), se=float(se[k]), ci_low=float(beta[k] - z * se[k]),
                    ci_high=float(beta[k] + z * se[k]), p=float(2 * sps.norm.sf(abs(beta[k] / se[k]))))
               for k, s in enumerate(order) if k > 0]
    result.update(
        ok=True, converged=bool(fit.success),
        intercept=dict(system=baseline, estimate=float(beta[0]), se=float(se[0]), ci_low=float(beta[0] - z * se[0]),
                       ci_high=float(beta[0] + z * se[0])),
        effects=effects,
        variance_components={"listener": sigma2 * float(fit.x[0]) ** 2, "item": sigma2 * float(fit.x[1]) ** 2,
                             "residual": sigma2},
    )
    return result


# ---------------------------------------------------------------------------------------------
# Pieces of the results


def _box(frame: pd.DataFrame, group_cols: list[str]) -> dict[tuple, dict]:
    """Box-plot statistics per group: quartiles, Tukey whiskers (1.5 IQR, BS.1534-3 §4.1.2 outliers), outliers."""
    out = {}
    for key, g in frame.groupby(group_cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        s = np.sort(g["score"].to_numpy(float))
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        iqr = q3 - q1
        inside = s[(s >= q1 - 1.5 * iqr) & (s <= q3 + 1.5 * iqr)]
        out[key] = {"q1": float(q1), "median": float(med), "q3": float(q3),
                    "lowerfence": float(inside.min()) if len(inside) else float(q1),
                    "upperfence": float(inside.max()) if len(inside) else float(q3),
                    "outliers": int(len(s) - len(inside))}
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


def _screening(test: ListeningTest, ratings: pd.DataFrame, people: pd.DataFrame, qc: dict, kind: str,
               rename: Callable) -> tuple[dict, set]:
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
                rule, reason = HEADPHONE_RULE, (f"failed the headphone check: {right} of {N_TRIALS} antiphase "
                                                f"trials right ({PASS_CORRECT} needed); screened out before rating")
            else:
                rule, reason = SCREENED_OUT_RULE, "screened out by the listening session (status screened_out)"
            excluded[row.listener] = {"rules": [rule], "reasons": [reason]}
    rules_text, parameters, not_applied = [], {}, []
    if test.headphone_check:
        rules_text.append(f"Pre-screening: level calibration, then the antiphase headphone check (Woods et al. 2017); "
                          f"listeners with fewer than {PASS_CORRECT} of {N_TRIALS} trials right were screened out "
                          "before the first trial.")
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
    rows = [{"listener": rename(pk), "rules": e["rules"], "reasons": e["reasons"], "ratings": int(counts.get(pk, 0))}
            for pk, e in sorted(excluded.items(), key=lambda kv: rename(kv[0]))]
    return {
        "rules": jsonable(parameters),
        "rules_text": rules_text,
        "excluded": rows,
        "not_applied": not_applied,
        "qc": {rename(pk): v for pk, v in sorted(qc.items())},
    }, set(excluded)


def _flags(kept_flags: pd.DataFrame, kept_presented: pd.DataFrame, rename: Callable) -> dict:
    """Per-stimulus and per-system flag shares against the false-flag rate, regions and per-stimulus timelines."""
    out: dict = {"flags": int(len(kept_flags)), "presentations": int(len(kept_presented)),
                 "baseline": None, "systems": [], "stimuli": [], "regions": [], "timelines": [], "method": None}
    if kept_presented.empty:
        return out
    has_reference = bool((kept_presented["role"] == flags.HIDDEN_REFERENCE).any())
    baseline = None if has_reference else ASSUMED_FALSE_FLAG_RATE
    per_stimulus = flags.flag_rates(kept_flags, kept_presented, alpha=ALPHA, baseline_rate=baseline)
    source = per_stimulus["baseline_source"].iloc[0] if len(per_stimulus) else None
    out["baseline"] = {"rate": float(per_stimulus["baseline_rate"].iloc[0]) if len(per_stimulus) else None,
                       "source": source if has_reference else
                       f"assumed {ASSUMED_FALSE_FLAG_RATE:g}: this test has no hidden reference to measure it on",
                       "measured": has_reference}
    out["method"] = per_stimulus.attrs.get("method")
    out["systems"] = _records(_system_flag_rates(per_stimulus, kept_presented))
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
    need = np.maximum(REGION_MIN_LISTENERS, np.ceil(REGION_MIN_SHARE * heard_by.reindex(flaggers.index) - 1e-9))
    candidates = set(flaggers.index[flaggers.to_numpy() >= need.to_numpy()])
    regions = flags.flag_regions(timed.loc[timed["stimulus"].isin(candidates)],
                                 kept_presented.loc[kept_presented["stimulus"].isin(candidates)],
                                 min_share=REGION_MIN_SHARE, min_listeners=REGION_MIN_LISTENERS)
    out["regions_method"] = regions.attrs.get("method")
    out["regions"] = _records(regions.sort_values(["peak_share", "n_listeners"], ascending=False), rename)
    peak = regions.groupby("stimulus")["peak_share"].max() if len(regions) else pd.Series(dtype=float)
    chosen = (flagged.assign(peak=flagged["stimulus"].map(peak).fillna(0.0))
              .loc[lambda f: f["stimulus"].isin(set(timed["stimulus"]))]
              .sort_values(["peak", "share", "flagged"], ascending=False)
              .head(MAX_TIMELINES))
    wanted = set(chosen["stimulus"])
    durations = kept_presented.loc[kept_presented["stimulus"].isin(wanted)].groupby("stimulus")["duration_s"].max()
    spans = {k: g[["listener", "start_s", "end_s"]] for k, g in timed.loc[timed["stimulus"].isin(wanted)]
             .groupby("stimulus")}
    for row in chosen.to_dict("records"):
        stimulus = row["stimulus"]
        duration = float(durations.get(stimulus, np.nan))
        if not math.isfinite(duration) or duration <= 0:
            duration = float(spans[stimulus]["end_s"].max())
        times, shares = flag_density_of(spans[stimulus], int(row["heard"]), duration, TIMELINE_RESOLUTION_S)
        own = regions.loc[regions["stimulus"] == stimulus] if len(regions) else regions
        out["timelines"].append(jsonable({
            "stimulus": stimulus, "item": row["item"], "system": row["system"], "role": row["role"],
            "heard": row["heard"], "flagged": row["flagged"], "share": row["share"], "p": row["p"],
            "significant": row["significant"], "duration_s": duration,
            "resolution_s": TIMELINE_RESOLUTION_S, "times": np.round(times, 4), "density": np.round(shares, 4),
            "regions": [{k: r[k] for k in ("start_s", "end_s", "peak_share", "n_listeners", "heard", "categories")}
                        for r in own.to_dict("records")],
        }))
    out["timelines_total"] = int(timed["stimulus"].nunique())
    return out


def flag_density_of(spans: pd.DataFrame, heard: int, duration_s: float, resolution_s: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`evalsite.analysis.flags.flag_density` of one stimulus from its flags alone, in plain NumPy.

    ``spans``: the stimulus's flags (``listener``, ``start_s``, ``end_s``) from listeners who heard it; ``heard``:
    how many listeners heard it. Same bins and the same rule (a listener whose flags cover a step counts once; a
    point flag covers one step), without flag_density's per-call frame filtering, which cost ~9 ms a stimulus.
    """
    n_bins = max(1, int(math.ceil(duration_s / resolution_s - 1e-9)))
    rows = pd.factorize(spans["listener"])[0]
    first = np.floor(spans["start_s"].to_numpy(float) / resolution_s + 1e-9).astype(int)
    last = np.ceil(spans["end_s"].to_numpy(float) / resolution_s - 1e-9).astype(int)
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
    columns = ["system", "role", "stimuli", "listeners", "presentations", "flagged_presentations",
               "stimuli_significant", "share", "baseline_rate"]
    if per_stimulus.empty:
        return pd.DataFrame(columns=columns)
    out = (per_stimulus.groupby(["system", "role"], sort=True)
           .agg(stimuli=("stimulus", "nunique"), presentations=("heard", "sum"),
                flagged_presentations=("flagged", "sum"), stimuli_significant=("significant", "sum"))
           .join(presented.groupby(["system", "role"])["listener"].nunique().rename("listeners"))
           .reset_index())
    out["share"] = out["flagged_presentations"] / out["presentations"]
    out["baseline_rate"] = per_stimulus["baseline_rate"].iloc[0]
    return out[columns].sort_values("share", ascending=False, kind="stable")


def _human_for_metrics(kind: str, kept: pd.DataFrame) -> pd.DataFrame:
    """Human score per (system, item) to correlate with metrics: ratings of checkpoints only.

    AB: the share of a system's decided comparisons it won (1 won, 0 lost), per item and overall.
    """
    if kept.empty:
        return pd.DataFrame(columns=["system", "item", "score"])
    if kind == ListeningTest.Kind.AB:
        decided = kept.loc[kept["preferred"].notna()]
        loser = np.where(decided["preferred"] == decided["a"], decided["b"], decided["a"])
        return pd.concat([pd.DataFrame({"system": decided["preferred"], "item": decided["item"], "score": 1.0}),
                          pd.DataFrame({"system": loser, "item": decided["item"].to_numpy(), "score": 0.0})])
    frame = kept if "role" not in kept else kept.loc[kept["role"] == Condition.Role.SYSTEM]
    return frame[["system", "item", "score"]]


def _correlations(kind: str, kept: pd.DataFrame, metrics: pd.DataFrame) -> dict:
    """Human ↔ metric correlations at system and item level, with the points behind them (for scatter plots)."""
    out: dict = {"metrics": [], "system": [], "item": [], "points": {"system": {}, "item": {}}, "method": None}
    human = _human_for_metrics(kind, kept)
    if metrics.empty or human.empty:
        return out
    out["metrics"] = jsonable([
        {"name": name, "higher_is_better": g["higher_is_better"].dropna().iloc[0] if g["higher_is_better"].notna().any()
         else None, "systems": int(g["system"].nunique()), "matched_outputs": bool(g["matched"].all()),
         "params_hash": sorted(set(g["params_hash"]))}
        for name, g in metrics.groupby("metric", sort=True)])
    system_metrics = metrics[["system", "metric", "value"]]
    item_rows = [(r.system, str(item), r.metric, value) for r in metrics.itertuples()
                 for item, value in (r.per_item or {}).items() if isinstance(value, (int, float))]
    item_metrics = pd.DataFrame(item_rows, columns=["system", "item", "metric", "value"])
    human = human.assign(item=human["item"].astype(str))
    sys_table = correlation.human_metric_correlations(human, system_metrics, level="system")
    out["method"] = sys_table.attrs.get("method")
    out["system"] = _records(sys_table)
    system_means = human.groupby("system")["score"].mean()
    for name, g in system_metrics.groupby("metric"):
        joined = g.groupby("system")["value"].mean().to_frame().join(system_means, how="inner")
        out["points"]["system"][name] = jsonable({"systems": list(joined.index), "human": joined["score"].to_numpy(),
                                                  "metric": joined["value"].to_numpy()})
    if not item_metrics.empty:
        out["item"] = _records(correlation.human_metric_correlations(human, item_metrics, level="item"))
        item_means = human.groupby(["system", "item"])["score"].mean()
        for name, g in item_metrics.groupby("metric"):
            joined = g.groupby(["system", "item"])["value"].mean().to_frame().join(item_means, how="inner")
            joined = joined.head(MAX_ITEM_POINTS)
            out["points"]["item"][name] = jsonable({
                "systems": list(joined.index.get_level_values(0)), "items": list(joined.index.get_level_values(1)),
                "human": joined["score"].to_numpy(), "metric": joined["value"].to_numpy()})
    return out


def _ab_reliability(kept: pd.DataFrame) -> dict:
    """Nominal Krippendorff alpha of AB answers: units are (item, pair), values a / b / no preference."""
    a_s, b_s = kept["a"].astype(str), kept["b"].astype(str)
    first = np.where(a_s < b_s, a_s, b_s)
    second = np.where(a_s < b_s, b_s, a_s)
    code = np.where(kept["preferred"].isna(), 2.0, np.where(kept["preferred"].astype(str) == first, 0.0, 1.0))
    frame = pd.DataFrame({"listener": kept["listener"], "item": kept["item"],
                          "system": pd.Series(first) + " vs " + pd.Series(second), "score": code})
    return {"kind": "ab", "primary_level": "nominal",
            "alpha": {"nominal": reliability.krippendorff_alpha(frame, level="nominal")},
            "alpha_primary": reliability.krippendorff_alpha(frame, level="nominal"),
            "units": int(frame[["item", "system"]].drop_duplicates().shape[0]),
            "listeners": int(frame["listener"].nunique()), "ratings": int(len(frame)), "icc": [],
            "notes": ["units are (item, system pair); values: first system preferred, second preferred, no preference"]}


# ---------------------------------------------------------------------------------------------
# All of it


def _one_blas_thread():
    """Limit NumPy's BLAS to one thread: a web worker has one core, and on the small matrices here (the mixed
    model's q × q factorisations) idle BLAS threads spinning cost up to 8× the CPU time on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a transitive dependency (scikit-learn, through pingouin); the limit is an optimisation
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
        "version": RESULTS_VERSION, "computed_at": timezone.now().isoformat(), "n_boot": n_boot,
        "bootstrap_seed": BOOT_SEED, "alpha": ALPHA,
        "test": jsonable({"id": test.pk, "name": test.name, "kind": kind, "kind_label": str(test.get_kind_display()),
                 "status": test.status, "seed": test.seed, "votes_target": test.votes_target,
                 "published_at": test.published_at, "closed_at": test.closed_at,
                 "headphone_check": test.headphone_check, "require_play_all": test.require_play_all,
                 "gold_items": test.gold_items, "trapping_items": test.trapping_items,
                 "allow_no_preference": test.allow_no_preference, "build_warnings": test.build_warnings}),
        "design": jsonable(design), "screening": screening_out, "scores": None, "preference": None, "pairwise": None,
        "mixed_model": None, "reliability": {"ratings": None, "flags": None}, "notes": [],
    }
    results["participants"] = _participant_summary(people, qc, excluded)
    ratings_listeners = set(ratings["listener"]) if not ratings.empty else set()
    results["counts"] = {
        "participants": int(len(people)),
        "listeners": len(ratings_listeners),
        "listeners_kept": len(ratings_listeners - excluded),
        "listeners_excluded": len(ratings_listeners & excluded),
        "screened_out_before_rating": len(excluded - ratings_listeners),
        "ratings": int(len(ratings)), "ratings_kept": int(len(kept)), "ratings_excluded": int(len(ratings) - len(kept)),
        "flags": int(len(flag_frame)),
        "flags_kept": int((~flag_frame["listener"].isin(excluded)).sum()) if len(flag_frame) else 0,
    }
    if ratings.empty:
        results["notes"].append(NO_RATINGS)

    if kind == ListeningTest.Kind.AB and not ratings.empty:
        pref_kept, pref_all = stats.ab_preference(kept), stats.ab_preference(ratings)
        results["preference"] = {"method": pref_kept.attrs["method"], "kept": _records(pref_kept),
                                 "all": _records(pref_all)}
        lap("scores")
    elif not ratings.empty:
        kept_rows, method = _scores(kept, kind, n_boot)
        all_rows, all_method = _scores(ratings, kind, n_boot)
        results["scores"] = {"method": method or all_method, "kept": kept_rows, "all": all_rows}
        lap("scores")
        pairs = stats.pairwise_tests(kept, kind=kind, alpha=ALPHA) if not kept.empty else pd.DataFrame()
        if len(pairs):
            order = [r["system"] for r in kept_rows] if kind != "cmos" else []
            results["pairwise"] = {"method": pairs.attrs["method"], "alpha": ALPHA, "correction": "holm",
                                   "rows": _records(pairs), "matrix": _matrix(pairs, order) if order else None}
        lap("pairwise")
        if not kept.empty:
            systems = sorted(set(kept.loc[kept["role"] == Condition.Role.SYSTEM, "system"])) \
                if "role" in kept else sorted(set(kept["system"]))
            results["mixed_model"] = jsonable(crossed_mixed_model(kept, baseline=systems[0] if systems else None))
        lap("mixed_model")
        if not kept.empty:
            results["reliability"]["ratings"] = jsonable(reliability.reliability_summary(kept, kind=kind))
        lap("reliability")
    if kind == ListeningTest.Kind.AB and not kept.empty:
        results["reliability"]["ratings"] = jsonable(_ab_reliability(kept))
        lap("reliability")

    kept_presented = presented.loc[~presented["listener"].isin(excluded)] if len(presented) else presented
    kept_flags = flag_frame.loc[~flag_frame["listener"].isin(excluded)] if len(flag_frame) else flag_frame
    kept_flags = kept_flags.loc[kept_flags["listener"].isin(set(kept_presented["listener"]))] if len(kept_flags) \
        else kept_flags
    results["flags"] = _flags(kept_flags, kept_presented, rename)
    if len(kept_presented) and len(kept_flags):
        agreement = reliability.flag_agreement(kept_flags, kept_presented)
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
        return {"total": 0, "by_status": {}, "crowd": 0, "invite_link": 0, "studies": 0, "headphone": {},
                "calibrated": 0, "qc": {}, "median_session_minutes": None}
    durations = (pd.to_datetime(people["completed_at"]) - pd.to_datetime(people["consented_at"])).dropna()
    totals: dict = {}
    for record in qc.values():
        for check, c in record.items():
            t = totals.setdefault(check, {"listeners": 0, "passed": 0, "total": 0})
            t["listeners"] += 1
            t["passed"] += int(c.get("passed", 0))
            t["total"] += int(c.get("total", 0))
    return jsonable({
        "total": len(people),
        "by_status": people["status"].value_counts().to_dict(),
        "crowd": int((people["external_id"] != "").sum()),
        "invite_link": int((people["external_id"] == "").sum()),
        "studies": int(people.loc[people["study_id"] != "", "study_id"].nunique()),
        "headphone": {"passed": int((people["headphone_passed"] == True).sum()),  # noqa: E712 (nullable column)
                      "failed": int((people["headphone_passed"] == False).sum()),  # noqa: E712
                      "not_taken": int(people["headphone_passed"].isna().sum())},
        "calibrated": int(people["calibrated_at"].notna().sum()),
        "qc": totals,
        "median_session_minutes": float(durations.median().total_seconds() / 60) if len(durations) else None,
    })
