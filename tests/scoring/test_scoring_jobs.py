"""Metric jobs on SQLite: stored provenance, per-item values, isolation of failures, comparability."""

import numpy as np
import pytest
import scipy.stats
import torch

import models
from evalsite.analysis.figures_runs import metric_figure
from evalsite.analysis.run_selectors import run_metric_series
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_execute
from evalsite.runs import generation as gen
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.generation_services import generation_job_work
from evalsite.runs.models import Checkpoint, EvalSet, Generation
from evalsite.runs.services import checkpoint_register, run_create
from evalsite.scoring.models import MetricResult
from evalsite.scoring.selectors import INCOMPARABLE, metric_results_compare, run_metric_table
from evalsite.scoring.services import CI_LEVEL, CI_RESAMPLES, CI_SEED, metrics_job_work, per_item_interval
from metrics.functional.speech import si_sdr
from tests.factories import write_tone

pytestmark = pytest.mark.django_db

PAIRED = [
    "mel_l1/hifigan-22.05k-n1024-h256-m80",
    "mrstft/auraloss-default",
    "lsd/log10pow-n2048-h512",
    "si_sdr",
]


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    gen.model_cache.clear()


@pytest.fixture
def vocoder_run(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(4):
        write_tone(clips / f"utt{i}.wav", freq=180 + 60 * i, seconds=0.5, rate=22050, seed=i)
    eval_set = EvalSet.objects.get(pk=evalset_import(name="speech", source=clips).eval_set_id)
    run, _ = run_create(
        name="voc", kind="vocoder", model_family="hifigan", eval_set=eval_set, config={"metrics": PAIRED}
    )
    return run


def generate(run, tmp_path, step, seed=0):
    torch.manual_seed(seed)
    path = tmp_path / f"g_{step:08d}.pt"
    models.save_checkpoint(models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), path)
    ckpt, _ = checkpoint_register(run=run, step=step, uri=str(path), evaluate=False)
    job = job_execute(
        job_id=Job.objects.create(kind="generation", run=run, checkpoint=ckpt).pk,
        worker="t",
        work=generation_job_work,
    )
    assert job.status == "done", job.error
    return ckpt, Job.objects.get(pk=job.result["metrics_job_id"])


def score(metrics_job):
    return job_execute(job_id=metrics_job.pk, worker="t", work=metrics_job_work)


def test_a_metrics_job_stores_every_paired_metric_with_per_item_values_and_provenance(vocoder_run, tmp_path):
    ckpt, metrics_job = generate(vocoder_run, tmp_path, 1000)
    job = score(metrics_job)
    assert job.status == "done", job.error
    rows = {r.name: r for r in MetricResult.objects.filter(checkpoint=ckpt)}
    assert set(rows) == set(PAIRED) and all(r.status == "done" for r in rows.values())
    for row in rows.values():
        assert set(row.per_item) == {"utt0", "utt1", "utt2", "utt3"} and row.n == 4
        assert row.metric_version and len(row.spec_key) == 64 and row.duration_s >= 0
        assert row.reference_set_id == vocoder_run.eval_set_id and row.preprocess == {"sample_rate": 22050}
    assert rows["mel_l1/hifigan-22.05k-n1024-h256-m80"].higher_is_better is False
    # The stored SI-SDR is the library's value on the stored audio, item by item.
    generation = Generation.objects.get(checkpoint=ckpt, item__key="utt2")
    from evalsite.audio.selectors import audio_asset_samples

    g, _ = audio_asset_samples(generation.asset)
    r, _ = audio_asset_samples(generation.item.reference)
    assert rows["si_sdr"].per_item["utt2"] == pytest.approx(si_sdr(g[:, 0], r[:, 0]).value, rel=1e-6)
    ckpt.refresh_from_db()
    # Next stage: the artifact detectors.
    assert ckpt.status == Checkpoint.Status.DETECTING
    assert Job.objects.get(pk=job.result["detection_job_id"]).kind == Job.Kind.DETECTION
    # Each clip was decoded once for all metrics: 4 generated + 4 references.
    assert job.result["decodes"] == 8


def scipy_interval(values) -> tuple[float, float]:
    result = scipy.stats.bootstrap(
        (np.asarray(values, dtype=float),),
        np.mean,
        n_resamples=CI_RESAMPLES,
        confidence_level=CI_LEVEL,
        method="percentile",
        rng=np.random.default_rng(CI_SEED),
    )
    return result.confidence_interval.low, result.confidence_interval.high


