"""Tables of one listening test for download: scores, ratings, flags, metrics, screening decisions and
questionnaire answers (CSV or Parquet).

Every table names participants by the same opaque id as the results (never their session token or crowd id),
and every answer says whether it counts: training and quality-control answers are not votes, and screened
listeners' answers are excluded with the screening reasons (:func:`evalsite.analysis.snapshots.listening_test_results`).
"""

from __future__ import annotations

import csv
import io
import json

import pandas as pd

from evalsite.analysis.plain import listener_id
from evalsite.analysis.snapshots import listening_test_results
from evalsite.listening.models import (
    ArtifactFlag,
    Condition,
    ListeningTest,
    Participant,
    Rating,
    StimulusHandle,
)
from evalsite.listening.questionnaire import STAGES, Questionnaire
from evalsite.runs.models import Generation
from evalsite.scoring.models import MetricResult

TABLES = ("scores", "ratings", "flags", "metrics", "screening", "questionnaire")
FORMATS = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
TRAINING_REASON = "training trial: not a vote"
CONTROL_REASON = "{control} quality-control trial: not a vote"
UNFINISHED_REASON = "unfinished trial: a half-rated trial is not a vote"
# Spreadsheets run a cell starting with these as a formula (OWASP "CSV Injection"), LF included for safety.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")

_ANSWER_FIELDS = {
    "participant_id": "participant_id",
    "assignment_id": "assignment_id",
    "item": "assignment__trial__item__key",
    "trial_index": "assignment__trial__index",
    "position": "assignment__position",
    "training": "assignment__trial__is_training",
    "trial_completed_at": "assignment__completed_at",
    "control": "assignment__trial__control",
    "condition": "stimulus__condition__label",
    "role": "stimulus__condition__role",
    "checkpoint_id": "stimulus__condition__checkpoint_id",
    "run": "stimulus__condition__checkpoint__run__name",
    "run_id": "stimulus__condition__checkpoint__run_id",
    "step": "stimulus__condition__checkpoint__step",
}


def _exclusions(test: ListeningTest) -> dict[str, str]:
    """Opaque listener id → the reasons they were excluded, joined with "; "."""
    screening = listening_test_results(test)["screening"]
    return {e["listener"]: "; ".join(e["reasons"]) for e in screening["excluded"]}


def _answer_frame(rows: list[dict], test: ListeningTest, excluded: dict[str, str]) -> pd.DataFrame:
    """Shared columns of ratings and flags: opaque participant, trial type, and whether (and why) it is excluded."""
    frame = pd.DataFrame(rows)
    ids = {pk: listener_id(test.pk, pk) for pk in frame["participant_id"].unique()}
    frame.insert(0, "participant", frame["participant_id"].map(ids))
    frame["trial_type"] = [
        ("training" if t else c or "main") for t, c in zip(frame["training"], frame["control"])
    ]
    reasons = []
    for participant, kind, completed in zip(
        frame["participant"], frame["trial_type"], frame["trial_completed_at"]
    ):
        if kind == "training":
            reasons.append(TRAINING_REASON)
        elif kind != "main":
            reasons.append(CONTROL_REASON.format(control=kind))
        elif completed is None or pd.isna(completed):
            # The analysis reads completed trials only (``frames``); the export says why the rest is left out.
            reasons.append(UNFINISHED_REASON)
        else:
            reasons.append(excluded.get(participant))
    frame["excluded"] = [r is not None for r in reasons]
    frame["exclusion_reason"] = reasons
    for column in ("checkpoint_id", "run_id", "step"):
        frame[column] = frame[column].astype("Int64")
    return frame


