"""Reads that turn a listening test's rows into the long frames the pure analysis modules take.

Training answers and quality-control (gold / trapping) trials are never part of these frames:
they are not votes. Listeners are identified by participant id; systems by condition label.
"""

from __future__ import annotations

import pandas as pd

from evalsite.listening.models import ArtifactFlag, ListeningTest, Rating, StimulusHandle

MAIN = {"assignment__trial__is_training": False, "assignment__trial__control": ""}


def ratings_frame(test: ListeningTest) -> pd.DataFrame:
    """MUSHRA / SMOS / MOS: listener, item, system, role, score, checkpoint, step (one row per answer).

    CMOS: listener, item, system, comparison, score (system relative to comparison, sign-corrected).
    AB: listener, item, a, b, preferred (a label, or None for no preference).
    """
    from evalsite.listening.selectors import comparison_answers

    if test.kind in (ListeningTest.Kind.CMOS, ListeningTest.Kind.AB):
        rows = [r for r in comparison_answers(test) if r.get("item") is not None]
        frame = pd.DataFrame(rows)
        if frame.empty:
            columns = (
                ["listener", "item", "system", "comparison", "score"]
                if test.kind == "cmos"
                else ["listener", "item", "a", "b", "preferred"]
            )
            return pd.DataFrame(columns=columns)
        frame = frame.rename(columns={"participant": "listener"})
        if test.kind == ListeningTest.Kind.CMOS:
            return frame[["listener", "item", "system", "comparison", "score"]]
        return frame[["listener", "item", "a", "b", "preferred"]]
    values = Rating.objects.filter(participant__test=test, is_training=False, **MAIN).values_list(
        "participant_id",
        "assignment__trial__item__key",
        "stimulus__condition__label",
        "stimulus__condition__role",
        "score",
        "stimulus__condition__checkpoint_id",
        "stimulus__condition__checkpoint__step",
    )
    return pd.DataFrame.from_records(
        list(values), columns=["listener", "item", "system", "role", "score", "checkpoint", "step"]
    )


def presented_frame(test: ListeningTest) -> pd.DataFrame:
    """Which listener was given which stimulus: listener, stimulus, item, system, role, duration_s."""
    values = StimulusHandle.objects.filter(assignment__participant__test=test, **MAIN).values_list(
        "assignment__participant_id",
        "stimulus_id",
        "stimulus__trial__item__key",
        "stimulus__condition__label",
        "stimulus__condition__role",
        "stimulus__asset__duration_s",
    )
    return pd.DataFrame.from_records(
        list(values), columns=["listener", "stimulus", "item", "system", "role", "duration_s"]
    )


def flags_frame(test: ListeningTest) -> pd.DataFrame:
    """Every artifact flag on a main trial: listener, stimulus, item, system, role, start_s, end_s, category, note."""
    values = ArtifactFlag.objects.filter(participant__test=test, **MAIN).values_list(
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
    return pd.DataFrame.from_records(
        list(values),
        columns=["listener", "stimulus", "item", "system", "role", "start_s", "end_s", "category", "note"],
    )


def quality_control(test: ListeningTest) -> dict:
    """Gold / trapping results per listener, as ``screening.screen_listeners`` takes them."""
    from evalsite.listening.selectors import quality_control_results

    return quality_control_results(test)
