"""Run charts, detector-listener agreement and the checkpoint comparison page (issues 6 and 7)."""

import math
import uuid

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from scipy import stats as sps

from evalsite.analysis import run_views
from evalsite.analysis.exports import metrics_table
from evalsite.analysis.figures_runs import detector_rate_figure, metric_figure, run_figures
from evalsite.analysis.leaders import leaders_mark
from evalsite.analysis.run_selectors import (
    checkpoint_comparison,
    run_detector_agreement,
    run_detector_rates,
    run_failed_jobs,
    run_metric_grid,
    run_metric_series,
)
from evalsite.analysis.snapshots import listening_test_results
from evalsite.jobs.models import Job
from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
from evalsite.runs.params import generation_params
from evalsite.runs.selectors import run_checkpoint_table, run_generation_grid
from evalsite.scoring.models import DetectorEvent, DetectorPass, MetricResult
from metrics.detectors import DETECTORS
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

SPEC_A, SPEC_B, SPEC_P = "a" * 64, "b" * 64, "c" * 64
# MOS scores per listener, item utt0..utt3: the detector run's checkpoint and its rival.
SCORES = {
    "det-run": [[4, 4, 3, 5], [3, 4, 4, 4], [5, 4, 4, 3]],
    "rival-run": [[2, 3, 2, 3], [3, 2, 2, 1], [2, 2, 3, 3]],
}
# Listener flags on the detector run's clips: (listener, item, start, end, category).
FLAGS = [
    (0, "utt0", 0.4, 0.7, "click"),
    (1, "utt0", 0.4, 0.7, "click"),
    (0, "utt1", 1.0, 1.3, "buzz"),
    (1, "utt1", 1.0, 1.3, "buzz"),
    (2, "utt2", 1.6, 1.8, "other"),
]  # one listener only: no region
# Detector events on the detector run's clips (utt3 never went through the detectors).
EVENTS = {
    "utt0": [("clicks", 0.50, 0.52), ("tonal_buzz", 1.5, 1.9)],
    "utt1": [],
    "utt2": [("clicks", 0.20, 0.21)],
}

# The selectors take the viewer; access rules have their own test (test_access_matrix).
SEES_EVERY_RUN = get_user_model()(username="sees-every-run", is_superuser=True)


def result(
    checkpoint, name, value, *, spec, higher_is_better, ci=(None, None), status="done", error="", params="p"
):
    return MetricResult.objects.create(
        checkpoint=checkpoint,
        params_hash=params,
        name=name,
        status=status,
        error=error,
        value=value,
        ci_low=ci[0],
        ci_high=ci[1],
        higher_is_better=higher_is_better,
        n=20 if value is not None else 0,
        spec_key=spec,
    )


@pytest.fixture
def metric_run():
    """Four checkpoints; mel_l1 under two specs (never one series) and failed at the last; pesq with one spec."""
    run = Run.objects.create(name="metric-run", kind="vocoder", model_family="hifigan")
    ck = {s: Checkpoint.objects.create(run=run, step=s, uri=f"/c/{s}") for s in (1000, 2000, 3000, 4000)}
    result(ck[1000], "mel_l1", 0.5, spec=SPEC_A, higher_is_better=False, ci=(0.45, 0.55))
    result(ck[2000], "mel_l1", 0.4, spec=SPEC_A, higher_is_better=False, ci=(0.35, 0.45))
    result(ck[3000], "mel_l1", 0.1, spec=SPEC_B, higher_is_better=False)
    result(
        ck[4000],
        "mel_l1",
        None,
        spec="",
        higher_is_better=False,
        status="failed",
        error="FileNotFoundError: put vggish.pt into var/model-store",
    )
    for step, value in ((1000, 2.0), (2000, 3.0), (3000, 2.5)):
        result(ck[step], "pesq", value, spec=SPEC_P, higher_is_better=True)
    return run, ck


def submit(participant, test_kind_scores, flags):
    """Rate and finish every trial of ``participant`` and flag regions; returns nothing (rows are in the
    database)."""
    handles = StimulusHandle.objects.filter(assignment__participant=participant).select_related(
        "assignment__trial__item", "stimulus__condition__checkpoint__run"
    )
    for h in handles:
        run = h.stimulus.condition.checkpoint.run.name
        item = h.assignment.trial.item.key
        services.rating_submit(
            participant=participant,
            trial=h.assignment.token,
            stimulus=h.token,
            score=test_kind_scores[run][int(item[-1])],
            request_id=uuid.uuid4().hex,
        )
        for start, end, category in flags.get((run, item), []):
            services.flag_submit(
                participant=participant,
                trial=h.assignment.token,
                stimulus=h.token,
                start=start,
                end=end,
                category=category,
                request_id=uuid.uuid4().hex,
            )
    # Only completed trials are votes (and their flags evidence): finish every trial once it is rated.
    for token in participant.assignments.values_list("token", flat=True):
        services.trial_complete(participant=participant, trial=token)


