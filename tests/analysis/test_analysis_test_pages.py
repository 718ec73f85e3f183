"""A listening test's analysis: results dict, researcher page, exports, report and API (SQLite, service calls)."""

import io
import uuid

import pandas as pd
import pyarrow.parquet as pq
import pytest
from django.core.cache import cache

from evalsite.analysis import compute, exports, flag_summary, frames, metric_correlations, plain, snapshots
from evalsite.analysis.models import AnalysisSnapshot
from evalsite.analysis.snapshots import listening_test_results
from evalsite.analysis.stats import crossed_mixed_model
from evalsite.listening import services
from evalsite.listening.models import Assignment, Condition, Participant, Rating, StimulusHandle
from evalsite.listening.selectors import headphone_trials, listener_state
from evalsite.scoring.models import MetricResult
from metrics.jsonable import jsonable
from tests.factories import hear, listening_world, make_listening_test

pytestmark = pytest.mark.django_db

GOOD, SECOND = "hifigan-secret-run@77777", "evagan-hidden-run@77777"


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


def answer(participant, score_of, flags_of=lambda stimulus, item, training: []):
    """Drive one listener through every trial: score_of(stimulus, item key, training) → score; flags_of(...) →
    [(start, end, category)] flagged on that sound."""
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            handle = StimulusHandle.objects.select_related(
                "stimulus__condition", "stimulus__trial__item"
            ).get(token=stim["id"])
            stimulus = handle.stimulus
            item, training = stimulus.trial.item.key, trial["training"]
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score_of(stimulus, item, training),
                request_id=uuid.uuid4().hex,
            )
            for start, end, category in flags_of(stimulus, item, training):
                services.flag_submit(
                    participant=participant,
                    trial=trial["id"],
                    stimulus=stim["id"],
                    start=start,
                    end=end,
                    category=category,
                    request_id=uuid.uuid4().hex,
                )
        services.trial_complete(participant=participant, trial=trial["id"])


def pass_headphone_check(participant, *, passed=True):
    hear(participant)
    services.calibration_confirm(participant=participant, plays=1)
    right = [t["answer"] for t in headphone_trials(participant)]
    answers = right if passed else [1 + (a % 3) for a in right]
    return services.headphone_check_submit(participant=participant, answers=answers)


def mushra_score(k: int, bad: bool = False):
    """Listener k's planted MUSHRA answers; the bad listener rates the hidden reference low."""

    def score_of(stimulus, item, training):
        j = int(item[3:])
        role, label = stimulus.condition.role, stimulus.condition.label
        if bad:
            low = {"hidden_reference": 35, "anchor_lp35": 60, "anchor_lp70": 70}
            return low.get(role, 90 if label == SECOND else 40)
        if role == Condition.Role.HIDDEN_REFERENCE:
            return 100 - (k + j) % 3
        if role == Condition.Role.ANCHOR_LP35:
            return 12 + (3 * k + 5 * j) % 10
        if role == Condition.Role.ANCHOR_LP70:
            return 40 + (7 * k + 3 * j) % 15
        return (78 if label == GOOD else 55) + (2 * k + 3 * j) % 9

    return score_of


def false_flag_on_a_reference(stimulus, item, training):
    return [(0.5, 0.6, "noise")] if stimulus.condition.role == "hidden_reference" and item == "utt3" else []


def click_on_second_system(stimulus, item, training):
    if not training and item == "utt2" and stimulus.condition.label == SECOND:
        return [(0.2, 0.45, "click")]
    return []


@pytest.fixture
def mushra():
    """A MUSHRA test (2 systems + hidden reference + 2 anchors, 5 items) with 6 good listeners, one who rates
    the hidden reference low, one screened out by the headphone check; 4 listeners flag a click; metrics stored."""
    world = listening_world(n_items=6)
    test = make_listening_test(
        name="mushra-analysis", kind="mushra", checkpoints=world["checkpoints"], seed=7, headphone_check=True
    )
    test = services.listening_test_publish(test=test)
    listeners = []
    for k in range(6):
        p = pass_headphone_check(services.participant_join(test=test, external_id=f"worker-{k}"))
        flags = (
            click_on_second_system if k < 4 else false_flag_on_a_reference if k == 5 else (lambda s, i, t: [])
        )
        answer(p, mushra_score(k), flags)
        listeners.append(p)
    bad = pass_headphone_check(services.participant_join(test=test, external_id="worker-bad"))
    answer(bad, mushra_score(0, bad=True))
    deaf = pass_headphone_check(services.participant_join(test=test, external_id="worker-deaf"), passed=False)
    for ckpt, value in zip(world["checkpoints"], (3.4, 2.1)):
        MetricResult.objects.create(
            checkpoint=ckpt,
            params_hash="p",
            name="pesq",
            status="done",
            value=value,
            higher_is_better=True,
            spec_key="k",
            per_item={f"utt{j}": value + 0.1 * j for j in range(6)},
        )
    return {"test": test, "world": world, "good": listeners, "bad": bad, "deaf": deaf}


def excluded_by(results):
    return {e["listener"]: e for e in results["screening"]["excluded"]}


def by_system(rows):
    return {r["system"]: r for r in rows}