def ratings_table(test: ListeningTest) -> pd.DataFrame:
    """One row per rating, every trial type: who, item, condition (label, role, checkpoint, run, step), score.

    CMOS and AB answers are stored on the second sound (B) as B relative to A; ``first_condition`` names A, and
    ``cmos`` (the system relative to the comparison, sign-corrected) or ``preferred`` undo the order.
    """
    fields = {**_ANSWER_FIELDS, "score": "score", "rated_at": "created_at", "updated_at": "updated_at"}
    columns = [
        "participant",
        "item",
        "trial_index",
        "position",
        "trial_type",
        "condition",
        "role",
        "checkpoint_id",
        "run",
        "run_id",
        "step",
        "score",
        "excluded",
        "exclusion_reason",
        "rated_at",
        "updated_at",
    ]
    rows = list(
        Rating.objects.filter(participant__test=test)
        .order_by("participant_id", "assignment__position", "id")
        .values_list(*fields.values())
    )
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = _answer_frame([dict(zip(fields, r)) for r in rows], test, _exclusions(test))
    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        first = dict(
            StimulusHandle.objects.filter(assignment__participant__test=test, position=0).values_list(
                "assignment_id", "stimulus__condition__label"
            )
        )
        frame["first_condition"] = frame["assignment_id"].map(first)
        columns.insert(columns.index("condition"), "first_condition")
        if test.kind == ListeningTest.Kind.CMOS:
            b_is_comparison = frame["role"] == Condition.Role.COMPARISON
            frame["cmos_system"] = frame["first_condition"].where(b_is_comparison, frame["condition"])
            frame["cmos"] = (-frame["score"]).where(b_is_comparison, frame["score"]) + 0.0
            columns[columns.index("score") + 1 : columns.index("score") + 1] = ["cmos_system", "cmos"]
        else:
            frame["preferred"] = [
                b if s > 0 else a if s < 0 else None
                for a, b, s in zip(frame["first_condition"], frame["condition"], frame["score"])
            ]
            columns.insert(columns.index("score") + 1, "preferred")
    return frame[columns]


def flags_table(test: ListeningTest) -> pd.DataFrame:
    """One row per artifact flag: who, item, condition, the flagged span in seconds, category and note."""
    fields = {
        **_ANSWER_FIELDS,
        "start_s": "start_s",
        "end_s": "end_s",
        "category": "category",
        "note": "note",
        "flagged_at": "created_at",
    }
    columns = [
        "participant",
        "item",
        "trial_index",
        "position",
        "trial_type",
        "condition",
        "role",
        "checkpoint_id",
        "run",
        "run_id",
        "step",
        "start_s",
        "end_s",
        "category",
        "note",
        "excluded",
        "exclusion_reason",
        "flagged_at",
    ]
    rows = list(
        ArtifactFlag.objects.filter(participant__test=test)
        .order_by("participant_id", "assignment__position", "start_s", "id")
        .values_list(*fields.values())
    )
    if not rows:
        return pd.DataFrame(columns=columns)
    return _answer_frame([dict(zip(fields, r)) for r in rows], test, _exclusions(test))[columns]


