"""One set of numbers everywhere (issue 17 item 1): the same answers give the same human score, the same
screening sentence and the same best/tied mark on the test page, the report, the results API, the scores export,
the compare page, the run page, the alerts and the training client.

The answers include a straight-lining listener (screened out by the constant rule) and a listener who rated
stimuli without finishing their trials (not votes), so a surface that averaged every vote, or every rating stored,
would show another number and fail here.
"""

import io
import uuid
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from django.contrib.auth import get_user_model

from evalsite.alerts.listening import alerts_evaluate_listening_all, alerts_evaluate_test
from evalsite.alerts.models import Alert
from evalsite.analysis.run_selectors import checkpoint_comparison, run_human_scores
from evalsite.analysis.snapshots import listening_test_results
from evalsite.listening import services
from evalsite.listening.models import Condition, Rating, StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.listening.services.build import listening_test_close
from evalsite_client.results import human_scores
from tests.alerts.test_alerts_listening import two_steps  # noqa: F401 (fixture)
from tests.factories import make_listening_test

pytestmark = pytest.mark.django_db

# Each kept listener gives every output of a checkpoint one score: listener n the n-th of the list.
KEPT = {1000: [4, 5, 4, 5, 4, 5], 2000: [2, 3, 2, 2, 3, 3]}
STRAIGHT_LINER = 1  # every sound a 1: excluded by the constant rule
HALF_RATED = 5  # rated, never finished: not a vote
STATEMENT = "screened: 1 of 7 listeners excluded; completed trials only"