def test_the_listener_who_rates_the_hidden_reference_low_is_excluded_with_the_bs1534_reason(mushra):
    test = mushra["test"]
    r = listening_test_results(test, n_boot=200)
    excluded = excluded_by(r)
    bad = excluded[plain.listener_id(test.pk, mushra["bad"].pk)]
    assert "bs1534_reference" in bad["rules"] and bad["ratings"] == 25
    assert "rated the hidden reference below 90 on 5 of 5 items (100 % > 15 %)" in bad["reasons"]
    deaf = excluded[plain.listener_id(test.pk, mushra["deaf"].pk)]
    assert deaf["rules"] == ["headphone_check"] and deaf["ratings"] == 0
    assert deaf["reasons"][0].startswith("failed the headphone check: 0 of 6")
    assert set(excluded) == {bad["listener"], deaf["listener"]}  # the six good listeners are all kept
    assert any("BS.1534-3 §4.1.2" in t for t in r["screening"]["rules_text"])
    assert r["counts"]["listeners"] == 7 and r["counts"]["listeners_kept"] == 6
    counts = r["counts"]
    assert (counts["ratings"], counts["ratings_kept"], counts["screened_out_before_rating"]) == (175, 150, 1)
    # Every score is shown with and without the exclusions, and they differ where the bad listener disagreed.
    kept, every = by_system(r["scores"]["kept"]), by_system(r["scores"]["all"])
    assert kept[GOOD]["n"] == 30 and every[GOOD]["n"] == 35
    assert kept[GOOD]["mean"] > every[GOOD]["mean"] and kept[SECOND]["mean"] < every[SECOND]["mean"]
    assert kept["Hidden Reference"]["mean"] > 97 > every["Hidden Reference"]["mean"]
    for row in kept.values():
        assert (
            row["ci_low"] <= row["mean"] <= row["ci_high"]
            and row["boot_low"] <= row["mean"] <= row["boot_high"]
        )
        assert row["box_q1"] <= row["box_median"] <= row["box_q3"]


def test_the_results_hold_significance_mixed_model_reliability_and_metric_correlations(mushra):
    import json

    r = listening_test_results(mushra["test"], n_boot=200)
    json.dumps(r, allow_nan=False)  # JSON-ready: NaN became null
    assert set(r) >= {
        "test",
        "design",
        "participants",
        "counts",
        "screening",
        "scores",
        "pairwise",
        "mixed_model",
        "reliability",
        "flags",
        "correlations",
        "software",
        "fingerprint",
        "cache_hit",
    }
    matrix = r["pairwise"]["matrix"]
    a, b = matrix["systems"].index(GOOD), matrix["systems"].index(SECOND)
    assert matrix["significant"][a][b] and matrix["mean_diff"][a][b] == pytest.approx(23.0)
    assert r["pairwise"]["correction"] == "holm" and len(r["pairwise"]["rows"]) == 10
    model = r["mixed_model"]
    assert model["ok"] and model["baseline"] == SECOND and model["n"] == 150
    assert by_system(model["effects"])[GOOD]["estimate"] == pytest.approx(23.0, abs=1e-6)
    rel = r["reliability"]["ratings"]
    assert rel["primary_level"] == "interval" and rel["alpha_primary"] > 0.9
    assert {row["shrout_fleiss"] for row in rel["icc"]} >= {"ICC(2,1)", "ICC(3,1)"}
    assert {row["mcgraw_wong"] for row in rel["icc"]} >= {"ICC(A,1)", "ICC(C,1)"}
    flags = r["reliability"]["flags"]
    assert set(flags) >= {"percent_agreement", "fleiss_kappa", "gwet_ac1", "alpha_nominal"}
    corr = {(c["metric"], c["level"]): c for c in r["correlations"]["system"] + r["correlations"]["item"]}
    assert (
        corr[("pesq", "system")]["n"] == 2 and corr[("pesq", "system")]["pearson_r"] is None
    )  # 2 points: undefined
    assert corr[("pesq", "item")]["n"] == 10 and corr[("pesq", "item")]["spearman_rho"] is not None
    assert r["design"]["stimuli_per_trial"] == {"min": 5, "max": 5} and r["design"]["items"] == 5
    assert r["participants"]["headphone"] == {"passed": 7, "failed": 1, "not_taken": 0}


def test_flag_shares_are_tested_against_the_false_flag_rate_of_hidden_references_and_merged_into_regions(
    mushra,
):
    r = listening_test_results(mushra["test"], n_boot=200)
    flags = r["flags"]
    assert flags["baseline"]["measured"] and flags["baseline"]["source"].startswith(
        "hidden_reference (1 of 30"
    )
    top = flags["stimuli"][0]
    assert (top["item"], top["system"], top["flagged"], top["heard"]) == ("utt2", SECOND, 4, 6) and top[
        "significant"
    ]
    (region,) = flags["regions"]
    assert (region["item"], region["system"], region["n_listeners"], region["heard"]) == (
        "utt2",
        SECOND,
        4,
        6,
    )
    assert region["start_s"] == pytest.approx(0.2) and region["end_s"] == pytest.approx(0.45)
    assert region["categories"] == {"click": 4} and region["peak_share"] == pytest.approx(4 / 6)
    timeline = flags["timelines"][0]
    assert timeline["stimulus"] == top["stimulus"] and max(timeline["density"]) == pytest.approx(
        4 / 6, abs=1e-4
    )
    assert len(timeline["times"]) == len(timeline["density"]) == 20


