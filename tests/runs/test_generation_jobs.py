"""Generation jobs on SQLite with eager, in-process execution and tiny random checkpoints."""

import numpy as np
import pytest
import torch

import models
from evalsite.audio.models import AudioAsset
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_execute
from evalsite.runs import generation as gen
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.generation_services import KIND_MISMATCH, RATE_MISMATCH, generation_job_work
from evalsite.runs.models import Checkpoint, Generation
from evalsite.runs.services import checkpoint_register, run_create
from tests.factories import write_tone

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    gen.model_cache.clear()


def tiny_checkpoint(tmp_path, cls, preset="tiny", name=None, seed=0, mutate=None):
    torch.manual_seed(seed)
    model = cls.from_config(cls.preset(preset))
    if mutate:
        mutate(model)
    path = tmp_path / (name or f"{cls.family}-{preset}.pt")
    models.save_checkpoint(model, path)
    return path


def eval_set_at(tmp_path, rate, n=3, name="es"):
    d = tmp_path / f"clips-{rate}"
    d.mkdir(exist_ok=True)
    for i in range(n):
        write_tone(d / f"utt{i}.wav", freq=200 + 50 * i, seconds=0.3 + 0.1 * i, rate=rate, seed=i)
    report = evalset_import(name=name, source=d)
    from evalsite.runs.models import EvalSet

    return EvalSet.objects.get(pk=report.eval_set_id)


def run_generation(run, uri, step=1000, **params):
    ckpt, _ = checkpoint_register(run=run, step=step, uri=str(uri), evaluate=False)
    job = Job.objects.create(kind=Job.Kind.GENERATION, run=run, checkpoint=ckpt, params=params)
    return job_execute(job_id=job.pk, worker="test", work=generation_job_work), ckpt


def test_a_vocoder_checkpoint_resynthesises_every_item_at_the_reference_length(tmp_path):
    es = eval_set_at(tmp_path, 22050)
    run, _ = run_create(name="voc", kind="vocoder", model_family="hifigan", eval_set=es)
    job, ckpt = run_generation(run, tiny_checkpoint(tmp_path, models.HiFiGANVocoder))
    assert job.status == "done", job.error
    gens = Generation.objects.filter(checkpoint=ckpt).select_related("asset", "item__reference")
    assert gens.count() == 3 and all(g.status == "done" for g in gens)
    for g in gens:
        assert g.asset.sample_rate == 22050 and g.asset.frames == g.item.reference.frames
        assert g.device == "cpu" and g.wall_time_s > 0
    ckpt.refresh_from_db()
    assert ckpt.status == Checkpoint.Status.SCORING and len(ckpt.sha256) == 64 and ckpt.size_bytes > 0
    assert job.result["done"] == 3 and job.result["realtime_factor"] > 0
    metrics_job = Job.objects.get(pk=job.result["metrics_job_id"])
    assert metrics_job.kind == "metrics" and metrics_job.params == {"params_hash": job.result["params_hash"]}


def test_a_generation_job_is_resumable_and_skips_items_already_generated(tmp_path):
    es = eval_set_at(tmp_path, 22050)
    run, _ = run_create(name="voc", kind="vocoder", model_family="hifigan", eval_set=es)
    uri = tiny_checkpoint(tmp_path, models.HiFiGANVocoder)
    job, ckpt = run_generation(run, uri)
    Generation.objects.filter(checkpoint=ckpt, item__key="utt1").delete()
    again = Job.objects.create(kind=Job.Kind.GENERATION, run=run, checkpoint=ckpt)
    again = job_execute(job_id=again.pk, worker="test", work=generation_job_work)
    assert again.result["skipped_already_done"] == 2 and again.result["done"] == 3
    assert Generation.objects.filter(checkpoint=ckpt).count() == 3
    assert gen.model_cache.loads == 1  # the worker kept the model


def test_a_tokenizer_reconstruction_records_tokens_per_second_and_bitrate(tmp_path):
    es = eval_set_at(tmp_path, 16000)
    run, _ = run_create(name="tok", kind="tokenizer", model_family="sat", eval_set=es)
    job, ckpt = run_generation(run, tiny_checkpoint(tmp_path, models.SATTokenizer))
    assert job.status == "done", job.error
    model = models.load(ckpt.uri)
    g = Generation.objects.filter(checkpoint=ckpt).first()
    assert g.info["tokens_per_second"] == pytest.approx(model.tokens_per_second)
    assert g.info["bits_per_second"] == pytest.approx(model.bits_per_second)
    assert job.result["bits_per_second"] == pytest.approx(model.bits_per_second)