class Tables(HTMLParser):
    """Rows of every <table> as lists of (text, attrs) cells; enough to read a number back from a page."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self._table = self._row = self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or attrs.get("data-testid") or "", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", attrs]
            self._row.append(self._cell)
        elif tag == "strong" and self._cell is not None:
            self._cell[1]["strong"] = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th"):
            if self._cell is not None:
                self._cell[0] = " ".join(self._cell[0].split())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def shown_mark(cell: tuple[str, dict]) -> str | None:
    """The mark a score cell of the compare or run page shows: bold is "best", a "tied"/"top" label the others."""
    text, attrs = cell
    return "best" if attrs.get("strong") else next((m for m in ("tied", "top") if m in text.split()), None)


def row_of(html: str, table: str, first_cell: str) -> list[tuple[str, dict]]:
    (row,) = [r for r in Tables(html).tables[table] if r and r[0][0] == first_cell]
    return row


def answer(test, *, score, finish=True):
    """One listener rates every stimulus ``score(step of its checkpoint)`` and finishes each trial (or none)."""
    participant = services.participant_join(test=test)
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            handle = StimulusHandle.objects.select_related("stimulus__condition__checkpoint").get(
                token=stim["id"]
            )
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score(handle.stimulus.condition.checkpoint.step),
                request_id=uuid.uuid4().hex,
            )
        if finish:
            services.trial_complete(participant=participant, trial=trial["id"])
    return participant


@pytest.fixture
def rated(two_steps):  # noqa: F811
    old, new = two_steps
    test = services.listening_test_publish(
        test=make_listening_test(
            name="one-number", kind="mos", checkpoints=[old, new], seed=7, training_items=0
        )
    )
    for n in range(6):
        answer(test, score=lambda step, n=n: KEPT[step][n])
    answer(test, score=lambda step: STRAIGHT_LINER)
    answer(test, score=lambda step: HALF_RATED, finish=False)
    test = listening_test_close(test=test)  # the training client reads a closed test's scores only
    labels = dict(Condition.objects.filter(test=test).values_list("checkpoint__step", "label"))
    return {"old": old, "new": new, "test": test, "labels": labels}


@pytest.fixture
def researcher(client):
    client.force_login(get_user_model().objects.create_user("one-number", password="x", is_superuser=True))
    return client


def test_every_surface_gives_the_screened_completed_trial_score_of_each_checkpoint(rated, researcher):
    old, new, test, labels = rated["old"], rated["new"], rated["test"], rated["labels"]
    results = listening_test_results(test)
    rows = {r["system"]: r for r in results["scores"]["kept"]}
    expected = {step: float(np.mean(KEPT[step])) for step in KEPT}  # 4 items each, the same per listener
    assert {step: rows[labels[step]]["mean"] for step in KEPT} == pytest.approx(expected)
    assert results["screening_statement"] == STATEMENT
    assert [e["rules"] for e in results["screening"]["excluded"]] == [["constant"]]
    assert results["unfinished"]["listeners"] == 1
    # What a surface averaging every completed vote, or every stored rating, would show instead.
    unscreened = {r["system"]: r["mean"] for r in results["scores"]["all"]}
    stored = {
        step: float(
            np.mean(
                Rating.objects.filter(
                    participant__test=test, stimulus__condition__checkpoint__step=step
                ).values_list("score", flat=True)
            )
        )
        for step in KEPT
    }
    for step in KEPT:
        assert f"{unscreened[labels[step]]:.2f}" != f"{expected[step]:.2f}"
        assert f"{stored[step]:.2f}" != f"{expected[step]:.2f}"
    # The leader's interval is apart from the other's: "best" for step 1000, no mark for 2000.
    assert (rows[labels[1000]]["mark"], rows[labels[2000]]["mark"]) == ("best", None)

    for step, checkpoint in ((1000, old), (2000, new)):
        label, mean = labels[step], rows[labels[step]]["mean"]
        mark = rows[label]["mark"]

        page = researcher.get(f"/analysis/tests/{test.pk}/").content.decode()
        cells = [text for text, _ in row_of(page, "scores", label)]
        assert (cells[4], cells[5]) == (f"{mean:.2f}", mark or "")
        assert STATEMENT in page

        report = researcher.get(f"/analysis/tests/{test.pk}/report.html").content.decode()
        cells = [text for text, _ in row_of(report, "scores", label)]
        assert (cells[3], cells[4]) == (f"{mean:.2f}", mark or "")
        assert STATEMENT in report

        api = researcher.get(f"/api/v1/listening-tests/{test.pk}/results/").json()
        (api_row,) = [r for r in api["scores"]["kept"] if r["system"] == label]
        assert (api_row["mean"], api_row["mark"], api["screening_statement"]) == (mean, mark, STATEMENT)

        export = researcher.get(f"/analysis/tests/{test.pk}/export/scores.csv")
        table = pd.read_csv(io.BytesIO(export.content)).set_index("step")
        assert table.loc[step, "mean"] == mean and table.loc[step, "screening"] == STATEMENT
        assert (table.loc[step, "mark"] if isinstance(table.loc[step, "mark"], str) else None) == mark

        compare = researcher.get(f"/analysis/compare/?c={old.pk}&c={new.pk}").content.decode()
        (compare_row,) = [
            r for r in Tables(compare).tables["comparison"] if r and r[0][0].endswith(f"@ {step}")
        ]
        assert float(compare_row[1][1]["data-sort"]) == mean
        assert shown_mark(compare_row[1]) == mark and STATEMENT in compare
        comparison = checkpoint_comparison(checkpoint_ids=[old.pk, new.pk], user=_su())
        cell = next(r for r in comparison["rows"] if r["checkpoint"].pk == checkpoint.pk)["cells"][0]
        assert (cell["value"], cell.get("mark")) == (mean, mark)

        run_page = researcher.get(f"/runs/{old.run_id}/").content.decode()
        run_row = row_of(run_page, "human-scores-table", str(step))
        assert float(run_row[1][1]["data-sort"]) == mean and shown_mark(run_row[1]) == mark
        assert STATEMENT in run_page
        human = run_human_scores(run=old.run, user=_su())
        (column,) = human["columns"]
        run_cell = next(r for r in human["rows"] if r["checkpoint"].pk == checkpoint.pk)["cells"][0]
        assert (run_cell["value"], run_cell.get("mark"), column["screening"]) == (mean, mark, STATEMENT)

    # The training client reads the closed test's score of each step from the same API answer.
    name, client_scores = human_scores(api, run_id=old.run_id, steps={1000, 2000})
    assert name == "one-number" and client_scores == {step: rows[labels[step]]["mean"] for step in KEPT}

    # The score-drop alert on step 2000 states the same two numbers and the same screening.
    (drop,) = [a for a in alerts_evaluate_test(test=test) if a.kind == "score_drop"]
    assert drop.checkpoint == new and drop.evidence["screening"] == STATEMENT
    assert (drop.evidence["mean"], drop.evidence["baseline_mean"]) == (
        rows[labels[2000]]["mean"],
        rows[labels[1000]]["mean"],
    )
    assert f"{rows[labels[2000]]['mean']:.2f}" in drop.title


def test_results_read_through_an_older_copy_of_the_test_state_its_current_status(two_steps):  # noqa: F811
    """Every surface shows the snapshot stored for the current inputs: one computed through a caller's copy
    loaded before the test was closed must still say "closed" (the training client reads only closed tests)."""
    old, new = two_steps
    test = services.listening_test_publish(
        test=make_listening_test(
            name="stale-copy", kind="mos", checkpoints=[old, new], seed=8, training_items=0
        )
    )
    answer(test, score=lambda step: 4 if step == 1000 else 2)
    listening_test_close(test=test)
    assert test.status == "published"  # this copy predates the close
    assert listening_test_results(test)["test"]["status"] == "closed"


def test_finishing_trials_re_evaluates_the_listening_alerts(two_steps):  # noqa: F811
    """Rated-but-unfinished trials are not votes; finishing them writes no rating but must still reach the
    alert rules on the next beat pass (the pass skips tests whose answers did not change)."""
    old, new = two_steps
    test = services.listening_test_publish(
        test=make_listening_test(
            name="finish-late", kind="mos", checkpoints=[old, new], seed=9, training_items=0
        )
    )
    people = [
        answer(test, score=lambda step, n=n: KEPT[step][n] if step == 1000 else 2, finish=False)
        for n in range(6)
    ]
    assert alerts_evaluate_listening_all() == []  # no completed trial: nothing to judge yet
    for participant in people:
        for token in participant.assignments.values_list("token", flat=True):
            services.trial_complete(participant=participant, trial=token)
    created = Alert.objects.filter(pk__in=alerts_evaluate_listening_all())
    assert [(a.kind, a.checkpoint_id) for a in created] == [("score_drop", new.pk)]


def _su():
    return get_user_model()(username="sees-every-run", is_superuser=True)