def test_a_smos_test_screens_a_failed_gold_question_and_uses_ordinal_alpha_and_an_assumed_false_flag_rate():
    world = listening_world(n_items=6)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="smos-analysis", kind="smos", checkpoints=world["checkpoints"], seed=11, gold_items=1
        )
    )

    def smos(k, fail_gold=False):
        def score_of(stimulus, item, training):
            if stimulus.expected:
                return 3 if fail_gold else stimulus.expected["min"]
            j = int(item[3:])
            return (5 - (k + j) % 2) if stimulus.condition.label == GOOD else (2 + (k + j) % 2)

        return score_of

    people = [services.participant_join(test=test) for _ in range(5)]
    for k, p in enumerate(people):
        answer(
            p,
            smos(k, fail_gold=k == 4),
            lambda s, i, t: [(0.1, 0.3, "buzz")] if s.condition.label == SECOND and i == "utt1" else [],
        )
    r = listening_test_results(test, n_boot=200)
    (gold,) = r["screening"]["excluded"]
    assert gold["listener"] == plain.listener_id(test.pk, people[4].pk)
    assert gold["rules"] == ["qc_gold"] and gold["reasons"] == [
        "failed 1 of 1 gold questions (more than 0 allowed)"
    ]
    assert r["reliability"]["ratings"]["primary_level"] == "ordinal"
    assert set(r["reliability"]["ratings"]["alpha"]) == {"ordinal", "interval"}
    assert not r["flags"]["baseline"]["measured"] and r["flags"]["baseline"]["rate"] == 0.05
    assert by_system(r["scores"]["kept"])[GOOD]["mean"] > by_system(r["scores"]["kept"])[SECOND]["mean"]
    assert r["flags"]["regions"][0]["n_listeners"] == 4  # the gold-failing listener's flags are excluded too


def test_the_crossed_mixed_model_matches_statsmodels_on_a_small_unbalanced_design():
    import numpy as np

    from evalsite.analysis.stats import mixed_effects

    rng = np.random.default_rng(3)
    rows = []
    for listener in range(14):
        offset = rng.normal(0, 0.6)
        for item in range(7):
            item_offset = rng.normal(0, 0.4)
            for system, mean in (("a", 3.0), ("b", 3.4), ("c", 4.1)):
                if rng.random() < 0.8:
                    rows.append(
                        (f"l{listener}", f"i{item}", system, mean + offset + item_offset + rng.normal(0, 0.7))
                    )
    ratings = pd.DataFrame(rows, columns=["listener", "item", "system", "score"])
    ours, reference = crossed_mixed_model(ratings, baseline="a"), mixed_effects(ratings, baseline="a")
    assert ours["ok"] and reference["ok"]
    assert ours["intercept"]["estimate"] == pytest.approx(reference["intercept"]["estimate"], rel=1e-4)
    for mine, theirs in zip(ours["effects"], reference["effects"]):
        assert mine["system"] == theirs["system"]
        assert mine["estimate"] == pytest.approx(theirs["estimate"], rel=1e-4, abs=1e-5)
        assert mine["se"] == pytest.approx(theirs["se"], rel=5e-3)
    for part in ("listener", "item", "residual"):
        assert ours["variance_components"][part] == pytest.approx(
            reference["variance_components"][part], rel=1e-3
        )
    assert (
        crossed_mixed_model(ratings.loc[ratings["system"] == "a"])["reason"]
        == "needs at least 2 systems; got 1"
    )


def test_results_are_cached_until_a_new_rating_arrives(mushra, django_assert_max_num_queries):
    test = mushra["test"]
    first = listening_test_results(test, n_boot=200)
    assert not first["cache_hit"]
    with django_assert_max_num_queries(6):
        again = listening_test_results(test, n_boot=200)
    assert again["cache_hit"] and again["computed_at"] == first["computed_at"]
    newcomer = pass_headphone_check(services.participant_join(test=test))
    trial = next(t for t in listener_state(newcomer)["trials"] if not t["training"])
    services.rating_submit(
        participant=newcomer,
        trial=trial["id"],
        stimulus=trial["stimuli"][0]["id"],
        score=50,
        request_id="new",
    )
    fresh = listening_test_results(test, n_boot=200)
    assert not fresh["cache_hit"] and fresh["fingerprint"] != first["fingerprint"]
    # a rating on a trial not yet finished is no vote, only an unfinished trial
    assert fresh["counts"]["ratings"] == first["counts"]["ratings"]
    assert fresh["unfinished"]["ratings"] == first["unfinished"]["ratings"] + 1
    # A changed answer (same count) and a changed status also invalidate it.
    services.rating_submit(
        participant=newcomer,
        trial=trial["id"],
        stimulus=trial["stimuli"][0]["id"],
        score=51,
        request_id="changed",
    )
    assert not listening_test_results(test, n_boot=200)["cache_hit"]
    Participant.objects.filter(pk=newcomer.pk).update(status=Participant.Status.SCREENED_OUT)
    assert not listening_test_results(test, n_boot=200)["cache_hit"]


