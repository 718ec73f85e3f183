"""The malformed-input corpus (``tests/malformed.py``) through import, generation and metrics.

Each bad input must end with a clear error on the right object (the import job's report, the
checkpoint's generation job, the metric row), the good inputs beside it must be processed, and
nothing of the bad one may remain: no row, no media file, no cached embedding.
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import models
from evalsite.audio.decoding import AudioValidationError, decode_audio, decoded_from_array
from evalsite.audio.models import AudioAsset
from evalsite.audio.services import audio_asset_store
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_create, job_execute
from evalsite.runs import generation as gen
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.generation_services import generation_job_work
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation
from evalsite.runs.services import checkpoint_register, run_create
from evalsite.scoring.models import CachedEmbedding, MetricResult, ReferenceStatistics
from evalsite.scoring.services import metrics_job_work
from tests.malformed import (
    BAD_AUDIO,
    BAD_CHECKPOINTS,
    write_bad_audio,
    write_bad_checkpoints,
    write_good_audio,
)

pytestmark = pytest.mark.django_db

PAIRED = ["si_sdr", "mrstft/auraloss-default"]


@pytest.fixture(autouse=True)
def fresh_model_cache():
    gen.model_cache.clear()


@pytest.fixture(scope="module")
def bad_audio(tmp_path_factory) -> dict[str, Path]:
    return write_bad_audio(tmp_path_factory.mktemp("bad-audio"))


def tiny_hifigan(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return models.save_checkpoint(
        models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), path
    )


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    d = tmp_path_factory.mktemp("bad-checkpoints")
    marker = d / "code-ran"
    return write_bad_checkpoints(d, tiny_hifigan(d / "good.pt"), marker=marker), marker


def stored_files(media_root: Path) -> list[Path]:
    return sorted(p for p in media_root.rglob("*") if p.is_file()) if media_root.exists() else []


def test_the_corpus_holds_12_bad_audio_files_and_7_bad_checkpoints(bad_audio, bad_checkpoints):
    assert len(BAD_AUDIO) == len(bad_audio) == 12
    assert len(BAD_CHECKPOINTS) == len(bad_checkpoints[0]) == 7
    assert all(path.is_file() for path in [*bad_audio.values(), *bad_checkpoints[0].values()])
    # Cheap on disk although one file holds 2 hours of audio.
    assert sum(path.stat().st_size for path in bad_audio.values()) < 1_000_000


# --- decoding and loading alone ------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_AUDIO, ids=lambda bad: bad.name)
def test_each_bad_audio_file_is_refused_with_its_reason_and_a_message_naming_the_file(bad, bad_audio):
    path = bad_audio[bad.name]
    with pytest.raises(AudioValidationError) as info:
        decode_audio(path)
    assert info.value.reason == bad.reason
    assert str(info.value).startswith(f"{path}: ") and bad.says in str(info.value)


def test_a_short_junk_trailer_after_the_data_chunk_is_tolerated_but_10_ms_of_undeclared_bytes_are_not(
    tmp_path,
):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(1600, np.int16), 16000, subtype="PCM_16")  # 100 ms
    whole = clip.read_bytes()
    (tmp_path / "trailer.wav").write_bytes(whole + b"\x01\x02\x03\x04\x05\x06\x07\x08\x09")
    assert decode_audio(tmp_path / "trailer.wav").frames == 1600
    (tmp_path / "hidden.wav").write_bytes(whole + bytes([1]) * 320)  # 10 ms of 16-bit mono at 16 kHz
    with pytest.raises(AudioValidationError) as info:
        decode_audio(tmp_path / "hidden.wav")
    assert info.value.reason == "undeclared_data"
    assert "declares 3200 data bytes but 320 more bytes follow them" in str(info.value)


@pytest.mark.parametrize("bad", BAD_CHECKPOINTS, ids=lambda bad: bad.name)
def test_each_bad_checkpoint_is_refused_with_a_load_error_naming_the_file(bad, bad_checkpoints, monkeypatch):
    paths, marker = bad_checkpoints
    built_on = []
    real_build = models.checkpoint.build_model

    def recording_build(family, config, **kwargs):
        built_on.append(torch.get_default_device().type)
        return real_build(family, config, **kwargs)

    monkeypatch.setattr(models.checkpoint, "build_model", recording_build)
    with pytest.raises(models.ModelLoadError) as info:
        models.load(paths[bad.name], family="hifigan")
    assert bad.says in str(info.value) and f"file: {paths[bad.name]}" in str(info.value)
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    if bad.name == "huge_config.pt":
        assert built_on == ["meta"]  # refused from its size on the meta device: nothing was allocated


# --- import ---------------------------------------------------------------------------------------


def test_an_import_job_reports_every_bad_file_by_path_and_reason_and_imports_the_good_files_beside_them(
    tmp_path, media, eager, django_capture_on_commit_callbacks, monkeypatch
):
    folder = tmp_path / "corpus"
    bad_paths = write_bad_audio(folder)
    write_good_audio(folder, n=2)
    decoded = []
    real_read = sf.SoundFile.read

    def recording_read(self, *args, **kwargs):
        decoded.append(Path(self.name).name)
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", recording_read)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": "corpus", "source": str(folder)})
    job.refresh_from_db()

    assert job.status == Job.Status.DONE, job.error
    assert (job.result["total"], job.result["created"]) == (14, 2)
    errors = {Path(e["where"]).name: e for e in job.result["errors"]}
    assert set(errors) == {bad.name for bad in BAD_AUDIO}
    for bad in BAD_AUDIO:
        assert errors[bad.name]["reason"] == bad.reason, bad.name
        assert errors[bad.name]["message"].startswith(f"{bad_paths[bad.name]}: "), bad.name
        assert bad.says in errors[bad.name]["message"], bad.name
    assert "two_hours.flac" not in decoded  # refused from its header: not one sample was decoded
    assert set(EvalItem.objects.values_list("key", flat=True)) == {"good0", "good1"}
    assert AudioAsset.objects.count() == 2 and len(stored_files(media)) == 2


def test_the_duration_limit_is_the_setting_and_its_message_quotes_it(tmp_path, settings):
    settings.EVALSITE_MAX_AUDIO_DURATION_S = 0.25
    write_good_audio(tmp_path / "clips", n=1)  # 0.4 s
    report = evalset_import(name="short-limit", source=tmp_path / "clips")
    assert [(e.reason, e.message) for e in report.errors] == [
        ("too_long", f"{tmp_path / 'clips' / 'good0.wav'}: 0.4 s is longer than the 0.25 s limit")
    ]
    assert not AudioAsset.objects.exists()


# --- generation -----------------------------------------------------------------------------------


def speech_set(tmp_path: Path, n: int) -> EvalSet:
    write_good_audio(tmp_path / "clips", n=n)
    return EvalSet.objects.get(pk=evalset_import(name="speech", source=tmp_path / "clips").eval_set_id)


def test_each_bad_checkpoint_fails_its_own_job_by_file_and_problem_while_a_good_one_beside_them_is_generated_and_scored(
    tmp_path, media, eager, django_capture_on_commit_callbacks
):
    run, _ = run_create(
        name="hifigan-tiny",
        kind="vocoder",
        model_family="hifigan",
        eval_set=speech_set(tmp_path, 3),
        config={"metrics": PAIRED},
    )
    good = tiny_hifigan(tmp_path / "ckpt" / "good.pt")
    marker = tmp_path / "code-ran"
    bad_paths = write_bad_checkpoints(tmp_path / "ckpt", good, marker=marker)
    references = AudioAsset.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        bad = {
            name: checkpoint_register(run=run, step=step, uri=str(path))[0]
            for step, (name, path) in enumerate(bad_paths.items(), start=1)
        }
        good_ckpt, _ = checkpoint_register(run=run, step=100, uri=str(good))

    for entry in BAD_CHECKPOINTS:
        ckpt = Checkpoint.objects.get(pk=bad[entry.name].pk)
        # Only its generation job: no metrics job follows a checkpoint that did not load.
        job = Job.objects.get(checkpoint=ckpt)
        assert (job.kind, job.status, ckpt.status) == ("generation", "failed", "failed"), entry.name
        assert job.error.startswith(f"cannot load checkpoint {bad_paths[entry.name]}: "), job.error
        assert entry.says in job.error, job.error
    assert not Generation.objects.filter(checkpoint__in=bad.values()).exists()
    assert not MetricResult.objects.filter(checkpoint__in=bad.values()).exists()
    assert not marker.exists(), "unpickling a checkpoint ran its code"

    good_ckpt.refresh_from_db()
    assert good_ckpt.status == Checkpoint.Status.DONE
    outputs = Generation.objects.filter(checkpoint=good_ckpt)
    assert sorted(outputs.filter(status="done").values_list("item__key", flat=True)) == [
        "good0",
        "good1",
        "good2",
    ]
    rows = MetricResult.objects.filter(checkpoint=good_ckpt)
    assert {r.name: (r.status, len(r.per_item)) for r in rows} == {name: ("done", 3) for name in PAIRED}
    # Only the good checkpoint's three outputs were stored next to the three references.
    assert AudioAsset.objects.count() == references + 3 and len(stored_files(media)) == references + 3


def test_references_damaged_on_disk_since_their_import_fail_only_their_own_items_in_generation(
    tmp_path, media
):
    eval_set = speech_set(tmp_path, 4)
    run, _ = run_create(
        name="voc", kind="vocoder", model_family="hifigan", eval_set=eval_set, config={"metrics": []}
    )
    refs = {item.key: item.reference for item in eval_set.items.select_related("reference")}
    nan = np.full(8000, 0.1, np.float32)
    nan[5] = np.nan
    sf.write(refs["good0"].file.path, nan, 22050, subtype="FLOAT")
    Path(refs["good1"].file.path).unlink()
    ckpt, _ = checkpoint_register(run=run, step=1, uri=str(tiny_hifigan(tmp_path / "g.pt")), evaluate=False)

    job = job_execute(
        job_id=Job.objects.create(kind="generation", run=run, checkpoint=ckpt).pk,
        worker="t",
        work=generation_job_work,
    )

    assert job.status == "done", job.error
    assert (job.result["done"], job.result["failed"]) == (2, 2)
    by_key = {g.item.key: g for g in Generation.objects.filter(checkpoint=ckpt).select_related("item")}
    assert by_key["good0"].error == (
        f"item 'good0': its reference audio {refs['good0'].file.name} cannot be used: 1 NaN/Inf samples"
    )
    assert by_key["good1"].error == (
        f"item 'good1': its reference audio {refs['good1'].file.name} cannot be used: the stored file is missing"
    )
    assert all(by_key[k].status == "failed" and by_key[k].asset_id is None for k in ("good0", "good1"))
    assert all(by_key[k].status == "done" for k in ("good2", "good3"))


# --- metrics --------------------------------------------------------------------------------------


@pytest.fixture
def generated(tmp_path):
    """A vocoder run over 6 items, its checkpoint generated, and the metrics job not yet run."""

    def make(metrics=PAIRED):
        run, _ = run_create(
            name="voc",
            kind="vocoder",
            model_family="hifigan",
            eval_set=speech_set(tmp_path, 6),
            config={"metrics": metrics},
        )
        ckpt, _ = checkpoint_register(
            run=run, step=1, uri=str(tiny_hifigan(tmp_path / "g.pt")), evaluate=False
        )
        job = job_execute(
            job_id=Job.objects.create(kind="generation", run=run, checkpoint=ckpt).pk,
            worker="t",
            work=generation_job_work,
        )
        assert job.status == "done", job.error
        return ckpt, Job.objects.get(pk=job.result["metrics_job_id"])

    return make


def output(ckpt: Checkpoint, key: str) -> Generation:
    return Generation.objects.select_related("asset", "item__reference").get(checkpoint=ckpt, item__key=key)


def score(job: Job) -> Job:
    return job_execute(job_id=job.pk, worker="t", work=metrics_job_work)


def test_items_whose_stored_audio_went_bad_are_left_out_by_name_and_reason_and_the_rest_is_scored(generated):
    ckpt, metrics_job = generated()
    nan = np.full(8000, 0.1, np.float32)
    nan[100:110] = np.nan
    g0, g1, g2, g3 = (output(ckpt, f"good{i}") for i in range(4))
    sf.write(g0.asset.file.path, nan, 22050, subtype="FLOAT")
    sf.write(g1.asset.file.path, np.zeros((0, 1), np.float32), 22050, subtype="FLOAT")
    Path(g2.asset.file.path).write_bytes(b"RIFF\x00\x00")
    Path(g3.item.reference.file.path).unlink()

    job = score(metrics_job)

    assert job.status == "done", job.error
    left_out = job.result["left_out"]
    assert set(left_out) == {"good0", "good1", "good2", "good3"}
    assert (
        left_out["good0"]
        == f"item 'good0' left out: generated audio {g0.asset.file.name}: 10 NaN/Inf samples"
    )
    assert (
        left_out["good1"] == f"item 'good1' left out: generated audio {g1.asset.file.name}: no audio frames"
    )
    assert left_out["good2"].startswith(
        f"item 'good2' left out: generated audio {g2.asset.file.name}: the stored file cannot be read ("
    )
    assert left_out["good3"] == (
        f"item 'good3' left out: reference audio {g3.item.reference.file.name}: the stored file is missing"
    )
    rows = list(MetricResult.objects.filter(checkpoint=ckpt))
    assert sorted(r.name for r in rows) == sorted(PAIRED)  # one row per metric, nothing half-written
    for row in rows:
        assert (row.status, row.n, set(row.per_item)) == ("done", 2, {"good4", "good5"}), row.error
        assert all(np.isfinite(v) for v in row.per_item.values())
        assert set(left_out.values()) <= set(row.warnings)


def test_a_checkpoint_none_of_whose_outputs_can_be_read_fails_its_metrics_job_with_the_first_reason(
    generated,
):
    ckpt, metrics_job = generated()
    for g in Generation.objects.filter(checkpoint=ckpt).select_related("asset"):
        Path(g.asset.file.path).unlink()
    job = score(metrics_job)
    first = output(ckpt, "good0").asset.file.name
    assert job.status == "failed"
    assert job.error == (
        f"no output of checkpoint {ckpt} can be scored; first: item 'good0' left out: "
        f"generated audio {first}: the stored file is missing"
    )
    assert Checkpoint.objects.get(pk=ckpt.pk).status == Checkpoint.Status.FAILED
    assert not MetricResult.objects.exists()


def test_silent_outputs_leave_named_gaps_in_si_sdr_and_fail_it_only_when_no_item_has_a_value(generated):
    ckpt, metrics_job = generated()

    def silence(key: str) -> None:
        g = output(ckpt, key)
        g.asset, _ = audio_asset_store(
            decoded=decoded_from_array(np.zeros(g.asset.frames, np.float32), 22050)
        )
        g.save()

    silence("good0")
    job = score(metrics_job)
    assert job.status == "done", job.error
    si_sdr = MetricResult.objects.get(checkpoint=ckpt, name="si_sdr")
    assert si_sdr.status == "done" and si_sdr.per_item["good0"] is None and si_sdr.n == 6
    assert "no finite value for item(s) 'good0' (silent or constant audio?)" in si_sdr.warnings
    assert np.isfinite(
        MetricResult.objects.get(checkpoint=ckpt, name="mrstft/auraloss-default").per_item["good0"]
    )

    for i in range(1, 6):
        silence(f"good{i}")
    again = score(
        Job.objects.create(kind="metrics", run=ckpt.run, checkpoint=ckpt, params=metrics_job.params)
    )
    assert again.status == "done", again.error
    si_sdr.refresh_from_db()
    keys = ", ".join(f"'good{i}'" for i in range(6))
    assert (si_sdr.status, si_sdr.value) == ("failed", None)
    assert si_sdr.error == f"the metric produced no finite value (every item gave NaN/Inf: {keys})"
    assert MetricResult.objects.get(checkpoint=ckpt, name="mrstft/auraloss-default").status == "done"
    assert again.result["failed"] == {"si_sdr": si_sdr.error}


def test_a_reference_set_clip_that_went_bad_fails_the_distribution_metric_by_file_and_is_never_cached(
    generated,
):
    ckpt, metrics_job = generated(metrics=["si_sdr", "fad/resemblyzer-16k"])
    # good5's output failed, so its reference is only in the reference set (not checked as a pair).
    Generation.objects.filter(checkpoint=ckpt, item__key="good5").update(
        status="failed", asset=None, error="x"
    )
    reference = EvalItem.objects.select_related("reference").get(key="good5").reference
    nan = np.full(8000, 0.1, np.float32)
    nan[:3] = np.nan
    sf.write(reference.file.path, nan, 22050, subtype="FLOAT")

    job = score(metrics_job)

    assert job.status == "done", job.error
    fad = MetricResult.objects.get(checkpoint=ckpt, name="fad/resemblyzer-16k")
    assert (fad.status, fad.value) == ("failed", None)
    assert (
        fad.error == f"audio {reference.file.name} cannot be embedded by resemblyzer-16k: 3 NaN/Inf samples"
    )
    si_sdr = MetricResult.objects.get(checkpoint=ckpt, name="si_sdr")
    assert si_sdr.status == "done" and set(si_sdr.per_item) == {f"good{i}" for i in range(5)}
    references = EvalItem.objects.values_list("reference__content_hash", flat=True)
    assert not CachedEmbedding.objects.filter(content_hash__in=references).exists()
    assert not ReferenceStatistics.objects.exists()


def detect(ckpt: Checkpoint) -> Job:
    from evalsite.scoring.detection import detection_job_work

    return job_execute(
        job_id=Job.objects.create(
            kind="detection", run=ckpt.run, checkpoint=ckpt, params={"params_hash": ""}
        ).pk,
        worker="t",
        work=detection_job_work,
    )


def test_outputs_that_went_bad_are_left_out_of_the_detectors_by_name_and_the_checkpoint_still_finishes(
    generated,
):
    from evalsite.scoring.models import DetectorEvent, DetectorPass

    ckpt, _ = generated(metrics=["si_sdr"])
    assert detect(ckpt).status == "done"
    assert DetectorPass.objects.filter(checkpoint=ckpt).count() == 6
    g0, g1 = output(ckpt, "good0"), output(ckpt, "good1")
    nan = np.full(8000, 0.1, np.float32)
    nan[:5] = np.nan
    sf.write(g0.asset.file.path, nan, 22050, subtype="FLOAT")
    Path(g1.item.reference.file.path).unlink()

    job = detect(ckpt)

    assert job.status == "done", job.error
    assert job.result["clips"] == 5
    assert job.result["left_out"] == {
        "good0": f"item 'good0' left out: generated audio {g0.asset.file.name}: 5 NaN/Inf samples",
        "good1 (reference)": f"item 'good1': reference audio {g1.item.reference.file.name}: the stored file is "
        "missing; detectors that compare with it were skipped",
    }
    # The bad clip keeps no pass or events of the earlier run; the one without its reference was still checked.
    assert not DetectorPass.objects.filter(generation=g0).exists()
    assert not DetectorEvent.objects.filter(generation=g0).exists()
    assert DetectorPass.objects.filter(checkpoint=ckpt).count() == 5
    assert Checkpoint.objects.get(pk=ckpt.pk).status == Checkpoint.Status.DONE


def test_a_checkpoint_none_of_whose_outputs_can_be_read_fails_its_detection_job_instead_of_staying_detecting(
    generated,
):
    ckpt, _ = generated(metrics=["si_sdr"])
    for g in Generation.objects.filter(checkpoint=ckpt).select_related("asset"):
        Path(g.asset.file.path).unlink()
    job = detect(ckpt)
    first = output(ckpt, "good0").asset.file.name
    assert job.status == "failed"
    assert job.error == (
        f"no output of checkpoint {ckpt} can go through the detectors; first: item 'good0' left "
        f"out: generated audio {first}: the stored file is missing"
    )
    assert Checkpoint.objects.get(pk=ckpt.pk).status == Checkpoint.Status.FAILED