def test_a_class_conditional_generator_makes_one_seeded_clip_per_item_and_repeats_it_exactly(tmp_path):
    es = eval_set_at(tmp_path, 16000)
    for i, item in enumerate(es.items.order_by("key")):
        item.class_label = ["dog", "rain", "dog"][i]
        item.save()
    run, _ = run_create(
        name="gen",
        kind="generator",
        model_family="aar",
        eval_set=es,
        config={"class_names": ["dog", "rain", "siren"]},
    )
    uri = tiny_checkpoint(tmp_path, models.AARGenerator, preset="tiny-class")
    job, ckpt = run_generation(run, uri, duration_s=0.5, seed=7)
    assert job.status == "done", job.error
    gens = {g.item.key: g for g in Generation.objects.filter(checkpoint=ckpt).select_related("item", "asset")}
    assert {g.seed for g in gens.values()} == {gen.item_seed(7, k) for k in gens}
    job2, ckpt2 = run_generation(run, uri, step=2000, duration_s=0.5, seed=7)
    again = {g.item.key: g.asset.content_hash for g in Generation.objects.filter(checkpoint=ckpt2)}
    assert again == {k: g.asset.content_hash for k, g in gens.items()}


def test_a_generator_samples_with_the_official_settings_by_default_and_stores_them_with_each_output(
    tmp_path, monkeypatch
):
    es = eval_set_at(tmp_path, 16000, n=2)
    es.items.update(class_label="dog")
    run, _ = run_create(
        name="gen", kind="generator", model_family="aar", eval_set=es, config={"class_names": ["dog"]}
    )
    uri = tiny_checkpoint(tmp_path, models.AARGenerator, preset="tiny-class")
    calls = []
    original = models.AARGenerator.generate

    def spy(self, cond, **kwargs):
        calls.append({k: kwargs[k] for k in ("cfg_scale", "top_k", "top_p", "temperature")})
        return original(self, cond, **kwargs)

    monkeypatch.setattr(models.AARGenerator, "generate", spy)
    job, ckpt = run_generation(run, uri, duration_s=0.2)
    assert job.status == "done", job.error
    official = {"cfg_scale": 4.0, "top_k": 200, "top_p": 0.95, "temperature": 1.0}
    assert calls == [official, official]
    stored = list(Generation.objects.filter(checkpoint=ckpt).values_list("params", "params_hash"))
    assert len(stored) == 2
    assert all({k: params[k] for k in official} == official for params, _ in stored)
    assert {h for _, h in stored} == {job.result["params_hash"]}

    pure, ckpt2 = run_generation(run, uri, step=2000, duration_s=0.2, top_k=None, top_p=None)
    assert pure.result["params_hash"] != job.result["params_hash"]
    assert {
        (p["top_k"], p["top_p"])
        for p in Generation.objects.filter(checkpoint=ckpt2).values_list("params", flat=True)
    } == {(None, None)}


def test_a_generator_item_without_a_usable_condition_fails_alone_with_the_reason(tmp_path):
    es = eval_set_at(tmp_path, 16000)
    es.items.filter(key="utt0").update(class_label="dog")
    es.items.exclude(key="utt0").update(class_label="unicorn")
    run, _ = run_create(
        name="gen", kind="generator", model_family="aar", eval_set=es, config={"class_names": ["dog"]}
    )
    job, ckpt = run_generation(
        run, tiny_checkpoint(tmp_path, models.AARGenerator, preset="tiny-class"), duration_s=0.3
    )
    assert job.status == "done"
    failed = Generation.objects.filter(checkpoint=ckpt, status="failed")
    assert failed.count() == 2 and "'unicorn' is not in the run's config class_names" in failed.first().error


def test_a_missing_checkpoint_fails_the_job_naming_the_file_and_marks_the_checkpoint_failed(tmp_path):
    es = eval_set_at(tmp_path, 22050)
    run, _ = run_create(name="voc", kind="vocoder", model_family="hifigan", eval_set=es)
    job, ckpt = run_generation(run, tmp_path / "g_00001000")
    assert job.status == "failed" and "g_00001000" in job.error
    ckpt.refresh_from_db()
    assert ckpt.status == Checkpoint.Status.FAILED and not Generation.objects.exists()


def test_a_checkpoint_of_the_wrong_family_fails_naming_the_file_and_the_expected_family(tmp_path):
    es = eval_set_at(tmp_path, 16000)
    run, _ = run_create(name="tok", kind="tokenizer", model_family="sat", eval_set=es)
    job, _ = run_generation(run, tiny_checkpoint(tmp_path, models.HiFiGANVocoder))
    assert job.status == "failed"
    assert job.error.startswith("cannot load checkpoint") and "hifigan-tiny.pt" in job.error
    assert "expected family: sat" in job.error