def test_each_per_item_metric_stores_the_bootstrap_interval_scipy_gives_on_its_per_item_values(
    vocoder_run, tmp_path
):
    ckpt, metrics_job = generate(vocoder_run, tmp_path, 1000)
    assert score(metrics_job).status == "done"
    for row in MetricResult.objects.filter(checkpoint=ckpt):
        low, high = scipy_interval(list(row.per_item.values()))
        assert (row.ci_low, row.ci_high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9)), (
            row.name
        )
        assert row.ci_low < row.value < row.ci_high, row.name
        assert row.details["ci"] == {
            "method": "percentile bootstrap of the mean over items",
            "level": 0.95,
            "resamples": 2000,
            "seed": 0,
        }
    # The run chart draws the stored interval as a band around the line.
    second, metrics_job = generate(vocoder_run, tmp_path, 2000, seed=1)
    assert score(metrics_job).status == "done"
    si_sdr_chart = next(m for m in run_metric_series(run=vocoder_run) if m["name"] == "si_sdr")
    high, low, line = metric_figure(si_sdr_chart)["data"][:3]
    stored = MetricResult.objects.filter(name="si_sdr").order_by("checkpoint__step")
    assert line["y"] == [r.value for r in stored] and line["x"] == [1000, 2000]
    assert high["y"] == [r.ci_high for r in stored] and low["y"] == [r.ci_low for r in stored]
    assert low["fill"] == "tonexty" and low["name"].endswith("95% CI")


def test_the_interval_skips_items_without_a_value_and_is_the_same_on_every_call():
    per_item = {"a": 1.0, "b": None, "c": 2.5, "d": 4.0, "e": 3.0}
    first = per_item_interval(value=2.625, per_item=per_item)
    assert first == per_item_interval(value=2.625, per_item=per_item)
    assert first == pytest.approx(scipy_interval([1.0, 2.5, 4.0, 3.0]), rel=1e-9)


@pytest.mark.parametrize(
    ("value", "per_item", "why"),
    [
        (3.0, None, "set-level metric"),
        (3.0, {"a": 3.0}, "one item"),
        (3.0, {"a": 3.0, "b": None}, "one finite item"),
        (9.0, {"a": 1.0, "b": 2.0, "c": 3.0}, "value pooled, not the per-item mean"),
        (None, {"a": 1.0, "b": 2.0}, "no value"),
    ],
)
def test_no_interval_where_a_bootstrap_of_the_item_mean_would_not_describe_the_value(value, per_item, why):
    assert per_item_interval(value=value, per_item=per_item) is None, why


def test_one_failing_metric_is_stored_with_its_reason_while_the_others_complete(
    vocoder_run, tmp_path, settings, monkeypatch
):
    monkeypatch.setenv("EVALSITE_MODEL_STORE", str(tmp_path / "empty-store"))
    vocoder_run.config = {"metrics": ["si_sdr", "fad/vggish-16k"]}
    vocoder_run.save()
    ckpt, metrics_job = generate(vocoder_run, tmp_path, 1000)
    job = score(metrics_job)
    assert job.status == "done"
    fad = MetricResult.objects.get(checkpoint=ckpt, name="fad/vggish-16k")
    assert fad.status == "failed" and "vggish" in fad.error and str(tmp_path / "empty-store") in fad.error
    assert MetricResult.objects.get(checkpoint=ckpt, name="si_sdr").status == "done"
    assert job.result["failed"] == {"fad/vggish-16k": fad.error}


def test_rescoring_a_checkpoint_updates_its_rows_instead_of_adding_more(vocoder_run, tmp_path):
    ckpt, metrics_job = generate(vocoder_run, tmp_path, 1000)
    score(metrics_job)
    again = Job.objects.create(kind="metrics", run=vocoder_run, checkpoint=ckpt, params=metrics_job.params)
    score(again)
    assert MetricResult.objects.filter(checkpoint=ckpt).count() == len(PAIRED)


def test_an_unknown_metric_name_fails_the_job_listing_the_registered_ones(vocoder_run, tmp_path):
    vocoder_run.config = {"metrics": ["fad/vggish-16k", "mosnet"]}
    vocoder_run.save()
    ckpt, metrics_job = generate(vocoder_run, tmp_path, 1000)
    job = score(metrics_job)
    assert job.status == "failed" and "unknown metric 'mosnet'" in job.error and "si_sdr" in job.error


def test_results_with_different_specs_are_refused_side_by_side_and_get_separate_columns(
    vocoder_run, tmp_path
):
    first, job1 = generate(vocoder_run, tmp_path, 1000, seed=0)
    second, job2 = generate(vocoder_run, tmp_path, 2000, seed=1)
    score(job1)
    score(job2)
    both = MetricResult.objects.filter(name="si_sdr")
    assert len(metric_results_compare(both)) == 2
    table = run_metric_table(run=vocoder_run)
    assert [c["name"] for c in table["columns"]] == sorted(PAIRED)
    MetricResult.objects.filter(checkpoint=second, name="si_sdr").update(
        metric_version="99", spec_key="x" * 64
    )
    with pytest.raises(ApplicationError) as exc:
        metric_results_compare(MetricResult.objects.filter(name="si_sdr").order_by("checkpoint__step"))
    assert exc.value.message == INCOMPARABLE.format(
        name="si_sdr", first=first, second=second, fields="metric_version"
    )
    labels = [c["label"] for c in run_metric_table(run=vocoder_run)["columns"] if c["name"] == "si_sdr"]
    assert labels == ["si_sdr (spec 1 of 2)", "si_sdr (spec 2 of 2)"]