def test_the_page_renders_for_a_researcher_and_sends_strangers_and_listeners_to_login(
    mushra, client, admin_client
):
    test = mushra["test"]
    url = f"/analysis/tests/{test.pk}/"
    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    for marker in (
        'id="fig_scores"',
        'id="fig_significance"',
        'data-testid="icc"',
        'data-testid="screening"',
        'class="play-region"',
        'id="fig_metric_item_0"',
        "worker-bad",
        "bs1534_reference",
        "Gwet's AC1",
        "/static/vendor/plotly/plotly-cartesian.min.js",
    ):
        assert marker in html, marker
    assert 'data-start="0.200" data-end="0.450"' in html and '<audio id="audio-' in html
    assert "total;dur=" in page["Server-Timing"]
    for path in (url, f"{url}report.html", f"{url}export/ratings.csv"):
        response = client.get(path)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    # A listener's browser (signed session cookie of the listening pages) is a stranger here.
    joined = client.post(f"/l/i/{test.invite_token}/")
    assert joined.status_code == 302 and "/l/p/" in joined["Location"]
    assert client.get(joined["Location"]).status_code == 200 and client.cookies
    response = client.get(url)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert f"/analysis/tests/{test.pk}/" in admin_client.get(f"/listening/{test.pk}/").content.decode()


def test_a_test_without_answers_says_so_on_the_page_and_in_the_report(admin_client):
    world = listening_world(n_items=3)
    test = make_listening_test(name="empty", kind="mos", checkpoints=world["checkpoints"])
    page = admin_client.get(f"/analysis/tests/{test.pk}/")
    assert page.status_code == 200 and 'data-testid="no-ratings"' in page.content.decode()
    assert "No ratings yet" in page.content.decode()
    report = admin_client.get(f"/analysis/tests/{test.pk}/report.html")
    assert report.status_code == 200 and "No ratings yet" in report.content.decode()
    for table in ("ratings", "flags", "metrics", "screening"):
        assert admin_client.get(f"/analysis/tests/{test.pk}/export/{table}.csv").status_code == 200
    assert admin_client.get(f"/analysis/tests/{test.pk}/export/votes.csv").status_code == 404


def test_a_test_whose_listeners_have_joined_but_not_finished_has_results_and_a_page(admin_client):
    """Found by the access matrix: no completion time yet (all None) next to aware consent times was a 500."""
    world = listening_world(n_items=2)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="just-started", kind="mushra", checkpoints=world["checkpoints"], training_items=0
        )
    )
    services.participant_join(test=test)
    services.participant_join(test=test)
    results = listening_test_results(test)
    assert results["participants"]["total"] == 2 and results["participants"]["median_session_minutes"] is None
    assert admin_client.get(f"/analysis/tests/{test.pk}/").status_code == 200


def test_exports_parse_back_with_the_right_rows(mushra, admin_client):
    test = mushra["test"]
    base = f"/analysis/tests/{test.pk}/export/"
    bad = plain.listener_id(test.pk, mushra["bad"].pk)
    for fmt in ("csv", "parquet"):

        def read(table):
            response = admin_client.get(f"{base}{table}.{fmt}")
            assert response.status_code == 200 and f"{table}.{fmt}" in response["Content-Disposition"]
            if fmt == "csv":
                return pd.read_csv(io.BytesIO(response.content))
            return pq.read_table(io.BytesIO(response.content)).to_pandas()

        ratings = read("ratings")
        assert len(ratings) == 7 * 30  # 7 listeners × (5 main + 1 training trial) × 5 sounds
        main = ratings.loc[ratings["trial_type"] == "main"]
        assert len(main) == 175 and ratings.loc[ratings["trial_type"] == "training", "excluded"].all()
        assert set(main.loc[main["excluded"], "participant"]) == {bad}
        assert (
            main.loc[main["participant"] == bad, "exclusion_reason"]
            .str.contains("hidden reference below 90")
            .all()
        )
        good = main.loc[main["condition"] == GOOD]
        assert set(good["run"]) == {"hifigan-secret-run"} and set(good["step"]) == {77777}
        assert set(main["role"]) == {"system", "hidden_reference", "anchor_lp35", "anchor_lp70"}
        assert not ratings["participant"].isin([p.token for p in mushra["good"]]).any()
        flags = read("flags")
        assert len(flags) == 5 and (flags["category"] == "click").sum() == 4
        metrics = read("metrics")
        assert len(metrics) == 2 + 2 * 6 and set(metrics["level"]) == {"system", "item"}
        screening = read("screening")
        excluded = screening.loc[screening["decision"] == "excluded"]
        assert set(excluded["participant"]) == {bad, plain.listener_id(test.pk, mushra["deaf"].pk)}
        assert (screening["decision"] == "kept").sum() == 6


def test_the_report_has_the_sections_bs1534_and_p808_ask_for(mushra, admin_client):
    html = admin_client.get(f"/analysis/tests/{mushra['test'].pk}/report.html").content.decode()
    for marker in (
        "1. Listeners",
        "Recruitment",
        "antiphase",
        "2. Post-screening and exclusions",
        "BS.1534-3 §4.1.2",
        "rated the hidden reference below 90",
        "3. Test design",
        "Hidden reference",
        "3.5 kHz low-pass",
        "randomisation",
        "training",
        "4. Scores",
        "95% t CI",
        "95% bootstrap CI",
        "<svg",
        "With all listeners",
        "5. Statistics",
        "Holm",
        "mixed-effects",
        "6. Reliability",
        "Krippendorff",
        "McGraw",
        "7. Artifact flags",
        "8. Objective metrics",
        "9. Software",
        "BS.1534-3 §10",
        "P.808",
    ):
        assert marker in html, marker
    assert "<script" not in html and "stylesheet" not in html  # self-contained