@pytest.fixture
def listened():
    """Two runs' checkpoints in one MOS test with three listeners; detector passes on the first run."""
    world = listening_world(n_items=4, runs=("det-run", "rival-run"), seconds=2.0)
    det, rival = world["checkpoints"]
    gens = {g.item.key: g for g in Generation.objects.filter(checkpoint=det).select_related("item")}
    for key, events in EVENTS.items():
        DetectorPass.objects.create(
            generation=gens[key], checkpoint=det, duration_s=2.0, events=len(events), version="1"
        )
        for name, start, end in events:
            DetectorEvent.objects.create(
                generation=gens[key], checkpoint=det, detector=name, start_s=start, end_s=end, strength=1.0
            )
    # A later checkpoint: one 3 s clip (the reference audio of utt3, never a stimulus of the test), 3 clipping events.
    later = Checkpoint.objects.create(run=det.run, step=80000, uri="/c/80000")
    gen = Generation.objects.create(
        checkpoint=later, item=world["items"][3], params_hash="p", asset=world["items"][3].reference
    )
    DetectorPass.objects.create(generation=gen, checkpoint=later, duration_s=3.0, events=3, version="1")
    for t in (0.5, 1.0, 1.5):
        DetectorEvent.objects.create(
            generation=gen, checkpoint=later, detector="clipping", start_s=t, end_s=t + 0.01, strength=1.0
        )
    test = services.listening_test_publish(
        test=make_listening_test(
            name="agreement-mos", kind="mos", checkpoints=[det, rival], training_items=0, seed=3
        )
    )
    for listener in range(3):
        participant = services.participant_join(test=test)
        flags = {}
        for who, item, start, end, category in FLAGS:
            if who == listener:
                flags.setdefault(("det-run", item), []).append((start, end, category))
        submit(participant, {run: rows[listener] for run, rows in SCORES.items()}, flags)
    return {**world, "det": det, "rival": rival, "later": later, "test": test}


@pytest.fixture
def researcher(client):
    # Access rules have their own test (test_access_matrix); here the researcher may see every run.
    client.force_login(get_user_model().objects.create_user("researcher", password="x", is_superuser=True))
    return client


def test_each_metric_is_a_series_per_spec_with_its_best_checkpoint_and_failures(metric_run):
    run, _ = metric_run
    mel, pesq = run_metric_series(run=run)
    assert (mel["name"], mel["higher_is_better"], pesq["name"], pesq["higher_is_better"]) == (
        "mel_l1",
        False,
        "pesq",
        True,
    )
    a, b = mel["series"]
    assert (a["spec_key"], a["steps"], a["values"], a["ci_low"], a["ci_high"]) == (
        SPEC_A,
        [1000, 2000],
        [0.5, 0.4],
        [0.45, 0.35],
        [0.55, 0.45],
    )
    assert (b["spec_key"], b["steps"], b["values"]) == (SPEC_B, [3000], [0.1])
    assert a["label"] == "spec 1 of 2 (aaaaaaaa)" and b["label"] == "spec 2 of 2 (bbbbbbbb)"
    assert a["best"]["step"] == 2000 and b["best"]["step"] == 3000  # lower is better, within each spec only
    # 0.40 [0.35, 0.45] touches 0.50 [0.45, 0.55]: leading, not "best"; one value alone is no comparison.
    assert a["best"]["mark"] == "tied" and b["best"]["mark"] == "only"
    assert mel["failed"] == [{"step": 4000, "error": "FileNotFoundError: put vggish.pt into var/model-store"}]
    (p,) = pesq["series"]
    assert p["label"] == "value" and p["best"] == {
        "step": 2000,
        "checkpoint": p["checkpoints"][1],
        "value": 3.0,
        "mark": "top",  # pesq stored no intervals: leading, no claim
    }


def test_the_run_page_metric_table_has_a_column_per_spec_and_the_failure_in_the_first(metric_run, researcher):
    run, _ = metric_run
    grid = run_metric_grid(run_metric_series(run=run))
    assert [c["label"] for c in grid["columns"]] == [
        "mel_l1 (spec 1 of 2 (aaaaaaaa))",
        "mel_l1 (spec 2 of 2 (bbbbbbbb))",
        "pesq",
    ]
    rows = {r["step"]: [(c["text"], c["mark"]) for c in r["cells"]] for r in grid["rows"]}
    # The compare page's rule: mel_l1 0.4 [0.35, 0.45] and 0.5 [0.45, 0.55] touch, so tied; pesq has no
    # intervals, so its leader is only "top"; a value alone in its column is not marked at all.
    assert rows == {
        1000: [("0.5000", "tied"), ("-", None), ("2.0000", None)],
        2000: [("0.4000", "tied"), ("-", None), ("3.0000", "top")],
        3000: [("-", None), ("0.1000", None), ("2.5000", None)],
        4000: [("failed", None), ("-", None), ("-", None)],
    }
    assert not any(c["best"] for r in grid["rows"] for c in r["cells"])
    assert grid["rows"][3]["cells"][0]["error"].startswith("FileNotFoundError")
    html = researcher.get(f"/runs/{run.pk}/").content.decode()
    assert "<strong title=" not in html and "0.4000 <small" in html
    # Apart intervals: the leader is the run page's ★ best.
    MetricResult.objects.filter(name="mel_l1", value=0.5).update(ci_low=0.48, ci_high=0.52)
    MetricResult.objects.filter(name="mel_l1", value=0.4).update(ci_low=0.38, ci_high=0.42)
    html = researcher.get(f"/runs/{run.pk}/").content.decode()
    assert '<strong title="best: its 95 % interval overlaps no other">★ 0.4000</strong>' in html
    assert 'title="FileNotFoundError: put vggish.pt into var/model-store">failed</span>' in html