def test_the_run_table_marks_the_best_checkpoint_per_metric_by_direction(vocoder_run, tmp_path):
    first, job1 = generate(vocoder_run, tmp_path, 1000, seed=0)
    second, job2 = generate(vocoder_run, tmp_path, 2000, seed=1)
    score(job1)
    score(job2)
    table = run_metric_table(run=vocoder_run)
    for index, col in enumerate(table["columns"]):
        values = {row["checkpoint"].pk: row["cells"][index].value for row in table["rows"]}
        expected = (max if col["higher_is_better"] else min)(values, key=values.get)
        assert table["best"][index] == expected


def test_the_run_page_shows_the_metric_table(vocoder_run, tmp_path, admin_client):
    _, job = generate(vocoder_run, tmp_path, 1000)
    score(job)
    page = admin_client.get(f"/runs/{vocoder_run.pk}/").content.decode()
    assert "mrstft/auraloss-default" in page and "★" in page


EMBEDDING_METRICS = [
    "fad/resemblyzer-16k",
    "kad/resemblyzer-16k/rbf-median-ref-x100",
    "speaker_cos/resemblyzer-16k",
]


def test_a_second_checkpoint_embeds_only_its_own_clips_and_reuses_the_reference_statistics(
    vocoder_run, tmp_path
):
    from evalsite.scoring.models import CachedEmbedding, ReferenceStatistics

    vocoder_run.config = {"metrics": EMBEDDING_METRICS}
    vocoder_run.save()
    first, job1 = generate(vocoder_run, tmp_path, 1000, seed=0)
    assert score(job1).status == "done"
    rows = {r.name: r for r in MetricResult.objects.filter(checkpoint=first)}
    assert all(r.status == "done" for r in rows.values()), {r.name: r.error for r in rows.values()}
    fad = rows["fad/resemblyzer-16k"]
    assert fad.value >= 0 and fad.embedder == "resemblyzer-16k" and len(fad.weights_checksum) == 64
    assert fad.preprocess["key"] and fad.reference_fingerprint
    assert (
        -1 <= rows["speaker_cos/resemblyzer-16k"].value <= 1
        and len(rows["speaker_cos/resemblyzer-16k"].per_item) == 4
    )
    embedded_after_first = CachedEmbedding.objects.count()
    assert embedded_after_first == 8  # 4 references + 4 generated clips
    assert ReferenceStatistics.objects.count() == 1

    second, job2 = generate(vocoder_run, tmp_path, 2000, seed=1)
    assert score(job2).status == "done"
    assert CachedEmbedding.objects.count() == embedded_after_first + 4
    assert ReferenceStatistics.objects.count() == 1
    assert MetricResult.objects.get(checkpoint=second, name="fad/resemblyzer-16k").spec_key == fad.spec_key


def test_fad_of_a_checkpoint_whose_outputs_are_the_references_is_zero(vocoder_run, tmp_path):
    vocoder_run.config = {"metrics": ["fad/resemblyzer-16k"]}
    vocoder_run.save()
    ckpt, job = generate(vocoder_run, tmp_path, 1000)
    for g in Generation.objects.filter(checkpoint=ckpt).select_related("item"):
        g.asset = g.item.reference
        g.save()
    score(job)
    fad = MetricResult.objects.get(checkpoint=ckpt, name="fad/resemblyzer-16k")
    assert fad.value == pytest.approx(0, abs=1e-6)
    # A set-level metric has no per-item values to resample: no interval rather than a made-up one.
    assert fad.per_item is None and (fad.ci_low, fad.ci_high) == (None, None) and "ci" not in fad.details


def test_the_detection_stage_stores_events_per_output_finishes_the_checkpoint_and_a_rerun_does_not_double_them(
    vocoder_run, tmp_path
):
    from evalsite.scoring.detection import detection_job_work
    from evalsite.scoring.models import DetectorEvent, DetectorPass

    ckpt, metrics_job = generate(vocoder_run, tmp_path, 1000)
    scored = score(metrics_job)
    detection = Job.objects.get(pk=scored.result["detection_job_id"])
    done = job_execute(job_id=detection.pk, worker="t", work=detection_job_work)
    assert done.status == "done", done.error
    assert DetectorPass.objects.filter(checkpoint=ckpt).count() == 4
    assert done.result["clips"] == 4 and set(done.result["events"]) >= {"clicks", "nan_or_silence"}
    events = DetectorEvent.objects.filter(checkpoint=ckpt).count()
    assert events == sum(done.result["events"].values())
    ckpt.refresh_from_db()
    assert ckpt.status == Checkpoint.Status.DONE
    again = job_execute(
        job_id=Job.objects.create(
            kind="detection", run=vocoder_run, checkpoint=ckpt, params=detection.params
        ).pk,
        worker="t",
        work=detection_job_work,
    )
    assert again.status == "done" and DetectorEvent.objects.filter(checkpoint=ckpt).count() == events
    assert DetectorPass.objects.filter(checkpoint=ckpt).count() == 4
