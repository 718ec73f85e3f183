"""The methods papers report on a test's results, page and report: CrowdMOS intervals, the Friedman test, the
Holm/Hochberg choice (and its abuse case) and Bradley–Terry scores of an AB test."""

import uuid

import numpy as np
import pytest
from django.core.cache import cache
from statsmodels.stats.multitest import multipletests

from evalsite.analysis import compute
from evalsite.analysis.figures_tests import page_figures, significance_figure
from evalsite.analysis.snapshots import listening_test_results
from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.listening.selectors import listener_state
from tests.analysis.test_analysis_test_pages import GOOD, SECOND, mushra  # noqa: F401 (fixture)
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def mushra_world(request):
    """The MUSHRA test of the results-page tests (imported fixture ``mushra``)."""
    return request.getfixturevalue("mushra")


def test_mushra_results_carry_crowdmos_intervals_friedman_and_both_corrections(mushra_world):
    r = listening_test_results(mushra_world["test"], n_boot=200)
    assert r["version"] == compute.RESULTS_VERSION == 6
    for row in r["scores"]["kept"]:
        assert row["crowdmos_low"] < row["mean"] < row["crowdmos_high"] and row["crowdmos_se"] > 0
    assert "CrowdMOS (Ribeiro et al. 2011)" in r["scores"]["method"]
    friedman = r["friedman"]
    assert friedman["df"] == 4 and friedman["blocks"] > 0 and friedman["p"] < 1e-6
    assert 0 < friedman["kendall_w"] <= 1
    rows = r["pairwise"]["rows"]
    raw = [row["p"] for row in rows]
    np.testing.assert_allclose(
        [row["p_hochberg"] for row in rows], multipletests(raw, method="simes-hochberg")[1]
    )
    assert r["pairwise"]["corrections"] == ["holm", "hochberg"] and r["pairwise"]["correction"] == "holm"
    read = compute.pairwise_for_correction(r["pairwise"], "hochberg")
    assert [row["significant"] for row in read["rows"]] == [row["p_hochberg"] < 0.05 for row in rows]
    assert read["matrix"]["p_adjusted"] == r["pairwise"]["matrix"]["p_hochberg"]
    with pytest.raises(ValueError, match="correction must be one of"):
        compute.pairwise_for_correction(r["pairwise"], "fdr")
    title = significance_figure({**r, "pairwise": read})["layout"]["title"]["text"]
    assert "Hochberg-corrected" in title


def test_the_page_and_report_show_the_new_numbers_and_switch_the_correction(mushra_world, admin_client):
    test = mushra_world["test"]
    url = f"/analysis/tests/{test.pk}/"
    html = admin_client.get(url).content.decode()
    for marker in ("95% CrowdMOS CI", 'data-testid="crowdmos"', 'data-testid="friedman"', "Kendall's W"):
        assert marker in html, marker
    assert '<option value="holm" selected>' in html and "p (Holm)" in html
    hochberg = admin_client.get(url, {"correction": "hochberg"}).content.decode()
    assert '<option value="hochberg" selected>' in hochberg and "p (Hochberg)" in hochberg
    assert "Hochberg over all pairs" in hochberg and "Holm over all pairs" not in hochberg
    report = admin_client.get(f"{url}report.html", {"correction": "hochberg"}).content.decode()
    assert "correction for multiple comparisons: Hochberg (step-up)" in report and "95% CrowdMOS CI" in report
    assert 'data-testid="friedman"' in report
    assert "Holm (step-down)" in admin_client.get(f"{url}report.html").content.decode()


@pytest.mark.parametrize("value", ["bonferroni", "HOLM", "", "holm'><script>", "h" * 5000])
def test_an_unknown_correction_is_refused_with_a_400_that_names_the_choices(
    mushra_world, admin_client, client, value
):
    test = mushra_world["test"]
    for path in (f"/analysis/tests/{test.pk}/", f"/analysis/tests/{test.pk}/report.html"):
        response = admin_client.get(path, {"correction": value})
        assert response.status_code == 400
        assert response.content.decode() == "correction must be one of: holm, hochberg"
        # A stranger still goes to the login page, and a researcher of no run of this test gets "not found".
        assert client.get(path, {"correction": value}).status_code == 302
    assert admin_client.get("/analysis/tests/999999/", {"correction": value}).status_code == 404


def ab_test(prefer_good):
    """An AB test (2 systems, 4 items) answered by 4 listeners; prefer_good(k, j) says whether listener k
    prefers GOOD on item j."""
    world = listening_world(n_items=4)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="ab-bt", kind="ab", checkpoints=world["checkpoints"], seed=5, training_items=0
        )
    )
    for k in range(4):
        p = services.participant_join(test=test)
        for trial in listener_state(p)["trials"]:
            a, b = trial["stimuli"]
            handle = StimulusHandle.objects.select_related(
                "stimulus__condition", "stimulus__trial__item"
            ).get(token=a["id"])
            first, j = handle.stimulus.condition, int(handle.stimulus.trial.item.key[3:])
            good_is_a = first.label == GOOD
            choice = a["id"] if good_is_a == prefer_good(k, j) else b["id"]
            services.rating_submit(
                participant=p, trial=trial["id"], stimulus=b["id"], score=choice, request_id=uuid.uuid4().hex
            )
            services.trial_complete(participant=p, trial=trial["id"])
    return test


def test_an_ab_test_gets_bradley_terry_scores_with_intervals_on_the_page_and_in_the_report(admin_client):
    test = ab_test(lambda k, j: not (k == 0 and j < 3))  # GOOD preferred in 13 of 16 answers
    r = listening_test_results(test, n_boot=100)
    bt = r["preference"]["bradley_terry"]
    assert bt["ok"] and [row["system"] for row in bt["rows"]] == [GOOD, SECOND]
    good, second = bt["rows"]
    assert good["wins"] == 13 and second["wins"] == 3
    assert good["score"] - second["score"] == pytest.approx(np.log(13 / 3))
    assert good["ci_low"] < good["score"] < good["ci_high"]
    assert "fig_bradley_terry" in page_figures(r)
    page = admin_client.get(f"/analysis/tests/{test.pk}/").content.decode()
    assert 'data-testid="bradley-terry"' in page and 'id="fig_bradley_terry"' in page
    report = admin_client.get(f"/analysis/tests/{test.pk}/report.html").content.decode()
    assert 'data-testid="bradley-terry"' in report


def test_an_ab_test_where_one_system_always_wins_says_why_there_are_no_bradley_terry_scores(admin_client):
    test = ab_test(lambda k, j: True)
    bt = listening_test_results(test, n_boot=100)["preference"]["bradley_terry"]
    assert not bt["ok"] and "never lost to (or never beat)" in bt["reason"]
    page = admin_client.get(f"/analysis/tests/{test.pk}/").content.decode()
    assert "Bradley–Terry scores not estimated: no maximum-likelihood estimate" in page
