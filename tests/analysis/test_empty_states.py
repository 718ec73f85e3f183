"""Issue 17 item 2: every chart and statistic of a listening test's analysis says what it needs when it cannot be
shown ("needs at least 2 listeners … (has 1)"), statistics that raise on thin or degenerate data become a stated
reason (the exception goes to the log), and counts are pluralised. SQLite, the real page and report."""

import html
import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
from django.core.cache import cache

from evalsite.analysis import availability, compute, correlation, figures_tests, stats
from evalsite.analysis.availability import results_availability
from evalsite.analysis.snapshots import listening_test_results
from tests.analysis.thin_worlds import thin_test

pytestmark = pytest.mark.django_db

RAW = re.compile(
    r"Error|Traceback|FloatingPointError|\bnan\b|\bNaN\b|\bNone\b|\b1 (listeners|flags|ratings|pairs)\b"
)
KEYS = {
    "scores",
    "significance",
    "friedman",
    "mixed_model",
    "alpha",
    "icc",
    "flags",
    "flag_agreement",
    "correlations",
    "metric_system",
    "metric_item",
}


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


def visible_text(body: str) -> str:
    """What a reader sees: no scripts (the figures' JSON), styles or tags."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    body = re.sub(r"</(td|th|tr|li|p|h\d)>", " | ", body)  # a cell's number is not the next cell's count
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def pages(client, test) -> dict[str, str]:
    out = {}
    for name, url in (
        ("page", f"/analysis/tests/{test.pk}/"),
        ("report", f"/analysis/tests/{test.pk}/report.html"),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        out[name] = response.content.decode()
    return out


def page_figures(body: str) -> dict:
    return json.loads(
        re.search(r'<script id="figures" type="application/json">(.*?)</script>', body, re.S)[1]
    )


def assert_states_shown(
    avail: dict, bodies: dict[str, str], *, report_keys=KEYS - {"metric_system", "metric_item"}
):
    """Each unavailable statistic's reason is on the page (and, for those the report has, in the report); no raw
    value or exception text anywhere."""
    for name, body in bodies.items():
        text = visible_text(body)
        assert not RAW.search(text), (
            name,
            RAW.search(text)[0],
            text[max(0, RAW.search(text).start() - 200) :][:400],
        )
        for key, state in avail.items():
            if state["ok"] or (name == "report" and key not in report_keys):
                continue
            if key == "friedman" and state["reason"] == "only for MUSHRA":
                continue
            if key.startswith("metric_") and not avail["correlations"]["ok"]:
                continue  # the section's one empty state covers both levels
            assert f'data-for="{key}"' in body, (name, key)
            assert html.escape(state["reason"], quote=False) in body or state["reason"] in text, (name, key)


@pytest.mark.parametrize("kind", ["mushra", "smos"])
def test_with_no_listener_every_statistic_says_it_needs_ratings_and_the_metrics_are_said_to_exist(
    kind, admin_client
):
    test, _ = thin_test(kind, 0)
    results = listening_test_results(test, n_boot=100)
    avail = results_availability(results)
    assert set(avail) == KEYS and not any(a["ok"] for a in avail.values())
    for key in ("scores", "significance", "mixed_model", "alpha", "icc"):
        assert avail[key]["reason"].startswith("needs ratings from at least 1 listener (has 0"), key
    assert avail["flags"]["reason"] == avail["scores"]["reason"]
    # Metrics are stored on both checkpoints: the page used to say "No stored metric results".
    assert "metrics are stored (pesq)" in avail["correlations"]["reason"]
    bodies = pages(admin_client, test)
    assert "No stored metric results" not in bodies["page"] + bodies["report"]
    assert_states_shown(avail, bodies)
    assert page_figures(bodies["page"]) == {}


@pytest.mark.parametrize("kind", ["mushra", "smos"])
def test_with_one_listener_scores_show_and_every_agreement_statistic_says_it_needs_a_second(
    kind, admin_client
):
    test, _ = thin_test(kind, 1)
    results = listening_test_results(test, n_boot=100)
    avail = results_availability(results)
    assert (
        avail["scores"]["ok"]
        and avail["flags"]["ok"]
        and avail["correlations"]["ok"]
        and avail["metric_item"]["ok"]
    )
    assert "only 3 listener×item pairs; at least 6 are needed" in avail["significance"]["reason"]
    assert avail["mixed_model"]["reason"] == "needs at least 2 listeners and 2 items; got 1 and 3"
    for key in ("alpha", "icc"):
        assert avail[key]["reason"].startswith(
            "needs at least 2 listeners who rated the same sounds (has 1"
        ), key
    assert (
        avail["flag_agreement"]["reason"]
        == "needs at least 2 kept listeners who heard the same sounds (has 1)"
    )
    assert avail["metric_system"]["reason"] == (
        "system level needs at least 3 conditions with both a human score and a metric value (has 2)"
    )
    # MUSHRA's Friedman test has complete blocks with one listener (each item is a block).
    assert avail["friedman"]["ok"] is (kind == "mushra")
    bodies = pages(admin_client, test)
    assert_states_shown(avail, bodies)
    figures = page_figures(bodies["page"])
    assert "fig_significance" not in figures  # no p-value anywhere: it used to be a blank heat map
    assert {"fig_scores", "fig_metric_item_0", "fig_flag_systems"} <= set(figures)
    for key, figure in figures.items():
        assert any(
            len(t.get("x") or t.get("y") or t.get("z") or t.get("q1") or []) for t in figure["data"]
        ), key
    text = visible_text(bodies["page"])
    assert "1 participant, 1 listener with ratings" in text and "1 flag." in text
    assert ("The one pair" in text) is (kind == "smos")


@pytest.mark.parametrize("kind", ["mushra", "smos"])
def test_with_two_listeners_every_statistic_is_available(kind, admin_client):
    test, _ = thin_test(kind, 2)
    results = listening_test_results(test, n_boot=100)
    avail = results_availability(results)
    expected = KEYS - {"metric_system"} - ({"friedman"} if kind == "smos" else set())
    assert {k for k, a in avail.items() if a["ok"]} == expected
    bodies = pages(admin_client, test)
    assert_states_shown(avail, bodies)
    figures = page_figures(bodies["page"])
    assert "fig_significance" in figures
    text = visible_text(bodies["page"])
    assert "2 participants, 2 listeners with ratings" in text and "2 flags." in text
    # The caption promises two-sided p-values: the table shows them.
    row = results["correlations"]["item"][0]
    assert f"{row['pearson_p']:.3g}" in text and f"{row['kendall_p']:.3g}" in text


def test_when_every_listener_gives_one_answer_they_are_excluded_and_each_section_says_so(admin_client):
    test, _ = thin_test("smos", 2, equal=True)
    results = listening_test_results(test, n_boot=100)
    assert results["counts"]["listeners_excluded"] == 2
    avail = results_availability(results)
    for key in ("scores", "significance", "mixed_model", "alpha", "icc"):
        assert avail[key]["reason"] == (
            "needs at least 1 listener kept after screening (all 2 listeners with ratings are excluded; "
            "see Listener screening)"
        ), key
    # Their flags are left out with them, and the section says why the header's count is not shown.
    assert results["counts"]["flags"] == 2 and results["flags"]["flags"] == 0
    assert "2 are from excluded listeners" in avail["flags"]["reason"]
    assert_states_shown(avail, pages(admin_client, test))


def test_flags_only_from_an_excluded_listener_are_explained_rather_than_no_flags_yet(admin_client):
    test, _ = thin_test("mushra", 3, bad=frozenset({0}), flag=frozenset({0}))
    results = listening_test_results(test, n_boot=100)
    assert results["counts"]["listeners_excluded"] == 1 and results["counts"]["flags"] == 1
    reason = results_availability(results)["flags"]["reason"]
    assert reason.startswith("needs flags from kept listeners: of the 1 flag counted")
    assert "1 is from excluded listeners" in reason
    bodies = pages(admin_client, test)
    assert (
        "No artifact flags yet" not in bodies["page"] and html.escape(reason, quote=False) in bodies["page"]
    )


def test_a_mixed_model_on_scores_that_vary_only_between_conditions_gives_a_reason_not_an_exception():
    """Found on an SMOS test: every listener gave one system 5 and the other 2; the REML criterion took the log
    of a zero residual and the page showed ``FloatingPointError: invalid value encountered in log``."""
    rows = [
        {"listener": f"l{k}", "item": f"i{j}", "system": s, "score": 5.0 if s == "a" else 2.0}
        for k in range(2)
        for j in range(3)
        for s in "ab"
    ]
    for fit in (stats.crossed_mixed_model, stats.mixed_effects):
        result = fit(pd.DataFrame(rows))
        assert not result["ok"] and result["reason"] == stats.MIXED_NO_WITHIN, fit


def test_a_mixed_model_fit_that_fails_numerically_is_logged_and_stated(monkeypatch, caplog):
    def overflow(*args, **kwargs):
        raise FloatingPointError("invalid value encountered in log")

    monkeypatch.setattr(stats.optimize, "minimize", overflow)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        [
            {"listener": f"l{k}", "item": f"i{j}", "system": s, "score": float(rng.integers(1, 6))}
            for k in range(3)
            for j in range(3)
            for s in "ab"
        ]
    )
    with caplog.at_level(logging.WARNING, logger="evalsite.analysis.stats"):
        result = stats.crossed_mixed_model(frame)
    assert result["reason"] == stats.MIXED_FIT_FAILED and "Error" not in result["reason"]
    assert any(r.exc_info and r.exc_info[0] is FloatingPointError for r in caplog.records)


@pytest.mark.parametrize(
    "name, target",
    [
        ("friedman", "evalsite.analysis.stats.friedman_test"),
        ("mixed_model", "evalsite.analysis.compute.crossed_mixed_model"),
        ("reliability", "evalsite.analysis.reliability.reliability_summary"),
        ("pairwise", "evalsite.analysis.stats.pairwise_tests"),
        ("flag_agreement", "evalsite.analysis.reliability.flag_agreement"),
        ("correlations", "evalsite.analysis.compute.metric_correlations"),
    ],
)
def test_a_statistic_that_raises_becomes_a_stated_reason_and_a_log_record(
    name, target, monkeypatch, caplog, admin_client
):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    test, _ = thin_test("mushra", 2)
    monkeypatch.setattr(target, broken)
    with caplog.at_level(logging.ERROR, logger="evalsite.analysis.compute"):
        results = compute.compute_listening_test_results(test, n_boot=50)
    assert results["failed"] == {name: f"{name.replace('_', ' ')} {compute.STAT_FAILED}"}
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    avail = results_availability(results)
    broken_keys = {k for k, a in avail.items() if not a["ok"]} - {"metric_system"}
    assert broken_keys and all(avail[k]["reason"] == results["failed"][name] for k in broken_keys)
    bodies = pages(admin_client, test)
    for body in bodies.values():
        assert "ZeroDivisionError" not in body and "float division" not in body
    assert compute.STAT_FAILED in bodies["page"]


def test_the_significance_heat_map_is_not_drawn_when_no_pair_has_a_p_value():
    systems = ["a", "b", "c"]
    empty = [[None] * 3 for _ in systems]
    results = {
        "alpha": 0.05,
        "pairwise": {
            "correction": "holm",
            "matrix": {
                "systems": systems,
                "p_holm": empty,
                "p_adjusted": empty,
                "mean_diff": [[None, 1.0, 2.0], [-1.0, None, 1.0], [-2.0, -1.0, None]],
                "significant": [[False] * 3 for _ in systems],
            },
        },
    }
    assert figures_tests.significance_figure(results) is None
    results["pairwise"]["matrix"]["p_adjusted"] = [[None, 0.01, None], [0.01, None, None], [None, None, None]]
    assert figures_tests.significance_figure(results)["data"][0]["z"][0][1] == pytest.approx(2.0)


def test_system_scatter_labels_lean_inwards_and_titles_take_two_short_lines():
    long = "metric_with_a_long_descriptive_name_0"
    results = {
        "correlations": {
            "system": [
                {"metric": long, "n": 2, "pearson_r": None, "note": "only 2 points (at least 3 needed)"}
            ],
            "points": {
                "system": {
                    long: {
                        "systems": ["left-run@1", "right-run@2"],
                        "human": [40.0, 70.0],
                        "metric": [1.0, 3.0],
                    }
                }
            },
        }
    }
    figure = figures_tests.metric_scatter_figure(results, long, "system")
    trace, layout = figure["data"][0], figure["layout"]
    assert trace["textposition"] == ["top right", "top left"] and trace["cliponaxis"] is False
    low, high = layout["xaxis"]["range"]
    assert low < 1.0 and high > 3.0  # room for the markers and labels at both ends
    title = layout["title"]["text"]
    assert "<br>" in title and "r, ρ, τ need at least 3 conditions (has 2)" in title
    assert "None" not in title and "nan" not in title


def test_the_availability_minimum_of_correlation_points_is_the_correlation_modules():
    assert availability.MIN_CORRELATION_POINTS == correlation.MIN_POINTS


def test_plural_says_one_flag_and_two_flags():
    assert availability.plural(1, "flag") == "1 flag" and availability.plural(2, "flag") == "2 flags"
    assert availability.plural(0, "stimulus", "stimuli") == "0 stimuli"


@pytest.mark.parametrize("kind", ["ab", "cmos"])
def test_comparison_tests_with_0_1_and_2_listeners_show_data_or_say_what_is_missing(kind, admin_client):
    for listeners in (0, 1, 2):
        cache.clear()
        test, _ = thin_test(kind, listeners)
        results = listening_test_results(test, n_boot=50)
        avail = results_availability(results)
        assert avail["scores"]["ok"] is (listeners > 0), (listeners, avail["scores"])
        bodies = pages(admin_client, test)
        shown = {
            k: a
            for k, a in avail.items()
            if not (kind == "ab" and k in ("significance", "icc", "mixed_model"))
        }
        assert_states_shown(shown, bodies)
        for key, figure in page_figures(bodies["page"]).items():
            assert any(len(t.get("x") or t.get("y") or t.get("z") or []) for t in figure["data"]), (
                listeners,
                key,
            )
        if kind == "ab":
            assert "not shown: AB" not in visible_text(bodies["page"])


def test_a_run_chart_with_one_checkpoint_names_its_step_and_says_a_trend_needs_two():
    from evalsite.analysis.figures_runs import metric_figure

    series = {
        "spec_key": "k",
        "params_hash": "p",
        "steps": [77777],
        "values": [3.4],
        "ci_low": [None],
        "ci_high": [None],
        "label": "pesq",
        "n": [20],
        "best": None,
    }
    metric = {"name": "pesq", "higher_is_better": True, "series": [series], "best": None}
    layout = metric_figure(metric)["layout"]
    assert layout["xaxis"]["tickvals"] == [77777] and layout["xaxis"]["ticktext"] == ["77777"]
    assert "a trend needs at least 2" in layout["title"]["text"]
    two = metric_figure(
        {
            **metric,
            "series": [
                {
                    **series,
                    "steps": [1, 2],
                    "values": [1.0, 2.0],
                    "n": [20, 20],
                    "ci_low": [None] * 2,
                    "ci_high": [None] * 2,
                }
            ],
        }
    )
    assert "tickvals" not in two["layout"]["xaxis"] and "trend" not in two["layout"]["title"]["text"]
