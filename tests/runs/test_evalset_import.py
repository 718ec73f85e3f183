import json

import numpy as np
import pytest
import soundfile as sf
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from evalsite.audio.models import AudioAsset
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_create
from evalsite.runs.evalset_services import ITEM_KEY_CONFLICT, MANIFEST_NO_PATH_COLUMN, evalset_import
from evalsite.runs.models import EvalItem, EvalSet
from tests.factories import write_tone

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def stored_files(media_root):
    return sorted(p for p in media_root.rglob("*") if p.is_file()) if media_root.exists() else []


@pytest.fixture
def mixed_dir(tmp_path):
    d = tmp_path / "clips"
    (d / "sub").mkdir(parents=True)
    write_tone(d / "a.wav", seed=1)
    write_tone(d / "b.flac", seed=2, fmt="FLAC")
    write_tone(d / "sub" / "c.wav", seed=3)
    (d / "picture.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    sf.write(str(d / "empty.wav"), np.zeros((0, 1), dtype=np.float32), 22050)
    bad = np.full(2205, 0.1, dtype=np.float32)
    bad[100] = np.nan
    sf.write(str(d / "nan.wav"), bad, 22050, subtype="FLOAT")
    (d / "notes.txt").write_text("not audio")
    return d


def test_good_files_are_imported_and_each_bad_file_is_reported_with_its_path_and_reason(mixed_dir, media):
    report = evalset_import(name="set", source=mixed_dir)
    assert report.created == 3
    reasons = {e.where.rsplit("/", 1)[-1]: e.reason for e in report.errors}
    assert reasons == {"picture.wav": "undecodable", "empty.wav": "empty", "nan.wav": "non_finite"}
    assert all(str(mixed_dir) in e.message for e in report.errors)
    keys = set(EvalItem.objects.values_list("key", flat=True))
    assert keys == {"a", "b", "sub/c"}
    assert AudioAsset.objects.count() == 3 and len(stored_files(media)) == 3


def test_reimporting_the_same_directory_creates_no_duplicates(mixed_dir, media):
    evalset_import(name="set", source=mixed_dir)
    again = evalset_import(name="set", source=mixed_dir)
    assert (again.created, again.unchanged) == (0, 3)
    assert EvalItem.objects.count() == 3 and AudioAsset.objects.count() == 3
    assert len(stored_files(media)) == 3


def test_the_same_audio_in_wav_and_flac_is_stored_once(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_tone(d / "x.wav", seed=7)
    write_tone(d / "y.flac", seed=7, fmt="FLAC")
    report = evalset_import(name="s", source=d)
    assert report.created == 2
    assert AudioAsset.objects.count() == 1
    assert EvalItem.objects.get(key="x").reference_id == EvalItem.objects.get(key="y").reference_id


def test_asset_rows_carry_decoded_properties(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_tone(d / "s.wav", seconds=1.0, rate=16000)
    evalset_import(name="s", source=d)
    asset = AudioAsset.objects.get()
    assert (asset.sample_rate, asset.channels, asset.frames) == (16000, 1, 16000)
    assert asset.duration_s == pytest.approx(1.0)
    assert asset.peak == pytest.approx(0.3, abs=1e-3)
    assert asset.loudness_lufs is not None and -20 < asset.loudness_lufs < -5
    assert asset.file.name.endswith(f"{asset.content_hash}.wav")


def test_a_csv_manifest_attaches_text_speaker_label_and_extra_columns_as_metadata(tmp_path):
    write_tone(tmp_path / "one.wav", seed=1)
    write_tone(tmp_path / "two.wav", seed=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,text,speaker,label,gender\none.wav,Hello there.,spk1,greeting,f\ntwo.wav,Bye.,spk2,,m\n,,,,\n"
    )
    report = evalset_import(name="m", source=manifest)
    assert report.created == 2
    assert [e.reason for e in report.errors] == ["manifest_row"] and report.errors[0].where.endswith(
        "m.csv:4"
    )
    one = EvalItem.objects.get(key="one")
    assert (one.text, one.speaker, one.class_label, one.metadata) == (
        "Hello there.",
        "spk1",
        "greeting",
        {"gender": "f"},
    )


def test_a_jsonl_manifest_reports_a_broken_line_and_imports_the_rest(tmp_path):
    write_tone(tmp_path / "one.wav", seed=1)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"path": "one.wav", "id": "utt-1", "caption": "a dog barks"})
        + "\n{broken\n"
        + json.dumps({"path": "missing.wav"})
        + "\n"
    )
    report = evalset_import(name="j", source=manifest)
    assert report.created == 1
    assert {e.reason for e in report.errors} == {"manifest_row", "missing_file"}
    assert EvalItem.objects.get().key == "utt-1" and EvalItem.objects.get().text == "a dog barks"


