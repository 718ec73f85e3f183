"""The one reader that turns a listening test's rows into the long frames the pure analysis modules take.

Every page, export, alert and benchmark reads ratings, presentations and flags through these functions, so a
number cannot differ between two of them because they read different rows. Training answers and
quality-control (gold / trapping) trials are never part of these frames: they are not votes. Neither is a trial
the listener has not completed (``trial_complete``): a half-rated trial of an abandoned session is left out of
ratings, presentations and flags alike, as the progress table leaves it out of the votes. Listeners are
identified by participant id; systems by condition label.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np
import pandas as pd
from django.db import connections
from django.db.models import Count, QuerySet
from django.db.models.functions import Coalesce

from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    Condition,
    ListeningTest,
    Participant,
    Rating,
    Stimulus,
    StimulusHandle,
)
from evalsite.listening.selectors import comparison_answers, quality_control_results
from evalsite.runs.models import Generation
from evalsite.scoring.models import MetricResult

COMPLETED = {"assignment__completed_at__isnull": False}
"""Filter of rows reached through an assignment whose trial the listener completed: only those are votes."""
MAIN = {"assignment__trial__is_training": False, "assignment__trial__control": "", **COMPLETED}
"""Filter of rows reached through an assignment that belong to completed main trials (not training, not
gold/trapping)."""
FETCH_CHUNK_ROWS = 2000
RATING_COLUMNS = ["listener", "item", "system", "role", "score", "checkpoint", "step"]
PRESENTED_COLUMNS = ["listener", "stimulus", "item", "system", "role", "duration_s"]
FLAG_COLUMNS = ["listener", "stimulus", "item", "system", "role", "start_s", "end_s", "category", "note"]
UNFINISHED_COLUMNS = ["listener", "trials", "ratings"]
PARTICIPANT_COLUMNS = [
    "listener",
    "status",
    "external_id",
    "study_id",
    "headphone_passed",
    "headphone_answers",
    "calibrated_at",
    "consented_at",
    "completed_at",
]
METRIC_COLUMNS = [
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


def ratings_frame(test: ListeningTest) -> pd.DataFrame:
    """MUSHRA / SMOS / MOS: listener, item, system, role, score, checkpoint, step (one row per answer).

    CMOS: listener, item, system, comparison, score (system relative to comparison, sign-corrected).
    AB: listener, item, a, b, preferred (a label, or None for no preference).
    """
    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        return _comparison_ratings(test)
    return _scale_ratings(test, _main_stimuli(test))


def presented_frame(test: ListeningTest) -> pd.DataFrame:
    """Which listener was given which stimulus: listener, stimulus, item, system, role, duration_s."""
    return _presented(test, _main_stimuli(test))


def answer_frames(test: ListeningTest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`ratings_frame` and :func:`presented_frame` of ``test``, sharing one read of its stimuli."""
    stimuli = _main_stimuli(test)
    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        return _comparison_ratings(test), _presented(test, stimuli)
    return _scale_ratings(test, stimuli), _presented(test, stimuli)


def flags_frame(test: ListeningTest) -> pd.DataFrame:
    """Every artifact flag on a main trial: listener, stimulus, item, system, role, start_s, end_s, category, note."""
    return _flag_rows(ArtifactFlag.objects.filter(participant__test=test, **MAIN))