def test_the_api_returns_the_same_numbers_to_a_researcher_and_nothing_to_another_run(mushra):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from evalsite.api.services import researcher_token_issue
    from evalsite.runs.models import Run
    from evalsite.runs.services import run_create

    test = mushra["test"]
    user = get_user_model().objects.create_user("ada", password="x")
    Run.objects.filter(pk__in=[c.run_id for c in mushra["world"]["checkpoints"]]).update(owner=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {researcher_token_issue(user=user)}")
    response = client.get(f"/api/v1/listening-tests/{test.pk}/results/")
    assert response.status_code == 200
    body, direct = response.json(), listening_test_results(test)
    assert body["cache_hit"] is False and direct["cache_hit"] is True
    for key in (
        "scores",
        "pairwise",
        "mixed_model",
        "screening",
        "reliability",
        "flags",
        "correlations",
        "counts",
    ):
        assert body[key] == direct[key], key
    _, other = run_create(name="other", kind="vocoder", model_family="hifigan")
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION=f"Bearer {other}")
    assert stranger.get(f"/api/v1/listening-tests/{test.pk}/results/").status_code == 404


def test_figures_are_built_from_the_results_alone(mushra):
    from evalsite.analysis import figures_tests

    r = listening_test_results(mushra["test"], n_boot=200)
    figures = figures_tests.page_figures(r)
    assert {
        "fig_scores",
        "fig_exclusions",
        "fig_significance",
        "fig_flag_systems",
        "fig_timeline_0",
        "fig_metric_system_0",
        "fig_metric_item_0",
    } <= set(figures)
    boxes = [t for t in figures["fig_scores"]["data"] if t["type"] == "box"]
    assert len(boxes) == 5 and all(t["q1"][0] <= t["median"][0] <= t["q3"][0] for t in boxes)
    (shape,) = figures["fig_timeline_0"]["layout"]["shapes"]
    assert (shape["x0"], shape["x1"]) == pytest.approx((0.2, 0.45))
    assert "r " in figures["fig_metric_item_0"]["layout"]["title"]["text"]
    assert "n 10" in figures["fig_metric_item_0"]["layout"]["title"]["text"]
    assert figures_tests.scores_svg(r).startswith("<svg")
    assert figures_tests.page_figures({"test": {"kind": "mos"}}) == {}


def test_the_frames_equal_a_plain_orm_read_and_the_page_system_flag_rates_equal_the_pure_function(mushra):
    from evalsite.analysis import flags
    from evalsite.listening.models import Rating

    test = mushra["test"]
    ratings, presented = frames.answer_frames(test)
    main = {
        "assignment__trial__is_training": False,
        "assignment__trial__control": "",
        "assignment__completed_at__isnull": False,
    }
    plain_ratings = pd.DataFrame.from_records(
        list(
            Rating.objects.filter(participant__test=test, is_training=False, **main).values_list(
                "participant_id",
                "assignment__trial__item__key",
                "stimulus__condition__label",
                "stimulus__condition__role",
                "score",
                "stimulus__condition__checkpoint_id",
                "stimulus__condition__checkpoint__step",
            )
        ),
        columns=["listener", "item", "system", "role", "score", "checkpoint", "step"],
    )
    plain_presented = pd.DataFrame.from_records(
        list(
            StimulusHandle.objects.filter(assignment__participant__test=test, **main).values_list(
                "assignment__participant_id",
                "stimulus_id",
                "stimulus__trial__item__key",
                "stimulus__condition__label",
                "stimulus__condition__role",
                "stimulus__asset__duration_s",
            )
        ),
        columns=["listener", "stimulus", "item", "system", "role", "duration_s"],
    )

    def same(a, b):
        key = list(b.columns)
        a = a[key].sort_values(key[:3]).reset_index(drop=True).astype(object).where(a[key].notna(), None)
        b = b.sort_values(key[:3]).reset_index(drop=True).astype(object).where(b.notna(), None)
        return a.equals(b)

    assert len(ratings) == 175 and same(ratings, plain_ratings) and same(frames.ratings_frame(test), ratings)
    assert len(presented) == 7 * 25 and same(presented, plain_presented)  # the deaf listener rated nothing
    flag_frame = frames.flags_frame(test)
    theirs = flags.system_flag_rates(flag_frame, presented).set_index(["system", "role"]).sort_index()
    pres = flags.presentation_flags(flag_frame, presented)
    ours = flag_summary.system_flag_rates(flags.stimulus_flag_rates(pres), pres)
    ours = ours.set_index(["system", "role"]).sort_index()[theirs.columns]
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)