def test_a_metric_figure_has_a_ci_band_a_line_per_spec_and_a_star_on_each_best(metric_run):
    run, _ = metric_run
    mel, pesq = run_metric_series(run=run)
    fig = metric_figure(mel)
    names = [t["name"] for t in fig["data"]]
    assert names == [
        "spec 1 of 2 (aaaaaaaa) CI high",
        "spec 1 of 2 (aaaaaaaa) 95% CI",
        "spec 1 of 2 (aaaaaaaa)",
        "leading, tied: step 2000",
        "spec 2 of 2 (bbbbbbbb)",
        "only value: step 3000",
    ]
    high, low, line_a, best_a, line_b, best_b = fig["data"]
    assert high["y"] == [0.55, 0.45] and low["y"] == [0.45, 0.35] and low["fill"] == "tonexty"
    assert (line_a["x"], line_a["y"]) == ([1000, 2000], [0.5, 0.4])
    assert (line_b["x"], line_b["y"]) == ([3000], [0.1])  # the other spec is never joined to the first
    assert (best_a["x"], best_a["y"], best_a["marker"]["symbol"]) == ([2000], [0.4], "star-open")
    assert (best_b["x"], best_b["y"]) == ([3000], [0.1])
    assert fig["layout"]["title"]["text"] == "mel_l1 ↓ (lower is better)" and fig["layout"]["showlegend"]
    fig = metric_figure(pesq)
    assert [t["name"] for t in fig["data"]] == ["value", "leading, no interval: step 2000"]  # no CIs: no band
    assert fig["data"][0]["y"] == [2.0, 3.0, 2.5] and fig["data"][1]["y"] == [3.0]
    assert fig["layout"]["title"]["text"] == "pesq ↑ (higher is better)"


def test_detector_rates_are_events_per_minute_of_analysed_audio(listened):
    run = listened["det"].run
    rates = run_detector_rates(run=run)
    assert rates["steps"] == [77777, 80000] and rates["clips"] == [3, 1]
    assert rates["minutes"] == pytest.approx([0.1, 0.05])
    assert list(rates["detectors"]) == list(DETECTORS)  # every detector the run runs, quiet ones too
    assert rates["detectors"]["clicks"] == {"events": [2, 0], "per_minute": [pytest.approx(20.0), 0.0]}
    assert rates["detectors"]["tonal_buzz"]["per_minute"] == [pytest.approx(10.0), 0.0]
    assert rates["detectors"]["clipping"]["per_minute"] == [0.0, pytest.approx(60.0)]
    fig = detector_rate_figure(rates)
    assert len(fig["data"]) == len(DETECTORS)
    # Log axis, so 10/min buzz and 60/min clipping both read; a zero is drawn a decade below the smallest
    # non-zero rate (10/min) as an open triangle whose hover still says 0.
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert "drawn at 1" in fig["layout"]["annotations"][0]["text"]
    traces = {t["name"]: t for t in fig["data"]}
    clicks = traces["clicks"]
    assert clicks["x"] == [77777, 80000] and clicks["y"] == [pytest.approx(20.0), pytest.approx(1.0)]
    assert clicks["marker"]["symbol"] == ["circle", "triangle-down-open"]
    assert [row[3] for row in clicks["customdata"]] == [pytest.approx(20.0), 0.0]
    assert "%{customdata[3]" in clicks["hovertemplate"]
    assert traces["clipping"]["y"] == [pytest.approx(1.0), pytest.approx(60.0)]


def test_detector_rates_that_are_all_zero_stay_on_a_linear_axis_with_zeros_at_zero():
    rates = {
        "steps": [1000, 2000],
        "checkpoints": [1, 2],
        "clips": [2, 2],
        "minutes": [0.1, 0.1],
        "detectors": {"clicks": {"events": [0, 0], "per_minute": [0.0, 0.0]}},
    }
    fig = detector_rate_figure(rates)
    assert fig["data"][0]["y"] == [0.0, 0.0]
    assert "type" not in fig["layout"]["yaxis"] and "annotations" not in fig["layout"]


def test_a_checkpoint_without_analysed_audio_is_a_gap_not_a_zero_on_the_log_axis():
    rates = {
        "steps": [1000, 2000],
        "checkpoints": [1, 2],
        "clips": [2, 1],
        "minutes": [0.1, 0.0],
        "detectors": {"clicks": {"events": [3, 0], "per_minute": [30.0, None]}},
    }
    trace = detector_rate_figure(rates)["data"][0]
    assert trace["y"] == [30.0, None] and trace["marker"]["symbol"] == ["circle", "circle"]


def test_agreement_matches_detector_events_with_listener_regions_as_computed_by_hand(listened):
    agreement = run_detector_agreement(run=listened["det"].run)
    # Regions: utt0 0.4-0.7 (detector fired), utt1 1.0-1.3 (no detector fired); utt2's single flag is no region.
    assert (agreement["flags"], agreement["regions"], agreement["clips"]) == (5, 2, 3)
    assert agreement["clips_not_analysed"] == 1 and agreement["tests"] == ["agreement-mos"]
    rows = {r["detector"]: r for r in agreement["rows"]}
    assert list(rows) == [*DETECTORS, "any detector"]
    clicks = rows["clicks"]  # utt0's click is in a region, utt2's is not; utt1's region has no click
    assert (clicks["n_detected"], clicks["n_detected_matched"], clicks["precision"]) == (2, 1, 0.5)
    assert (clicks["n_flagged"], clicks["n_flagged_matched"], clicks["recall"]) == (2, 1, 0.5)
    buzz = rows["tonal_buzz"]  # 1.5-1.9 s is more than 0.1 s away from 0.4-0.7 s
    assert (buzz["precision"], buzz["recall"]) == (0.0, 0.0)
    assert rows["clipping"]["precision"] is None and rows["clipping"]["recall"] == 0.0
    every = rows["any detector"]
    assert (every["n_detected"], every["n_detected_matched"], every["n_flagged_matched"]) == (3, 1, 1)
    assert every["precision"] == pytest.approx(1 / 3) and every["recall"] == 0.5 and every["clips"] == 3
    utt0 = next(e for e in agreement["examples"] if e["item"] == "utt0")
    assert utt0["regions"] == [(pytest.approx(0.4), pytest.approx(0.7))]
    assert utt0["events"] == {"clicks": [(0.5, 0.52)], "tonal_buzz": [(1.5, 1.9)]}