def stimuli_flag_frames(stimulus_ids: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`flags_frame` and :func:`presented_frame` of the given stimuli (of any tests), rows in id order so
    that a hash of the frames is stable (the run pages cache flag regions under it)."""
    flags = ArtifactFlag.objects.filter(stimulus_id__in=stimulus_ids, **MAIN).order_by("id")
    handles = StimulusHandle.objects.filter(stimulus_id__in=stimulus_ids, **MAIN).order_by("id")
    presented = handles.values_list(
        "assignment__participant_id",
        "stimulus_id",
        "stimulus__trial__item__key",
        "stimulus__condition__label",
        "stimulus__condition__role",
        "stimulus__asset__duration_s",
    )
    return _flag_rows(flags), pd.DataFrame.from_records(list(presented), columns=PRESENTED_COLUMNS)


def unfinished_frame(test: ListeningTest) -> pd.DataFrame:
    """Main trials begun but not completed, per listener not screened out: listener, trials, ratings (answers
    given on them), so a page can show abandoned sessions apart from the votes."""
    rows = (
        Assignment.objects.filter(
            participant__test=test,
            trial__is_training=False,
            trial__control="",
            completed_at__isnull=True,
            ratings__isnull=False,
        )
        .exclude(participant__status=Participant.Status.SCREENED_OUT)
        .values("participant_id")
        .annotate(trials=Count("id", distinct=True), ratings=Count("ratings", distinct=True))
        .order_by("participant_id")
        .values_list("participant_id", "trials", "ratings")
    )
    return pd.DataFrame.from_records(list(rows), columns=UNFINISHED_COLUMNS)


def quality_control(test: ListeningTest) -> dict:
    """Gold / trapping results per listener, as ``screening.screen_listeners`` takes them."""
    return quality_control_results(test)


def participants_frame(test: ListeningTest) -> pd.DataFrame:
    """One row per participant: status, recruitment ids, headphone check, calibration and session times."""
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
    return pd.DataFrame.from_records(list(rows), columns=PARTICIPANT_COLUMNS)


def metrics_frame(test: ListeningTest) -> pd.DataFrame:
    """The metric results of the checkpoints behind the conditions: one row per (condition, metric).

    Where a checkpoint has results for several generation settings, the one whose outputs are the stimuli of
    this test is taken (matched by ``params_hash`` through the outputs' audio), else the latest.
    """
    conditions = {
        c["checkpoint_id"]: c
        for c in Condition.objects.filter(test=test, checkpoint__isnull=False)
        .exclude(role__in=(Condition.Role.GOLD, Condition.Role.TRAPPING))
        .values("checkpoint_id", "label", "role")
    }
    if not conditions:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    # A loudness-aligned stimulus is a scaled copy: its generation is found through the source asset.
    assets = Stimulus.objects.filter(trial__test=test, condition__checkpoint__isnull=False).values(
        generated=Coalesce("source_asset_id", "asset_id")
    )
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
    return pd.DataFrame(list(rows.values()), columns=METRIC_COLUMNS)


def _main_stimuli(test: ListeningTest) -> pd.DataFrame:
    """The stimuli of the test's main trials, indexed by stimulus id: item, system, role, checkpoint, step and
    duration, read once so the answers themselves are read with narrow queries (no five-way join per answer:
    on 50 000 ratings that is about a quarter of the time)."""
    return pd.DataFrame.from_records(
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


def _presented(test: ListeningTest, stimuli: pd.DataFrame) -> pd.DataFrame:
    # Unordered: sorting 50 000 handles by the model's ordering cost PostgreSQL more than the join (row order is
    # not used: every use of the presented frame groups or sorts it).
    handles = _numeric_rows(
        StimulusHandle.objects.filter(assignment__participant__test=test, **COMPLETED)
        .order_by()
        .values_list("assignment__participant_id", "stimulus_id"),
        {"listener": np.int64, "stimulus": np.int64},
    )
    return (
        handles.loc[handles["stimulus"].isin(stimuli.index)]
        .join(stimuli[["item", "system", "role", "duration_s"]], on="stimulus")
        .reset_index(drop=True)[PRESENTED_COLUMNS]
    )


def _scale_ratings(test: ListeningTest, stimuli: pd.DataFrame) -> pd.DataFrame:
    answers = _numeric_rows(
        Rating.objects.filter(participant__test=test, is_training=False, **COMPLETED).values_list(
            "participant_id", "stimulus_id", "score"
        ),
        {"listener": np.int64, "stimulus": np.int64, "score": np.float64},
    )
    answers = answers.loc[answers["stimulus"].isin(stimuli.index)]
    ratings = answers.join(
        stimuli[["item", "system", "role", "checkpoint", "step"]], on="stimulus"
    ).reset_index(drop=True)
    return ratings[RATING_COLUMNS]


def _comparison_ratings(test: ListeningTest) -> pd.DataFrame:
    """CMOS and AB answers with their presentation order undone (``listening.selectors.comparison_answers``)."""
    columns = (
        ["listener", "item", "system", "comparison", "score"]
        if test.kind == ListeningTest.Kind.CMOS
        else ["listener", "item", "a", "b", "preferred"]
    )
    answers = comparison_answers(test, completed_only=True)
    frame = pd.DataFrame([r for r in answers if r.get("item") is not None])
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return frame.rename(columns={"participant": "listener"})[columns]


def _flag_rows(flags: QuerySet) -> pd.DataFrame:
    values = flags.values_list(
        "participant_id",
        "stimulus_id",
        "stimulus__trial__item__key",
        "stimulus__condition__label",
        "stimulus__condition__role",
        "start_s",
        "end_s",
        "category",
        "note",
    )
    return pd.DataFrame.from_records(list(values), columns=FLAG_COLUMNS)


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