def test_a_checkpoint_of_another_kind_than_the_run_is_refused(tmp_path):
    es = eval_set_at(tmp_path, 16000)
    run, _ = run_create(name="voc", kind="vocoder", model_family="auto", eval_set=es)
    uri = tiny_checkpoint(tmp_path, models.SATTokenizer)
    job, _ = run_generation(run, uri)
    assert job.error == KIND_MISMATCH.format(
        run="voc", run_kind="vocoder", uri=uri, model_kind="tokenizer", family="sat"
    )


def test_an_eval_set_at_another_sample_rate_is_refused_unless_resampling_is_asked_for(tmp_path):
    es = eval_set_at(tmp_path, 16000)
    run, _ = run_create(name="voc", kind="vocoder", model_family="hifigan", eval_set=es)
    uri = tiny_checkpoint(tmp_path, models.HiFiGANVocoder)
    job, _ = run_generation(run, uri)
    assert job.error == RATE_MISMATCH.format(eval_set="es", rates="16000", model_rate=22050)
    job, ckpt = run_generation(run, uri, step=2000, resample=True)
    assert job.status == "done" and AudioAsset.objects.filter(sample_rate=22050).count() == 3


def test_nan_output_is_stored_as_a_flagged_failure_not_as_audio(tmp_path):
    es = eval_set_at(tmp_path, 22050)
    run, _ = run_create(name="voc", kind="vocoder", model_family="hifigan", eval_set=es)

    def poison(model):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))

    job, ckpt = run_generation(run, tiny_checkpoint(tmp_path, models.HiFiGANVocoder, mutate=poison))
    assert job.status == "failed" and job.error.startswith("every item failed")
    failed = Generation.objects.filter(checkpoint=ckpt)
    assert failed.count() == 3 and all(g.status == "failed" and g.asset_id is None for g in failed)
    assert "NaN/Inf" in failed.first().error
    assert AudioAsset.objects.filter(sample_rate=22050, generations__isnull=False).count() == 0


def test_registering_the_same_step_twice_returns_the_first_checkpoint_and_queues_one_job(
    tmp_path, django_capture_on_commit_callbacks
):
    es = eval_set_at(tmp_path, 22050)
    run, _ = run_create(name="voc", kind="vocoder", model_family="hifigan", eval_set=es)
    uri = str(tiny_checkpoint(tmp_path, models.HiFiGANVocoder))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first, created = checkpoint_register(run=run, step=5, uri=uri)
        second, created_again = checkpoint_register(run=run, step=5, uri=uri)
    assert created and not created_again and first.pk == second.pk
    assert Job.objects.filter(kind="generation", checkpoint=first).count() == 1 and len(callbacks) == 1


def test_length_buckets_group_similar_lengths_and_cover_every_index():
    buckets = gen.length_buckets([50, 10, 40, 20, 30], 2)
    assert buckets == [[1, 3], [4, 2], [0]]


def test_a_cuda_out_of_memory_error_is_retried_with_smaller_batches():
    calls = []

    def fn(batch):
        calls.append(batch.shape[0])
        if batch.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch * 2

    waves = [np.full(n, i, dtype=np.float32) for i, n in enumerate([5, 7, 6])]
    outs = {o.index: o.audio for o in gen.run_waveform_batches(fn, waves, batch_size=4, device="cpu")}
    assert calls[0] == 3 and max(calls[1:]) <= 2
    assert all(np.array_equal(outs[i], waves[i] * 2) for i in range(3))


def test_a_text_conditioned_generator_embeds_item_text_with_clap_or_names_the_missing_weights(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EVALSITE_MODEL_STORE", str(tmp_path / "store"))
    es = eval_set_at(tmp_path, 16000, n=2)
    es.items.filter(key="utt0").update(text="a dog barks twice")
    vector = [0.01 * i for i in range(512)]
    es.items.filter(key="utt1").update(metadata={"condition": vector})
    run, _ = run_create(name="gen", kind="generator", model_family="aar", eval_set=es)
    job, ckpt = run_generation(run, tiny_checkpoint(tmp_path, models.AARGenerator), duration_s=0.3)
    by_key = {g.item.key: g for g in Generation.objects.filter(checkpoint=ckpt).select_related("item")}
    assert by_key["utt1"].status == "done"  # the stored condition vector was used
    assert by_key["utt0"].status == "failed"
    assert "cannot embed its text" in by_key["utt0"].error and "630k-audioset-best.pt" in by_key["utt0"].error
    assert str(tmp_path / "store") in by_key["utt0"].error
