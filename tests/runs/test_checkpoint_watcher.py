"""The checkpoint-directory watcher: names, files still being written, exactly-once registration."""

import os
import time

import pytest
from django.core.exceptions import ValidationError

from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, WatchedFile
from evalsite.runs.watcher import checkpoints_watch, checkpoints_watch_all, compile_pattern, step_from_name
from tests.factories import EvalSetFactory, RunFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "name, step",
    [
        ("g_00012000", 12000),
        ("g_00012000.pt", 12000),
        ("step=12000.ckpt", 12000),
        ("epoch=3-step=12000.ckpt", 12000),
        ("epoch=3-step=12000-v1.ckpt", 12000),
        ("checkpoint_step_12000.pth", 12000),
        ("do_00012000", None),  # HiFi-GAN's discriminator/optimizer state is not a generator checkpoint
        ("g_00012000.tmp", None),
        (".g_00012000", None),
        ("step=12000.ckpt.part", None),
        ("checkpoint_step_12000.pth~", None),
        ("last.ckpt", None),
        ("notes.txt", None),
    ],
)
def test_built_in_names_give_the_step_and_temporary_names_are_ignored(name, step):
    assert step_from_name(name) == step


def test_a_user_regex_needs_a_step_group_and_finds_the_step():
    pattern = compile_pattern(r"^model-(?P<step>\d+)k\.safetensors$")
    assert step_from_name("model-12k.safetensors", pattern) == 12
    assert step_from_name("g_00012000", pattern) is None
    with pytest.raises(ValidationError, match=r"\(\?P<step>"):
        compile_pattern(r"model-(\d+)")
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        compile_pattern(r"model-(?P<step>\d+")


def test_a_run_with_a_bad_pattern_is_refused_with_the_field_named():
    run = RunFactory.build(checkpoint_pattern="ckpt-(\\d+)")
    with pytest.raises(ValidationError) as info:
        run.full_clean()
    assert "checkpoint_pattern" in info.value.message_dict


def _write(path, size=64, age_s=10.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    old = time.time() - age_s
    os.utime(path, (old, old))


def test_a_checkpoint_is_registered_after_two_scans_saw_it_unchanged_and_only_once(tmp_path, settings):
    settings.EVALSITE_WATCH_SETTLE_S = 2
    run = RunFactory(checkpoint_dir=str(tmp_path), eval_set=EvalSetFactory())
    _write(tmp_path / "g_00001000")
    _write(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=0-step=2000.ckpt")
    _write(tmp_path / "g_00003000.tmp")
    assert checkpoints_watch(run=run) == []  # first sighting: not yet known to be complete
    registered = checkpoints_watch(run=run)
    assert sorted(Checkpoint.objects.get(pk=pk).step for pk in registered) == [1000, 2000]
    for _ in range(3):  # later scans find nothing new
        assert checkpoints_watch(run=run) == []
    assert Checkpoint.objects.filter(run=run).count() == 2
    assert Job.objects.filter(run=run, kind=Job.Kind.GENERATION).count() == 2
    ckpt = Checkpoint.objects.get(run=run, step=1000)
    assert ckpt.uri == str(tmp_path / "g_00001000") and ckpt.size_bytes == 64


def test_a_file_still_growing_or_just_written_waits(tmp_path, settings):
    settings.EVALSITE_WATCH_SETTLE_S = 2
    run = RunFactory(checkpoint_dir=str(tmp_path))
    path = tmp_path / "checkpoint_step_500.pth"
    _write(path, size=10)
    checkpoints_watch(run=run)
    _write(path, size=20)  # grew between scans
    assert checkpoints_watch(run=run) == []
    assert WatchedFile.objects.get(run=run).stable_scans == 0
    _write(path, size=20, age_s=0.0)  # unchanged size but modified just now
    checkpoints_watch(run=run)
    assert checkpoints_watch(run=run, now=time.time()) == []
    assert checkpoints_watch(run=run, now=time.time() + 5) != []
    assert Checkpoint.objects.get(run=run).step == 500


def test_the_same_step_under_another_file_is_noted_not_registered_twice(tmp_path, settings):
    settings.EVALSITE_WATCH_SETTLE_S = 0
    run = RunFactory(checkpoint_dir=str(tmp_path))
    _write(tmp_path / "g_00001000")
    _write(tmp_path / "step=1000.ckpt")
    checkpoints_watch(run=run)
    checkpoints_watch(run=run)
    assert Checkpoint.objects.filter(run=run).count() == 1
    noted = WatchedFile.objects.get(run=run, checkpoint__isnull=True)
    assert "already registered" in noted.note


def test_watch_all_skips_runs_without_a_directory_and_reports_per_run(tmp_path, settings):
    settings.EVALSITE_WATCH_SETTLE_S = 0
    watched = RunFactory(name="watched", checkpoint_dir=str(tmp_path))
    RunFactory(name="manual")
    RunFactory(name="missing-dir", checkpoint_dir=str(tmp_path / "nope"))
    _write(tmp_path / "g_00000100")
    assert checkpoints_watch_all() == {}
    out = checkpoints_watch_all()
    assert list(out) == ["watched"] and Checkpoint.objects.get(pk=out["watched"][0]).run == watched