def test_a_manifest_without_a_path_column_is_refused_whole(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,text\na.wav,x\n")
    with pytest.raises(ApplicationError) as exc:
        evalset_import(name="m", source=manifest)
    assert exc.value.message == MANIFEST_NO_PATH_COLUMN.format(source=manifest, columns="file, text")
    assert not EvalSet.objects.exists()


def test_a_reimport_with_new_text_updates_the_item(tmp_path):
    write_tone(tmp_path / "one.wav", seed=1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,text\none.wav,old\n")
    evalset_import(name="m", source=manifest)
    manifest.write_text("path,text\none.wav,new\n")
    report = evalset_import(name="m", source=manifest)
    assert report.updated == 1 and EvalItem.objects.get().text == "new"


def test_different_audio_under_an_existing_key_is_rejected_and_leaves_no_stored_file(tmp_path, media):
    d = tmp_path / "d"
    d.mkdir()
    write_tone(d / "a.wav", seed=1)
    evalset_import(name="s", source=d)
    files_before = stored_files(media)
    write_tone(d / "a.wav", seed=2)
    report = evalset_import(name="s", source=d)
    assert [e.reason for e in report.errors] == ["conflict"]
    assert ITEM_KEY_CONFLICT.format(key="a", eval_set="s") in report.errors[0].message
    assert AudioAsset.objects.count() == 1 and stored_files(media) == files_before


def test_a_failure_while_saving_the_item_rolls_back_the_asset_row_and_its_file(tmp_path, media, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    write_tone(d / "a.wav", seed=1)

    def explode(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(EvalItem, "save", explode)
    report = evalset_import(name="s", source=d)
    assert [(e.reason, e.message) for e in report.errors] == [
        ("error", f"{d / 'a.wav'}: import failed (RuntimeError: disk full)")
    ]
    assert not AudioAsset.objects.exists() and stored_files(media) == []


def test_the_management_command_prints_a_summary_and_rejections(mixed_dir, capsys):
    call_command("import_evalset", str(mixed_dir), "--name", "cmd", "--no-progress")
    out, err = capsys.readouterr()
    assert "3 created" in out and "3 rejected of 6" in out
    assert "rejected [non_finite]" in err and "nan.wav" in err
    with pytest.raises(CommandError, match="3 file\\(s\\) rejected"):
        call_command("import_evalset", str(mixed_dir), "--name", "cmd", "--strict", "--no-progress")


def test_the_management_command_fails_when_nothing_could_be_imported(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"garbage")
    with pytest.raises(CommandError, match="no file could be imported"):
        call_command("import_evalset", str(tmp_path), "--name", "bad", "--no-progress")


def test_an_import_job_runs_through_the_eager_task_and_a_second_delivery_changes_nothing(
    mixed_dir, settings, django_capture_on_commit_callbacks
):
    from evalsite.runs.tasks import evalset_import_task

    settings.CELERY_TASK_ALWAYS_EAGER = True
    from evalsite.celery import app

    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            job = job_create(kind=Job.Kind.IMPORT_EVALSET, params={"name": "eager", "source": str(mixed_dir)})
        job.refresh_from_db()
        assert job.status == Job.Status.DONE, job.error
        assert job.result["created"] == 3 and len(job.result["errors"]) == 3
        assert job.eval_set.name == "eager"
        evalset_import_task.delay(job.pk)
        job.refresh_from_db()
        assert job.attempts == 1 and EvalItem.objects.count() == 3
    finally:
        app.conf.task_always_eager = False


def test_an_import_job_where_every_file_is_bad_fails_with_the_first_reason(tmp_path):
    from evalsite.jobs.services import job_execute
    from evalsite.runs.evalset_services import evalset_import_job_work

    (tmp_path / "x.wav").write_bytes(b"garbage")
    job = job_create(
        kind=Job.Kind.IMPORT_EVALSET, params={"name": "bad", "source": str(tmp_path)}, enqueue=False
    )
    job = job_execute(job_id=job.pk, worker="w", work=evalset_import_job_work)
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("none of the 1 files could be imported") and "x.wav" in job.error


def test_a_file_truncated_by_a_writer_killed_mid_write_is_replaced_not_adopted(tmp_path, media):
    """Storage writes in place: a worker killed mid-write leaves a short file at the content's path and
    no row. The next store of the same audio must write it whole instead of pointing a row at it."""
    from evalsite.audio.decoding import decode_audio
    from evalsite.audio.services import audio_asset_store

    write_tone(tmp_path / "a.wav", seed=3)
    decoded = decode_audio(tmp_path / "a.wav")
    asset, created = audio_asset_store(decoded=decoded)
    full = default_storage.size(asset.file.name)
    path = default_storage.path(asset.file.name)
    with open(path, "r+b") as fh:
        fh.truncate(full // 3)
    asset.delete()  # the row of the killed attempt never committed

    again, created = audio_asset_store(decoded=decoded)

    assert created and again.file.name == asset.file.name
    assert default_storage.size(again.file.name) == full
    assert decode_audio(path).content_hash == decoded.content_hash