def metrics_table(test: ListeningTest) -> pd.DataFrame:
    """Every metric result of the checkpoints behind the conditions: system-level rows and one row per item, each
    with ``generation_params`` (JSON: the sampling settings of the outputs it was computed on, joined by
    ``params_hash``), so values generated with different settings are never read as one."""

    columns = [
        "condition",
        "role",
        "checkpoint_id",
        "run",
        "run_id",
        "step",
        "metric",
        "level",
        "item",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "higher_is_better",
        "status",
        "error",
        "params_hash",
        "generation_params",
        "metric_version",
        "computed_at",
    ]
    conditions = {
        c["checkpoint_id"]: c
        for c in Condition.objects.filter(test=test, checkpoint__isnull=False)
        .exclude(role__in=(Condition.Role.GOLD, Condition.Role.TRAPPING))
        .values(
            "checkpoint_id",
            "label",
            "role",
            "checkpoint__run__name",
            "checkpoint__run_id",
            "checkpoint__step",
        )
    }
    settings: dict[tuple[int, str], str] = {}
    rows = []
    for r in (
        MetricResult.objects.filter(checkpoint_id__in=list(conditions))
        .order_by("checkpoint_id", "name")
        .values(
            "checkpoint_id",
            "name",
            "value",
            "ci_low",
            "ci_high",
            "n",
            "higher_is_better",
            "status",
            "error",
            "params_hash",
            "metric_version",
            "updated_at",
            "per_item",
        )
    ):
        c = conditions[r["checkpoint_id"]]
        at = (r["checkpoint_id"], r["params_hash"])
        if at not in settings:
            params = (
                Generation.objects.filter(checkpoint_id=at[0], params_hash=at[1])
                .values_list("params", flat=True)
                .first()
            )
            settings[at] = json.dumps(params, sort_keys=True) if isinstance(params, dict) else ""
        base = {
            "condition": c["label"],
            "role": c["role"],
            "checkpoint_id": r["checkpoint_id"],
            "run": c["checkpoint__run__name"],
            "run_id": c["checkpoint__run_id"],
            "step": c["checkpoint__step"],
            "metric": r["name"],
            "higher_is_better": r["higher_is_better"],
            "status": r["status"],
            "error": r["error"],
            "params_hash": r["params_hash"],
            "generation_params": settings[at],
            "metric_version": r["metric_version"],
            "computed_at": r["updated_at"],
        }
        rows.append(
            {
                **base,
                "level": "system",
                "item": None,
                "value": r["value"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "n": r["n"],
            }
        )
        for item, value in sorted((r["per_item"] or {}).items()):
            rows.append(
                {
                    **base,
                    "level": "item",
                    "item": str(item),
                    "value": float(value) if isinstance(value, (int, float)) else None,
                    "ci_low": None,
                    "ci_high": None,
                    "n": 1,
                }
            )
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("checkpoint_id", "run_id", "step", "n"):
        frame[column] = frame[column].astype("Int64")
    for column in ("value", "ci_low", "ci_high"):
        frame[column] = frame[column].astype(float)
    frame["higher_is_better"] = frame["higher_is_better"].astype("boolean")
    return frame


SCORE_COLUMNS = [
    "condition",
    "comparison",
    "role",
    "checkpoint_id",
    "run",
    "run_id",
    "step",
    "n",
    "listeners",
    "mean",
    "ci_low",
    "ci_high",
    "boot_low",
    "boot_high",
    "mark",
    "screening",
]


def scores_table(test: ListeningTest) -> pd.DataFrame:
    """One row per condition (per comparison for CMOS): the screened, completed-trial score of the results
    (``scores.kept``) with its intervals, its ``mark`` (best / tied / top) and the screening it rests on, the
    numbers the results page, report, API, run page and compare page show. AB tests have no per-condition score
    (their preference rows are in the results API): the table is empty."""
    results = listening_test_results(test)
    rows = (results.get("scores") or {}).get("kept") or []
    conditions = {
        c["label"]: c
        for c in Condition.objects.filter(test=test).values(
            "label", "checkpoint_id", "checkpoint__run__name", "checkpoint__run_id", "checkpoint__step"
        )
    }
    out = []
    for r in rows:
        c = conditions.get(r["system"], {})
        out.append(
            {
                "condition": r["system"],
                "comparison": r.get("comparison"),
                "role": r.get("role"),
                "checkpoint_id": c.get("checkpoint_id"),
                "run": c.get("checkpoint__run__name"),
                "run_id": c.get("checkpoint__run_id"),
                "step": c.get("checkpoint__step"),
                **{
                    k: r.get(k)
                    for k in ("n", "listeners", "mean", "ci_low", "ci_high", "boot_low", "boot_high")
                },
                "mark": r.get("mark"),
                "screening": results["screening_statement"],
            }
        )
    frame = pd.DataFrame(out, columns=SCORE_COLUMNS)
    for column in ("checkpoint_id", "run_id", "step", "n", "listeners"):
        frame[column] = frame[column].astype("Int64")
    for column in ("mean", "ci_low", "ci_high", "boot_low", "boot_high"):
        frame[column] = frame[column].astype(float)
    return frame


def screening_table(test: ListeningTest) -> pd.DataFrame:
    """One row per exclusion (participant, rule, reason), one per rule that could not judge a listener, and one
    "kept" row per participant kept, with their session status and headphone-check outcome."""
    results = listening_test_results(test)
    screening = results["screening"]
    people = {
        listener_id(test.pk, pk): (status, passed)
        for pk, status, passed in Participant.objects.filter(test=test).values_list(
            "id", "status", "headphone_passed"
        )
    }
    rated = {}
    if results["counts"]["ratings"]:
        rated = dict(
            pd.Series(
                [
                    listener_id(test.pk, pk)
                    for pk in Rating.objects.filter(
                        participant__test=test, is_training=False, assignment__trial__control=""
                    ).values_list("participant_id", flat=True)
                ]
            ).value_counts()
        )
    rows = []
    for e in screening["excluded"]:
        for rule, reason in zip(e["rules"], e["reasons"]):
            rows.append(
                {"participant": e["listener"], "decision": "excluded", "rule": rule, "reason": reason}
            )
    for e in screening["not_applied"]:
        rows.append(
            {
                "participant": e["listener"],
                "decision": "not judged by rule",
                "rule": e["rule"],
                "reason": e["reason"],
            }
        )
    gone = {e["listener"] for e in screening["excluded"]}
    for participant in sorted(people):
        if participant not in gone:
            decision = "kept" if rated.get(participant) else "no ratings yet"
            rows.append({"participant": participant, "decision": decision, "rule": None, "reason": None})
    frame = pd.DataFrame(rows, columns=["participant", "decision", "rule", "reason"])
    frame["status"] = frame["participant"].map(lambda p: people.get(p, (None, None))[0])
    frame["headphone_passed"] = (
        frame["participant"].map(lambda p: people.get(p, (None, None))[1]).astype("boolean")
    )
    frame["main_ratings"] = (
        frame["participant"].map(lambda p: int(rated.get(p, 0)) if p else 0).astype("Int64")
    )
    return frame


def questionnaire_table(test: ListeningTest) -> pd.DataFrame:
    """One row per participant: status, whether screening excluded them, and each questionnaire answer in a
    ``<stage>.<question id>`` column (a choice as its option value; blank when skipped or not reached), with
    ``<stage>_submitted_at``. It joins the ratings export on ``participant``."""
    questionnaire = Questionnaire.from_stored(test.questionnaire)
    columns = ["participant", "status", "excluded"]
    for stage in STAGES:
        if questionnaire.stage(stage):
            columns += [f"{stage}_submitted_at"] + [f"{stage}.{q.id}" for q in questionnaire.stage(stage)]
    people = list(
        Participant.objects.filter(test=test).order_by("pk").values_list("pk", "status", "questionnaire")
    )
    if not people:
        return pd.DataFrame(columns=columns)
    excluded = _exclusions(test)
    rows = []
    for pk, status, answers in people:
        participant = listener_id(test.pk, pk)
        row = {"participant": participant, "status": status, "excluded": participant in excluded}
        for stage in STAGES:
            page = (answers or {}).get(stage) or {}
            row[f"{stage}_submitted_at"] = page.get("submitted_at")
            for q in questionnaire.stage(stage):
                row[f"{stage}.{q.id}"] = (page.get("answers") or {}).get(q.id)
        rows.append(row)
    return pd.DataFrame(rows)[columns]


def _neutralise_formula(value: object) -> object:
    """A text cell a spreadsheet would run as a formula is shown as text: a leading ' (OWASP CSV injection)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """CSV of one table for people who open it in a spreadsheet; listener notes and names are untrusted text.

    Only text cells are neutralised (a negative score stays a number). CRLF line ends make the csv module quote
    every field holding a CR or an LF: with LF line ends a bare CR in a note went out unquoted and split the row.
    """
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column].dtype):
            safe[column] = safe[column].map(_neutralise_formula)
    return safe.to_csv(index=False, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).encode()


BUILDERS = {
    "scores": scores_table,
    "ratings": ratings_table,
    "flags": flags_table,
    "metrics": metrics_table,
    "screening": screening_table,
    "questionnaire": questionnaire_table,
}


def export_bytes(test: ListeningTest, table: str, fmt: str) -> bytes:
    """One table of the test as CSV (UTF-8, header row) or Parquet (pyarrow) bytes."""
    if table not in BUILDERS:
        raise ValueError(f"table must be one of {TABLES}; got {table!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {tuple(FORMATS)}; got {fmt!r}")
    frame = BUILDERS[table](test)
    if fmt == "csv":
        return csv_bytes(frame)
    # Lazy: pyarrow is only needed for Parquet downloads, and importing it costs every web process memory.
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()