@pytest.mark.parametrize("kind", ["cmos", "ab"])
def test_comparison_tests_get_relative_scores_or_preference_rates_and_a_page(kind, admin_client):
    import json

    world = listening_world(n_items=4)
    test = services.listening_test_publish(
        test=make_listening_test(
            name=f"{kind}-analysis", kind=kind, checkpoints=world["checkpoints"], seed=5, training_items=0
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
            if kind == "cmos":  # each system is better than the reference recording, GOOD more so
                system = (
                    first
                    if first.role == "system"
                    else StimulusHandle.objects.get(token=b["id"]).stimulus.condition
                )
                better = (2 if system.label == GOOD else 0) + (k + j) % 2
                score = -better if first.role == "system" else better
            else:  # GOOD is preferred
                score = a["id"] if first.label == GOOD else b["id"]
            services.rating_submit(
                participant=p, trial=trial["id"], stimulus=b["id"], score=score, request_id=uuid.uuid4().hex
            )
            services.trial_complete(participant=p, trial=trial["id"])
    r = listening_test_results(test, n_boot=100)
    json.dumps(r, allow_nan=False)
    if kind == "cmos":
        rows = by_system(r["scores"]["kept"])
        assert set(rows) == {GOOD, SECOND} and rows[GOOD]["comparison"] == "reference recording"
        assert rows[GOOD]["mean"] == pytest.approx(2.5) and rows[SECOND]["mean"] == pytest.approx(0.5)
        assert r["pairwise"]["rows"][0]["system_b"] == "reference recording" and r["mixed_model"]["ok"]
    else:
        (pair,) = r["preference"]["kept"]
        assert pair["system_a"] == SECOND and pair["preference_rate"] == 0.0 and pair["losses"] == 16
        assert r["reliability"]["ratings"]["primary_level"] == "nominal"
    page = admin_client.get(f"/analysis/tests/{test.pk}/")
    assert page.status_code == 200
    assert admin_client.get(f"/analysis/tests/{test.pk}/report.html").status_code == 200
    ratings = pd.read_csv(
        io.BytesIO(admin_client.get(f"/analysis/tests/{test.pk}/export/ratings.csv").content)
    )
    assert (
        len(ratings) == (32 if kind == "cmos" else 16)
        and ("cmos" if kind == "cmos" else "preferred") in ratings
    )
    if kind == "cmos":
        assert (ratings["cmos"] >= 0).all() and set(ratings["cmos_system"]) == {GOOD, SECOND}
        assert ratings.groupby("cmos_system")["cmos"].mean().to_dict() == {GOOD: 2.5, SECOND: 0.5}
    else:
        assert set(ratings["preferred"]) == {GOOD}


def test_the_timeline_density_equals_flag_density_with_overlapping_and_point_flags():
    from evalsite.analysis.flags import flag_density

    flags = pd.DataFrame(
        {
            "listener": ["a", "a", "b", "c", "c"],
            "stimulus": "s",
            "start_s": [0.1, 0.2, 0.3, 0.5, 0.9],
            "end_s": [0.4, 0.25, 0.3, 0.95, 1.0],
            "category": "click",
        }
    )
    presented = pd.DataFrame(
        {
            "listener": list("abcd"),
            "stimulus": "s",
            "item": "i",
            "system": "x",
            "role": "system",
            "duration_s": 1.0,
        }
    )
    for resolution in (0.01, 0.05, 0.3):
        times, shares = flag_summary.flag_density_of(flags, 4, 1.0, resolution)
        expected_times, expected = flag_density(flags, presented, "s", resolution_s=resolution)
        assert times == pytest.approx(expected_times) and shares == pytest.approx(expected)


# --- stored snapshots ---------------------------------------------------------------------------------------------


def add_rating(test, request_id="new"):
    newcomer = pass_headphone_check(services.participant_join(test=test))
    trial = next(t for t in listener_state(newcomer)["trials"] if not t["training"])
    services.rating_submit(
        participant=newcomer,
        trial=trial["id"],
        stimulus=trial["stimuli"][0]["id"],
        score=50,
        request_id=request_id,
    )


def no_computation(*args, **kwargs):
    raise AssertionError("the results were computed again")


def test_another_process_reads_the_stored_snapshot_instead_of_computing(
    mushra, monkeypatch, django_assert_max_num_queries
):
    test = mushra["test"]
    first = listening_test_results(test, n_boot=200)
    assert first["source"] == "computed" and AnalysisSnapshot.objects.filter(test=test).count() == 1
    cache.clear()  # a web process that has not seen this test: its local-memory cache is empty
    monkeypatch.setattr(snapshots, "compute_listening_test_results", no_computation)
    with django_assert_max_num_queries(6):
        again = listening_test_results(test, n_boot=200)
    assert again["source"] == "snapshot" and again["cache_hit"]
    for key in set(first) - {"source", "cache_hit", "timings"}:
        assert again[key] == first[key], key
    assert listening_test_results(test, n_boot=200)["source"] == "cache"


def test_a_new_rating_invalidates_the_snapshot_and_the_older_one_is_deleted(mushra):
    test = mushra["test"]
    first = listening_test_results(test, n_boot=200)
    add_rating(test)
    cache.clear()
    fresh = listening_test_results(test, n_boot=200)
    assert fresh["source"] == "computed" and fresh["fingerprint"] != first["fingerprint"]
    assert fresh["unfinished"]["ratings"] == first["unfinished"]["ratings"] + 1
    assert list(AnalysisSnapshot.objects.filter(test=test).values_list("fingerprint", flat=True)) == [
        fresh["fingerprint"]
    ]


def test_storing_the_same_inputs_twice_updates_the_row_and_an_older_computation_does_not_delete_a_newer_one(
    mushra,
):
    from datetime import timedelta

    from django.utils import timezone

    test, now = mushra["test"], timezone.now()
    store = snapshots.analysis_snapshot_store
    store(test=test, fingerprint="new", n_boot=10, data={"x": 1}, computed_at=now, duration_s=0.5)
    store(
        test=test, fingerprint="new", n_boot=10, data={"x": 2}, computed_at=now, duration_s=0.4
    )  # no IntegrityError
    store(
        test=test,
        fingerprint="old",
        n_boot=10,
        data={"x": 0},
        computed_at=now - timedelta(seconds=5),
        duration_s=0.1,
    )  # a slower computation of older inputs finishing last
    rows = dict(AnalysisSnapshot.objects.filter(test=test, n_boot=10).values_list("fingerprint", "data"))
    assert rows == {"new": {"x": 2}, "old": {"x": 0}}
    store(
        test=test,
        fingerprint="newer",
        n_boot=10,
        data={"x": 3},
        computed_at=now + timedelta(seconds=1),
        duration_s=0.2,
    )
    assert set(
        AnalysisSnapshot.objects.filter(test=test, n_boot=10).values_list("fingerprint", flat=True)
    ) == {"newer"}


def test_the_refresh_task_computes_published_tests_whose_answers_changed_and_nothing_else(mushra):
    from evalsite.analysis.tasks import analysis_refresh_task

    test = mushra["test"]
    draft = make_listening_test(name="draft-analysis", kind="mos", checkpoints=mushra["world"]["checkpoints"])
    assert analysis_refresh_task.apply().get() == [test.pk]
    assert not AnalysisSnapshot.objects.filter(test=draft).exists()
    assert analysis_refresh_task.apply().get() == []  # nothing changed: nothing computed
    add_rating(test)
    assert analysis_refresh_task.apply().get() == [test.pk]
    snapshot = AnalysisSnapshot.objects.get(test=test)
    assert (
        snapshot.n_boot == compute.DEFAULT_N_BOOT
        and snapshot.fingerprint == snapshots.results_fingerprint(test)
    )
    cache.clear()
    assert listening_test_results(test)["source"] == "snapshot"  # the researcher's view finds it ready


def test_the_refresh_task_is_on_the_beat_schedule_on_the_cpu_queue():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["analysis-refresh"]
    assert entry["task"] == "evalsite.analysis.tasks.analysis_refresh_task" and entry["schedule"] == 30.0
    assert entry["options"]["queue"] == "cpu"


def test_computed_results_survive_the_json_round_trip_of_a_snapshot_unchanged(mushra):
    import json

    r = compute.compute_listening_test_results(mushra["test"], n_boot=100)
    assert json.loads(json.dumps(r, allow_nan=False)) == r


# --- the page's shortcuts equal the functions they stand for ----------------------------------------------------


def test_the_page_correlations_equal_human_metric_correlations(mushra):
    from evalsite.analysis import correlation

    test = mushra["test"]
    kept = frames.ratings_frame(test)
    metrics = frames.metrics_frame(test)
    ours = metric_correlations.metric_correlations("mushra", kept, metrics)
    human = metric_correlations.human_for_metrics("mushra", kept).assign(item=lambda f: f["item"].astype(str))
    item_rows = [(r.system, str(i), r.metric, v) for r in metrics.itertuples() for i, v in r.per_item.items()]
    item_metrics = pd.DataFrame(item_rows, columns=["system", "item", "metric", "value"])
    for level, frame in (("system", metrics[["system", "metric", "value"]]), ("item", item_metrics)):
        table = correlation.human_metric_correlations(human, frame, level=level)
        assert ours[level] == plain.records(table), level
        if level == "system":
            assert ours["method"] == table.attrs["method"]
    system_means = human.groupby("system")["score"].mean()
    for name, g in metrics.groupby("metric"):  # the scatter points as first written
        joined = g.groupby("system")["value"].mean().to_frame().join(system_means, how="inner")
        assert ours["points"]["system"][name] == jsonable(
            {
                "systems": list(joined.index),
                "human": joined["score"].to_numpy(),
                "metric": joined["value"].to_numpy(),
            }
        )
    item_means = human.groupby(["system", "item"])["score"].mean()
    for name, g in item_metrics.groupby("metric"):
        joined = g.groupby(["system", "item"])["value"].mean().to_frame().join(item_means, how="inner")
        assert ours["points"]["item"][name] == jsonable(
            {
                "systems": list(joined.index.get_level_values(0)),
                "items": list(joined.index.get_level_values(1)),
                "human": joined["score"].to_numpy(),
                "metric": joined["value"].to_numpy(),
            }
        )


def test_records_equal_jsonable_of_to_dict():
    import numpy as np

    frame = pd.DataFrame(
        {
            "listener": [3, 4, 5],
            "listeners": [[3], [4, 5], []],
            "x": [1.5, np.nan, np.inf],
            "n": [1, 2, 3],
            "ok": [True, False, True],
            "name": ["a", None, "c"],
            "when": pd.to_datetime(["2024-01-01", None, "2024-01-03"], utc=True),
            "d": [{"k": np.float64(1.0)}, {}, {"k": np.nan}],
        }
    )
    rename = lambda pk: f"L{pk}"  # noqa: E731
    expected = []
    for row in frame.to_dict("records"):
        row["listener"] = rename(row["listener"])
        row["listeners"] = [rename(v) for v in row["listeners"]]
        expected.append(row)
    assert plain.records(frame, rename) == jsonable(expected)
    mixed = pd.DataFrame([{"listener": None, "rule": "bs1534_anchor"}, {"listener": 5, "rule": "agreement"}])
    expected = [{**row, "listener": rename(row["listener"])} for row in mixed.to_dict("records")]
    assert plain.records(mixed, rename) == jsonable(expected)


# --- only completed trials are votes; too few listeners is said loudly (issue 16) ---------------------------------


def abandon_after_one_trial(test, external_id="worker-gone"):
    """A listener who finishes the training trial and one main trial, rates two sounds of the next one and leaves."""
    p = pass_headphone_check(services.participant_join(test=test, external_id=external_id))
    trials = listener_state(p)["trials"]
    main = [t for t in trials if not t["training"]]
    for trial in [t for t in trials if t["training"]] + main[:1]:
        for k, stim in enumerate(trial["stimuli"]):
            services.rating_submit(
                participant=p,
                trial=trial["id"],
                stimulus=stim["id"],
                score=40 + k,
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=p, trial=trial["id"])
    for stim in main[1]["stimuli"][:2]:
        services.rating_submit(
            participant=p, trial=main[1]["id"], stimulus=stim["id"], score=50, request_id=uuid.uuid4().hex
        )
    return p


def total_votes(progress):
    return sum(v or 0 for row in progress["rows"] for v in row["cells"])


def test_a_half_rated_trial_is_neither_a_vote_in_the_analysis_nor_in_the_progress_table(mushra, admin_client):
    from datetime import timedelta

    from django.utils import timezone

    from evalsite.listening.selectors import listening_test_progress

    test = mushra["test"]
    before, votes_before = listening_test_results(test, n_boot=0), total_votes(listening_test_progress(test))
    gone = abandon_after_one_trial(test)
    after = listening_test_results(test, n_boot=0)
    assert after["counts"]["ratings"] == before["counts"]["ratings"] + 5  # the finished trial's 5 sounds
    assert after["counts"]["listeners"] == before["counts"]["listeners"] + 1
    assert after["unfinished"] == {
        "listeners": 1,
        "trials": 1,
        "ratings": 2,
        "rows": [{"listener": plain.listener_id(test.pk, gone.pk), "trials": 1, "ratings": 2}],
    }
    ratings = frames.ratings_frame(test)
    assert len(ratings.loc[ratings["listener"] == gone.pk]) == 5
    presented = frames.presented_frame(test)
    assert len(presented.loc[presented["listener"] == gone.pk]) == 5
    export = pd.read_csv(
        io.BytesIO(admin_client.get(f"/analysis/tests/{test.pk}/export/ratings.csv").content)
    )
    mine = export.loc[
        (export["participant"] == plain.listener_id(test.pk, gone.pk)) & (export["trial_type"] == "main")
    ]
    unfinished = mine["exclusion_reason"] == exports.UNFINISHED_REASON  # the other 5 fail the BS.1534 rule
    assert len(mine) == 7 and unfinished.sum() == 2 and (mine.loc[unfinished, "score"] == 50).all()
    page = admin_client.get(f"/analysis/tests/{test.pk}/").content.decode()
    assert 'data-testid="unfinished"' in page and "1 unfinished trial of\n1 listener (2 ratings)" in page
    progress = listening_test_progress(test)
    assert total_votes(progress) == votes_before + 5 and progress["abandoned"] == []
    # three hours later the session is abandoned (no answer since): listed apart, still only 5 votes
    hours_ago = timezone.now() - timedelta(hours=3)
    Participant.objects.filter(pk=gone.pk).update(consented_at=hours_ago, updated_at=hours_ago)
    Rating.objects.filter(participant=gone).update(updated_at=hours_ago)
    Assignment.objects.filter(participant=gone, completed_at__isnull=False).update(completed_at=hours_ago)
    progress = listening_test_progress(test)
    assert [p.pk for p in progress["abandoned"]] == [gone.pk] and gone.pk not in {
        p.pk for p in progress["participants"]
    }
    assert total_votes(progress) == votes_before + 5 and progress["abandoned"][0].done == 2  # training + 1
    detail = admin_client.get(f"/listening/{test.pk}/").content.decode()
    assert "Abandoned sessions" in detail and 'data-testid="abandoned"' in detail and "worker-gone" in detail


def test_the_page_and_report_warn_loudly_when_fewer_listeners_remain_than_the_test_asks_for(
    mushra, admin_client
):
    test = mushra["test"]
    results = listening_test_results(test, n_boot=0)
    assert results["counts"]["listeners_kept"] == 6 and results["test"]["min_listeners"] == 20
    warning = (
        "6 listeners remain after screening; this test asks for at least 20: the scores below rest on too few "
        "listeners (BS.1534-3 §4.2 suggests at least 20 after post-screening)."
    )
    assert results["warnings"] == [warning]
    page = admin_client.get(f"/analysis/tests/{test.pk}/").content.decode()
    assert f'<p class="warning" role="alert" data-testid="warning">{warning}</p>' in page
    report = admin_client.get(f"/analysis/tests/{test.pk}/report.html").content.decode()
    assert 'data-testid="warning"' in report and "6 listeners remain after screening" in report
    test.min_listeners = 6
    test.save()
    results = listening_test_results(test, n_boot=0)
    assert results["warnings"] == [] and not results["cache_hit"]
    assert 'data-testid="warning"' not in admin_client.get(f"/analysis/tests/{test.pk}/").content.decode()
    assert compute.too_few_listeners(1, 20).startswith("1 listener remains after screening;")


def test_a_test_without_ratings_says_no_ratings_rather_than_too_few_listeners():
    world = listening_world(n_items=2)
    test = make_listening_test(name="quiet", kind="mos", checkpoints=world["checkpoints"])
    results = listening_test_results(test, n_boot=0)
    assert results["warnings"] == [] and results["notes"] == [compute.NO_RATINGS]