def test_a_wider_tolerance_or_a_lower_consensus_changes_the_counts(listened):
    run = listened["det"].run
    wide = {r["detector"]: r for r in run_detector_agreement(run=run, tolerance_s=0.9)["rows"]}
    assert wide["tonal_buzz"]["n_detected_matched"] == 1  # 1.5 s is within 0.9 s of 0.7 s
    single = run_detector_agreement(run=run, min_listeners=1)
    assert single["regions"] == 3  # utt2's lone flag now makes a region too


def test_agreement_says_when_there_are_no_listener_flags(metric_run, listened, researcher):
    run, _ = metric_run
    assert run_detector_agreement(run=run)["flags"] == 0
    page = researcher.get(f"/analysis/runs/{run.pk}/").content.decode()
    assert "No listener flags yet" in page


def test_the_run_analysis_page_draws_every_chart_for_a_researcher(listened, metric_run, researcher):
    run, _ = metric_run
    page = researcher.get(f"/analysis/runs/{run.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="metric-0"' in html and 'id="metric-1"' in html and 'id="run-figures"' in html
    assert "/static/vendor/plotly/plotly-cartesian.min.js" in html and "Plotly.newPlot" in html
    assert "☆ leading, tied (intervals overlap) (spec 1 of 2 (aaaaaaaa)): step 2000, 0.4" in html
    assert "☆ leading (no interval, no claim): step 2000, 3" in html and "★ best:" not in html
    assert "FileNotFoundError: put vggish.pt into var/model-store" in html
    assert [f["id"] for f in page.context["figures"]] == [
        "metric-0",
        "metric-1",
    ]  # no detector passes: no rate chart
    det = listened["det"].run
    page = researcher.get(f"/analysis/runs/{det.pk}/")
    html = page.content.decode()
    assert "detector-rates" in [f["id"] for f in page.context["figures"]]
    assert "Detector agreement with listener flags" in html and "agreement-mos" in html
    assert "<td>clicks</td>" in html and "0.50" in html


def test_researcher_pages_send_anonymous_visitors_to_the_login_page(client, metric_run):
    run, ck = metric_run
    for url in (f"/analysis/runs/{run.pk}/", f"/analysis/compare/?c={ck[1000].pk}", f"/runs/{run.pk}/"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_run_page_links_the_charts_and_shows_failed_jobs_with_their_reasons(metric_run, researcher):
    run, ck = metric_run
    Job.objects.create(
        kind=Job.Kind.METRICS,
        status=Job.Status.FAILED,
        run=run,
        checkpoint=ck[4000],
        error="RuntimeError: CUDA out of memory while embedding item utt7 (batch 16)",
    )
    Job.objects.create(
        kind=Job.Kind.GENERATION,
        status=Job.Status.FAILED,
        run=run,
        checkpoint=ck[3000],
        error="checkpoint file vanished",
    )
    Job.objects.create(kind=Job.Kind.GENERATION, status=Job.Status.DONE, run=run, checkpoint=ck[3000])
    failed = list(run_failed_jobs(run=run))
    assert [(j.kind, j.superseded) for j in failed] == [("generation", True), ("metrics", False)]
    html = researcher.get(f"/runs/{run.pk}/").content.decode()
    assert f'href="/analysis/runs/{run.pk}/"' in html
    assert "RuntimeError: CUDA out of memory while embedding item utt7 (batch 16)" in html
    assert "a later generation job for this checkpoint replaced it" in html


def test_the_run_page_lists_the_latest_checkpoints_in_the_listen_grid(listened, researcher, monkeypatch):
    run = listened["det"].run
    monkeypatch.setattr(run_views, "LISTEN_GRID_CHECKPOINTS", 1)
    page = researcher.get(f"/runs/{run.pk}/")
    assert [c.step for c in page.context["checkpoints"]] == [80000]
    assert "The latest 1 of 2 checkpoints" in page.content.decode()
    page = researcher.get(f"/runs/{run.pk}/?listen=all")
    assert [c.step for c in page.context["checkpoints"]] == [77777, 80000]
    checkpoints, rows = run_generation_grid(run=run)
    assert len(checkpoints) == 2 and [len(r["cells"]) for r in rows] == [2, 2, 2, 2]


def test_the_checkpoint_table_takes_a_fixed_number_of_queries(listened, django_assert_max_num_queries):
    run = listened["det"].run
    for step in range(1, 30):
        Checkpoint.objects.create(run=run, step=step, uri=f"/c/{step}")
    with django_assert_max_num_queries(4):
        table = run_checkpoint_table(run=run)
    by_step = {row["checkpoint"].step: row for row in table}
    assert len(table) == 31 and by_step[77777]["generations"] == {"done": 4, "failed": 0}
    assert by_step[80000]["generations"] == {"done": 1, "failed": 0} and by_step[1]["alerts"] == 0


def test_comparison_puts_only_same_metric_and_spec_in_one_column(metric_run, listened):
    _, ck = metric_run
    det = listened["det"]
    result(det, "mel_l1", 0.2, spec=SPEC_B, higher_is_better=False)
    out = checkpoint_comparison(
        checkpoint_ids=[ck[2000].pk, ck[1000].pk, det.pk, 999999], user=SEES_EVERY_RUN
    )
    assert [str(c) for c in out["checkpoints"]] == ["det-run@77777", "metric-run@1000", "metric-run@2000"]
    assert out["missing"] == [999999]
    labels = [c["label"] for c in out["columns"]]  # specs numbered in order of appearance (run, step)
    assert labels == [
        "agreement-mos (MOS)",
        "mel_l1 · spec 1 of 2 (bbbbbbbb)",
        "mel_l1 · spec 2 of 2 (aaaaaaaa)",
        "pesq",
    ]
    cells = {str(r["checkpoint"]): r["cells"][1:] for r in out["rows"]}  # metric columns only
    assert cells["det-run@77777"][:3] == [
        {"value": 0.2, "ci_low": None, "ci_high": None, "n": 20},
        None,
        None,
    ]
    # mel_l1 spec A: 0.4 [0.35, 0.45] leads 0.5 [0.45, 0.55], but the intervals touch: tied, not best.
    assert cells["metric-run@1000"][:2] == [
        None,
        {"value": 0.5, "ci_low": 0.45, "ci_high": 0.55, "n": 20, "mark": "tied"},
    ]
    assert cells["metric-run@2000"][1]["mark"] == "tied"
    assert cells["metric-run@2000"][2]["mark"] == "top"  # pesq 3.0 > 2.0, no interval: no claim
    assert "mark" not in cells["metric-run@1000"][2]
    assert "mark" not in cells["det-run@77777"][0]  # alone in its column: nothing to be best against
    assert out["rows"][1]["cells"][0] is None  # metric-run@1000 is not in the listening test


@pytest.fixture
def sampled_run():
    """A generator whose FAD was computed at steps 1000 and 2000 under the official sampling settings and at
    3000 with pure sampling (top_k and top_p off): same metric spec, different generation params."""
    run = Run.objects.create(name="aar-run", kind="generator", model_family="aar")
    item = EvalItem.objects.create(eval_set=EvalSet.objects.create(name="prompts"), key="dog")
    official, official_hash = generation_params({})
    pure, pure_hash = generation_params({"top_k": None, "top_p": None})
    ck = {}
    for step, value, (params, params_hash) in (
        (1000, 3.1, (official, official_hash)),
        (2000, 2.9, (official, official_hash)),
        (3000, 1.2, (pure, pure_hash)),
    ):
        ck[step] = Checkpoint.objects.create(run=run, step=step, uri=f"/g/{step}")
        # The failed output carries the params all the same: provenance does not need audio.
        Generation.objects.create(
            checkpoint=ck[step], item=item, params=params, params_hash=params_hash, status="failed"
        )
        result(ck[step], "fad", value, spec=SPEC_A, higher_is_better=False, params=params_hash)
    return run, ck, official_hash, pure_hash


def test_run_series_keep_values_of_other_sampling_settings_apart_and_name_the_settings(
    sampled_run, researcher
):
    run, ck, official_hash, pure_hash = sampled_run
    (fad,) = run_metric_series(run=run)
    official, pure = fad["series"]
    assert (official["params_hash"], official["steps"], official["values"]) == (
        official_hash,
        [1000, 2000],
        [3.1, 2.9],
    )
    assert (pure["params_hash"], pure["steps"], pure["values"]) == (pure_hash, [3000], [1.2])
    assert official["label"] == "params 1 of 2 (top_k=200, top_p=0.95)"
    assert pure["label"] == "params 2 of 2 (top_k=None, top_p=None)"
    assert official["best"]["step"] == 2000  # not 3000: pure sampling's 1.2 is not comparable
    assert fad["params_note"] == (
        "Values generated with different settings (top_k, top_p) are shown apart, not side by side: "
        "top_k=200, top_p=0.95; top_k=None, top_p=None."
    )
    html = researcher.get(f"/analysis/runs/{run.pk}/").content.decode()
    assert "Values generated with different settings (top_k, top_p) are shown apart" in html
    # With the pure-sampling outputs deleted their settings are unknown: still apart, named by hash.
    Generation.objects.filter(params_hash=pure_hash).delete()
    (fad,) = run_metric_series(run=run)
    assert [s["label"] for s in fad["series"]] == [
        f"params 1 of 2 ({official_hash[:8]})",
        f"params 2 of 2 ({pure_hash[:8]})",
    ]
    assert fad["params_note"] == "Values generated with different params are shown apart, not side by side."


def test_comparison_never_puts_values_of_other_sampling_settings_in_one_column(sampled_run, researcher):
    _, ck, official_hash, pure_hash = sampled_run
    out = checkpoint_comparison(checkpoint_ids=[ck[2000].pk, ck[3000].pk], user=SEES_EVERY_RUN)
    assert [(c["label"], c["params_hash"]) for c in out["columns"]] == [
        ("fad · params 1 of 2 (top_k=200, top_p=0.95)", official_hash),
        ("fad · params 2 of 2 (top_k=None, top_p=None)", pure_hash),
    ]
    cells = {str(r["checkpoint"]): r["cells"] for r in out["rows"]}
    assert cells == {
        "aar-run@2000": [{"value": 2.9, "ci_low": None, "ci_high": None, "n": 20}, None],
        "aar-run@3000": [None, {"value": 1.2, "ci_low": None, "ci_high": None, "n": 20}],
    }  # no "best": each value is alone among the values it may be compared with
    note = (
        "Values generated with different settings (top_k, top_p) are shown apart, not side by side: "
        "top_k=200, top_p=0.95; top_k=None, top_p=None."
    )
    assert out["params_notes"] == [note] and out["columns"][0]["title"].endswith(note)
    html = researcher.get(f"/analysis/compare/?c={ck[2000].pk}&c={ck[3000].pk}").content.decode()
    assert "Values generated with different settings (top_k, top_p) are shown apart" in html
    same = checkpoint_comparison(checkpoint_ids=[ck[1000].pk, ck[2000].pk], user=SEES_EVERY_RUN)
    assert [c["label"] for c in same["columns"]] == ["fad"] and same["params_notes"] == []


def test_the_checkpoint_api_names_values_of_other_sampling_settings_apart_and_joins_their_settings(
    sampled_run, researcher
):
    """Item 10: the API's ``metrics`` never lets a pure-sampling FAD stand under the same name as the official
    settings' FAD; each ``metric_results`` entry carries the sampling settings of the outputs behind it."""
    run, ck, official_hash, pure_hash = sampled_run
    listed = researcher.get(f"/api/v1/runs/{run.pk}/checkpoints/").json()["results"]
    by_step = {c["step"]: c for c in listed}
    official_key = "fad (params 1 of 2 (top_k=200, top_p=0.95))"
    pure_key = "fad (params 2 of 2 (top_k=None, top_p=None))"
    assert by_step[1000]["metrics"] == {official_key: 3.1} and by_step[2000]["metrics"] == {official_key: 2.9}
    assert by_step[3000]["metrics"] == {pure_key: 1.2}  # the run page's column names, not one "fad"
    (entry,) = by_step[3000]["metric_results"]
    assert (entry["name"], entry["key"], entry["params_hash"]) == ("fad", pure_key, pure_hash)
    assert entry["generation_params"] == generation_params({"top_k": None, "top_p": None})[0]
    assert entry["generation_params"]["cfg_scale"] == 4.0  # the official CFG scale, stored with the value
    detail = researcher.get(f"/api/v1/runs/{run.pk}/checkpoints/1000/").json()
    assert detail["metrics"] == {official_key: 3.1}
    assert detail["metric_results"][0]["generation_params"] == generation_params({})[0]
    # One setting in the run: the bare name, as before.
    MetricResult.objects.filter(params_hash=pure_hash).delete()
    assert researcher.get(f"/api/v1/runs/{run.pk}/checkpoints/2000/").json()["metrics"] == {"fad": 2.9}


def test_the_metrics_export_joins_each_value_to_the_generation_settings_behind_it(listened):
    det = listened["det"]
    Generation.objects.filter(checkpoint=det).update(params={"cfg_scale": 4.0, "top_k": 200})
    result(det, "si_sdr", 2.0, spec=SPEC_A, higher_is_better=True)
    table = metrics_table(listened["test"]).set_index(["metric", "level", "item"])
    assert table.loc[("si_sdr", "system", None), "generation_params"] == '{"cfg_scale": 4.0, "top_k": 200}'


def test_comparison_shows_human_scores_with_t_and_bootstrap_intervals(listened, researcher):
    det, rival = listened["det"], listened["rival"]
    out = checkpoint_comparison(checkpoint_ids=[det.pk, rival.pk], user=SEES_EVERY_RUN)
    (column,) = out["columns"]
    assert column["kind"] == "human" and column["label"] == "agreement-mos (MOS)"
    scores = np.array(SCORES["det-run"], dtype=float).ravel()
    mean, sem = scores.mean(), scores.std(ddof=1) / math.sqrt(len(scores))
    half = sps.t.ppf(0.975, len(scores) - 1) * sem  # by hand: Student t over all 12 votes
    cell = out["rows"][0]["cells"][0]
    assert cell["value"] == pytest.approx(47 / 12) and cell["n"] == 12 and cell["listeners"] == 3
    assert (cell["ci_low"], cell["ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    stored = {r["system"]: r for r in listening_test_results(listened["test"])["scores"]["kept"]}
    assert cell["boot_low"] == stored["det-run@77777"]["boot_low"]
    assert cell["boot_low"] < cell["value"] < cell["boot_high"] and cell["mark"] == "best"
    assert column["screening"] == "screened: 0 of 3 listeners excluded; completed trials only"
    html = researcher.get(f"/analysis/compare/?c={det.pk}&c={rival.pk}").content.decode()
    assert "agreement-mos (MOS)</a> ↑" in html
    assert f"{mean:.4g}" in html and f"[{mean - half:.4g}, {mean + half:.4g}]" in html
    assert f"boot [{cell['boot_low']:.4g}, {cell['boot_high']:.4g}]" in html and "n 12 / 3 listeners" in html
    assert 'class="sortable-table"' in html and f'data-sort="{float(mean):.17g}"' in html


def test_the_comparison_page_offers_a_picker_and_reports_bad_ids(metric_run, researcher):
    _, ck = metric_run
    page = researcher.get(f"/analysis/compare/?c={ck[1000].pk}&c=x1&c=424242")
    html = page.content.decode()
    assert page.status_code == 200
    assert '<optgroup label="metric-run">' in html and f'<option value="{ck[1000].pk}" selected>' in html
    assert run_views.BAD_CHECKPOINT_ID.format(values="'x1'").replace("'", "&#x27;") in html
    assert run_views.UNKNOWN_CHECKPOINTS.format(ids="424242") in html
    assert "Pick two or more checkpoints" in researcher.get("/analysis/compare/").content.decode()


def test_run_figures_lists_metric_charts_then_the_rate_chart(listened):
    run = listened["det"].run
    result(listened["det"], "stoi", 0.9, spec=SPEC_P, higher_is_better=True)
    figures = run_figures(run_metric_series(run=run), run_detector_rates(run=run))
    assert [f["id"] for f in figures] == ["metric-0", "detector-rates"]


def answer_comparisons(participant, choose):
    """Answer and finish every CMOS / AB trial on sound B; ``choose(first_run, second_run, item)`` returns the answer as
    the run whose sound is preferred (AB) or the score of sound B relative to A (CMOS)."""
    by_assignment = {}
    for h in (
        StimulusHandle.objects.filter(assignment__participant=participant)
        .select_related("assignment__trial__item", "stimulus__condition__checkpoint__run")
        .order_by("position")
    ):
        by_assignment.setdefault(h.assignment, []).append(h)
    for assignment, (a, b) in by_assignment.items():
        run_of = {
            h.token: h.stimulus.condition.checkpoint.run.name
            if h.stimulus.condition.checkpoint
            else "reference"
            for h in (a, b)
        }
        answer = choose(run_of[a.token], run_of[b.token], assignment.trial.item.key)
        score = next(t for t, run in run_of.items() if run == answer) if isinstance(answer, str) else answer
        services.rating_submit(
            participant=participant,
            trial=assignment.token,
            stimulus=b.token,
            score=score,
            request_id=uuid.uuid4().hex,
        )
        services.trial_complete(participant=participant, trial=assignment.token)


def test_comparison_shows_ab_preference_with_a_wilson_interval_and_cmos_per_comparison(listened):
    det, rival = listened["det"], listened["rival"]
    ab = services.listening_test_publish(
        test=make_listening_test(
            name="pref-ab", kind="ab", checkpoints=[det, rival], training_items=0, seed=4
        )
    )
    for listener in range(3):  # listeners 0 and 1 always prefer det-run, listener 2 only on utt0: 9 of 12
        answer_comparisons(
            services.participant_join(test=ab),
            lambda x, y, item, who=listener: "det-run" if who < 2 or item == "utt0" else "rival-run",
        )
    cmos = services.listening_test_publish(
        test=make_listening_test(
            name="vs-ref-cmos", kind="cmos", checkpoints=[det, rival], training_items=0, seed=5
        )
    )
    versus_reference = {"det-run": -1, "rival-run": -2}  # one and two points worse than the recording
    for _ in range(2):  # the answer is B relative to A, whichever order the two were heard in
        answer_comparisons(
            services.participant_join(test=cmos),
            lambda a, b, item: -versus_reference[a] if b == "reference" else versus_reference[b],
        )
    out = checkpoint_comparison(checkpoint_ids=[det.pk, rival.pk], user=SEES_EVERY_RUN)
    labels = [c["label"] for c in out["columns"]]
    assert labels == [
        "agreement-mos (MOS)",
        "pref-ab (AB: det-run@77777 vs rival-run@77777)",
        "vs-ref-cmos (CMOS vs reference recording)",
    ]
    z, n, p = sps.norm.ppf(0.975), 12, 0.75  # Wilson score interval, by hand
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    det_ab, rival_ab = out["rows"][0]["cells"][1], out["rows"][1]["cells"][1]
    assert (
        det_ab["value"] == 0.75 and det_ab["n"] == 12 and det_ab["mark"] == "tied"
    )  # Wilson intervals overlap
    assert (det_ab["ci_low"], det_ab["ci_high"]) == (
        pytest.approx(centre - half),
        pytest.approx(centre + half),
    )
    assert rival_ab["value"] == 0.25 and rival_ab["ci_high"] == pytest.approx(1 - det_ab["ci_low"])
    det_cmos, rival_cmos = out["rows"][0]["cells"][2], out["rows"][1]["cells"][2]
    assert (det_cmos["value"], rival_cmos["value"], det_cmos["n"]) == (-1.0, -2.0, 8)


def test_the_metrics_export_carries_each_stored_interval_on_the_system_row(listened):
    det, rival = listened["det"], listened["rival"]
    row = result(det, "si_sdr", 2.0, spec=SPEC_A, higher_is_better=True, ci=(1.5, 2.5))
    row.per_item = {"utt0": 1.0, "utt1": 3.0}
    row.save()
    result(rival, "fad/vggish-16k", 4.0, spec=SPEC_B, higher_is_better=False)
    table = metrics_table(listened["test"]).set_index(["metric", "level", "item"])
    system = table.loc[("si_sdr", "system", None)]
    assert (system["ci_low"], system["ci_high"], system["run"], system["step"]) == (
        1.5,
        2.5,
        "det-run",
        det.step,
    )
    # An item is one value: no interval; a set-level metric has none stored, so none is exported.
    assert table.loc[("si_sdr", "item", "utt0"), ["ci_low", "ci_high"]].isna().all()
    assert table.loc[("fad/vggish-16k", "system", None), ["ci_low", "ci_high"]].isna().all()


def test_the_compare_page_shows_the_screened_score_of_the_test_page_and_the_results_api(listened, researcher):
    """One set of numbers everywhere: a fourth listener who gives every sound a 2 is screened out (the constant
    rule), and the compare page, the test page and the results API all give the score without them (issue 17)."""
    det, rival, test = listened["det"], listened["rival"], listened["test"]
    submit(services.participant_join(test=test), {"det-run": [2, 2, 2, 2], "rival-run": [2, 2, 2, 2]}, {})
    kept = np.array(SCORES["det-run"], dtype=float).ravel()  # the three kept listeners' votes
    every = np.concatenate([kept, [2, 2, 2, 2]])
    assert kept.mean() != pytest.approx(every.mean())  # the exclusion changes the score

    out = checkpoint_comparison(checkpoint_ids=[det.pk, rival.pk], user=SEES_EVERY_RUN)
    (column,) = out["columns"]
    cell = out["rows"][0]["cells"][0]
    assert cell["value"] == pytest.approx(kept.mean()) and (cell["n"], cell["listeners"]) == (12, 3)
    assert column["screening"] == "screened: 1 of 4 listeners excluded; completed trials only"

    api = researcher.get(f"/api/v1/listening-tests/{test.pk}/results/").json()
    (api_row,) = [r for r in api["scores"]["kept"] if r["system"] == "det-run@77777"]
    assert (api_row["mean"], api_row["ci_low"], api_row["ci_high"]) == (
        cell["value"],
        cell["ci_low"],
        cell["ci_high"],
    )
    page = researcher.get(f"/analysis/tests/{test.pk}/").content.decode()
    assert f'<td class="num">{kept.mean():.2f}</td>' in page
    compare = researcher.get(f"/analysis/compare/?c={det.pk}&c={rival.pk}").content.decode()
    assert f'overlaps no other">{kept.mean():.4g}</strong>' in compare  # bold: best, intervals apart
    assert (
        f"{every.mean():.4g}" not in compare
        and "screened: 1 of 4 listeners excluded; completed trials only" in compare
    )


def test_a_leader_is_best_only_when_its_interval_separates_from_every_other():
    def cells(*rows):
        return [{"value": v, "ci_low": lo, "ci_high": hi} for v, lo, hi in rows]

    apart = cells((4.2, 4.0, 4.4), (3.1, 2.9, 3.3), (2.0, 1.5, 2.5))
    leaders_mark(apart, higher_is_better=True)
    assert [c.get("mark") for c in apart] == ["best", None, None]
    # Two SMOS 4s: neither is bolded over the other.
    equal = cells((4.0, 3.6, 4.4), (4.0, 3.7, 4.3), (2.0, 1.5, 2.5))
    leaders_mark(equal, higher_is_better=True)
    assert [c.get("mark") for c in equal] == ["tied", "tied", None]
    # The leader overlaps the runner-up only: both tied, the third (apart from the leader) unmarked.
    overlap = cells((3.0, 2.5, 3.5), (2.9, 2.6, 3.2), (1.0, 0.5, 2.4))
    leaders_mark(overlap, higher_is_better=True)
    assert [c.get("mark") for c in overlap] == ["tied", "tied", None]
    lower = cells((0.5, 0.45, 0.55), (0.2, 0.1, 0.3))
    leaders_mark(lower, higher_is_better=False)  # lower is better
    assert [c.get("mark") for c in lower] == [None, "best"]
    # Without intervals: the leading value is "top", no claim; equal leaders are tied; direction unknown: nothing.
    plain = [{"value": 2.0}, {"value": 3.0, "ci_low": 2.9, "ci_high": 3.1}]
    leaders_mark(plain, higher_is_better=True)
    assert [c.get("mark") for c in plain] == [None, "top"]
    same = [{"value": 3.0}, {"value": 3.0}]
    leaders_mark(same, higher_is_better=True)
    assert [c.get("mark") for c in same] == ["tied", "tied"]
    unknown = cells((1.0, 0.9, 1.1), (2.0, 1.9, 2.1))
    leaders_mark(unknown, higher_is_better=None)
    assert all("mark" not in c for c in unknown)


def test_a_test_whose_screening_excludes_every_listener_gives_an_empty_column_saying_so(listened, researcher):
    det, rival, test = listened["det"], listened["rival"], listened["test"]
    # A listener who inverts the panel drags every leave-one-out mean: the agreement rule then excludes all four.
    submit(services.participant_join(test=test), {"det-run": [1, 1, 1, 1], "rival-run": [5, 5, 5, 5]}, {})
    out = checkpoint_comparison(checkpoint_ids=[det.pk, rival.pk], user=SEES_EVERY_RUN)
    (column,) = out["columns"]
    assert column["title"] == "every listener is excluded by the screening"
    assert column["screening"] == "screened: 4 of 4 listeners excluded; completed trials only"
    assert [row["cells"] for row in out["rows"]] == [[None], [None]]
    html = researcher.get(f"/analysis/compare/?c={det.pk}&c={rival.pk}").content.decode()
    assert 'title="every listener is excluded by the screening"' in html and "<strong title=" not in html
    assert '<th scope="row" class="sticky"' in html  # the checkpoint column stays in view while scrolling


def test_a_run_chart_stars_best_only_where_the_interval_separates():
    run = Run.objects.create(name="separate-run", kind="vocoder", model_family="hifigan")
    ck = {s: Checkpoint.objects.create(run=run, step=s, uri=f"/c/{s}") for s in (1000, 2000, 3000)}
    result(ck[1000], "mel_l1", 0.50, spec=SPEC_A, higher_is_better=False, ci=(0.48, 0.52))
    result(ck[2000], "mel_l1", 0.30, spec=SPEC_A, higher_is_better=False, ci=(0.28, 0.32))
    result(ck[3000], "mel_l1", 0.40, spec=SPEC_A, higher_is_better=False, ci=(0.38, 0.42))
    (mel,) = run_metric_series(run=run)
    (series,) = mel["series"]
    assert series["best"]["step"] == 2000 and series["best"]["mark"] == "best"
    star = metric_figure(mel)["data"][-1]
    assert star["name"] == "best: step 2000" and star["marker"]["symbol"] == "star"
