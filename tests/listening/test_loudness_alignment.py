"""Loudness alignment of built tests: what listeners are served, measured with pyloudnorm as the peer.

The world mimics issue 16: loud references peaking at 0.999 (so a low-pass anchor overshoots full
scale) and checkpoint outputs at -31 and -37 dBFS RMS, far quieter.
"""

import io
import math
import re

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient
from scipy import signal

from evalsite.audio.decoding import decoded_from_array
from evalsite.audio.loudness import integrated_loudness, true_peak
from evalsite.audio.services import audio_asset_store
from evalsite.core.exceptions import ApplicationError
from evalsite.listening.models import Condition, ListeningTest, Stimulus, Trial
from evalsite.listening.services.build import LOUDNESS_REDUCED
from evalsite.listening.services.design import LOUDNESS_TARGET_RANGE
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
from evalsite.runs.services import run_token_issue
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db
RATE = 32000
CEILING_DBTP = -1.0


def _speechy(seed: int, rms_dbfs: float, seconds: float = 1.5, peak: float | None = None) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope, at ``rms_dbfs`` (or normalised to ``peak``)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / RATE)
    x = signal.lfilter(*signal.butter(2, 0.5), rng.standard_normal(n)) * envelope
    if peak is not None:
        return (peak * x / np.abs(x).max()).astype(np.float32)
    return (x * 10 ** (rms_dbfs / 20) / np.sqrt(np.mean(x**2))).astype(np.float32)


def _reference(seed: int, seconds: float = 1.5) -> np.ndarray:
    """A loud reference peaking at 0.999 with a square-wave part, whose low-pass anchors overshoot 1.0."""
    n = int(seconds * RATE)
    square = signal.square(2 * np.pi * 150 * np.arange(n) / RATE) * signal.windows.tukey(n, 0.1)
    x = 0.95 * square + 0.05 * _speechy(seed, 0, seconds, peak=1.0)
    return (0.999 * x / np.abs(x).max()).astype(np.float32)


def _store(x: np.ndarray):
    asset, _ = audio_asset_store(decoded=decoded_from_array(x, RATE))
    return asset


@pytest.fixture
def world():
    eval_set = EvalSet.objects.create(name="loudness-set")
    items = [
        EvalItem.objects.create(eval_set=eval_set, key=f"utt{i}", reference=_store(_reference(i)))
        for i in range(3)
    ]
    checkpoints = []
    for r, (name, level) in enumerate([("quiet-run", -37.0), ("quieter-run", -31.0)]):
        run = Run.objects.create(name=name, kind="vocoder", model_family="hifigan", eval_set=eval_set)
        ckpt = Checkpoint.objects.create(run=run, step=1000, uri=f"/ckpt/{name}")
        for i, item in enumerate(items):
            out = _store(_speechy(100 + 10 * r + i, level))
            Generation.objects.create(checkpoint=ckpt, item=item, params_hash="p", asset=out)
        checkpoints.append(ckpt)
    return {"items": items, "checkpoints": checkpoints}


def build(world, **kw):
    kw.setdefault("name", "loudness")
    kw.setdefault("kind", "mushra")
    return make_listening_test(checkpoints=world["checkpoints"], seed=5, training_items=0, **kw)


def read(asset) -> tuple[bytes, np.ndarray]:
    with asset.file.open("rb") as fh:
        data = fh.read()
    samples, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    assert rate == RATE
    return data, samples


def loudness(samples: np.ndarray) -> float:
    return pyloudnorm.Meter(RATE).integrated_loudness(samples.copy())


def served_sounds(trial: Trial) -> list:
    return [s.asset for s in trial.stimuli.select_related("asset")] + [trial.reference]


def test_the_world_has_the_level_cue_of_issue_16_when_alignment_is_off(world):
    test = build(world, loudness_target_lufs=None)
    trial = test.trials.get(index=0)
    levels = [loudness(read(a)[1]) for a in served_sounds(trial)]
    assert max(levels) - min(levels) > 10
    assert max(np.abs(read(a)[1]).max() for a in served_sounds(trial)) > 1.0  # an anchor overshoots
    assert test.loudness_served_lufs is None
    assert all(
        s.source_asset_id is None and s.gain_db is None for s in Stimulus.objects.filter(trial__test=test)
    )


def test_served_sounds_of_a_built_mushra_trial_are_within_half_a_lu_and_never_clip(world):
    test = build(world)
    assert test.loudness_target_lufs == -23.0 and test.loudness_served_lufs == pytest.approx(-23.0)
    for trial in test.trials.all():
        levels = []
        for asset in served_sounds(trial):
            _, samples = read(asset)
            levels.append(loudness(samples))
            assert 20 * math.log10(true_peak(samples, RATE)) <= CEILING_DBTP + 1e-3
            assert np.abs(samples).max() < 1.0
        assert max(levels) - min(levels) <= 0.5
        assert all(abs(level - test.loudness_served_lufs) <= 0.5 for level in levels)


def test_the_hidden_reference_is_byte_identical_to_the_open_reference_after_alignment(world):
    test = build(world)
    for trial in test.trials.select_related("reference", "item__reference"):
        hidden = trial.stimuli.get(condition__role=Condition.Role.HIDDEN_REFERENCE)
        assert hidden.asset_id == trial.reference_id
        assert read(hidden.asset)[0] == read(trial.reference)[0]
        assert trial.reference_id != trial.item.reference_id  # an aligned copy, not the recording as stored


def test_each_stimulus_records_its_source_measured_loudness_and_gain(world):
    test = build(world)
    outputs = {(g.checkpoint_id, g.item_id): g.asset for g in Generation.objects.select_related("asset")}
    for s in Stimulus.objects.filter(trial__test=test).select_related("condition", "trial", "source_asset"):
        _, source = read(s.source_asset)
        assert s.loudness_lufs == pytest.approx(loudness(source), abs=1e-6)
        assert s.gain_db == pytest.approx(test.loudness_served_lufs - s.loudness_lufs, abs=1e-9)
        served = read(s.asset)[1]
        assert np.allclose(served, source * 10 ** (s.gain_db / 20), atol=1e-6)  # a pure scale factor
        if s.condition.role == Condition.Role.SYSTEM:
            assert s.source_asset_id == outputs[(s.condition.checkpoint_id, s.trial.item_id)].pk
    anchors = Stimulus.objects.filter(trial__test=test, condition__role=Condition.Role.ANCHOR_LP35)
    assert anchors.count() == 3 and all(a.asset_id != a.source_asset_id for a in anchors)


def test_a_sound_with_a_high_peak_to_loudness_ratio_lowers_the_whole_test_and_says_so(world):
    clicks = np.zeros(int(1.5 * RATE), dtype=np.float32)
    clicks[::3200] = 0.9
    spiky = Generation.objects.filter(checkpoint=world["checkpoints"][0]).order_by("item__key").first()
    spiky.asset = _store(clicks + 0.0005 * _speechy(9, 0, peak=1.0))
    spiky.save()
    test = build(world, loudness_target_lufs=-14.0)
    assert test.loudness_served_lufs < -14.0
    [warning] = [w for w in test.build_warnings if w.startswith("loudness:")]
    prefix = LOUDNESS_REDUCED.split("{served")[0]
    assert warning.startswith(prefix) and "quiet-run@1000 on item utt0" in warning
    for trial in test.trials.all():
        levels = [loudness(read(a)[1]) for a in served_sounds(trial)]
        assert max(levels) - min(levels) <= 0.5
        assert (
            max(true_peak(read(a)[1], RATE) for a in served_sounds(trial)) <= 10 ** (CEILING_DBTP / 20) + 1e-4
        )


def test_clips_shorter_than_a_gating_block_are_aligned_and_control_trials_reuse_the_served_files(world):
    for g in Generation.objects.all():
        g.asset = _store(_speechy(g.pk, -35.0, seconds=0.3))
        g.save()
    for item in world["items"]:
        item.reference = _store(_reference(item.pk + 50, seconds=0.3))
        item.save()
    test = build(world, gold_items=1)  # too short for a spoken trapping request
    assert not Stimulus.objects.filter(trial__test=test, trial__control="", gain_db__isnull=True).exists()
    for trial in test.trials.filter(control=""):
        levels = [integrated_loudness(read(a)[1], RATE) for a in served_sounds(trial)]
        assert max(levels) - min(levels) <= 0.5 and abs(levels[0] - test.loudness_served_lufs) <= 0.5
    assert_controls_reuse_the_served_files(test)


def test_gold_and_trapping_trials_reuse_the_served_files(world):
    assert_controls_reuse_the_served_files(build(world, gold_items=2, trapping_items=2))


def assert_controls_reuse_the_served_files(test):
    """No control trial serves a sound as generated: what it reuses is the aligned file of the ordinary trials."""
    ordinary = Stimulus.objects.filter(trial__test=test, trial__control="")
    assert test.trials.exclude(control="").exists()
    sources = set(ordinary.values_list("source_asset_id", flat=True))
    served = set(ordinary.values_list("asset_id", flat=True))
    for trial in test.trials.exclude(control=""):
        used = set(trial.stimuli.values_list("asset_id", flat=True)) | {trial.reference_id}
        assert not used & sources
        ordinary_trial = test.trials.get(control="", item=trial.item)
        assert trial.reference_id == ordinary_trial.reference_id
        assert used & served  # the hidden reference and anchors at least


def test_the_calibration_level_is_measured_on_the_served_sounds(world):
    aligned = build(world, name="cal-on", headphone_check=True)
    raw = build(world, name="cal-off", headphone_check=True, loudness_target_lufs=None)
    # Outputs at -31/-37 dBFS brought up to -23 LUFS: the material the listener hears is louder.
    assert aligned.calibration_level_dbfs > raw.calibration_level_dbfs + 3


@pytest.mark.parametrize("target", [-41.0, -9.5, float("nan"), float("inf")])
def test_a_loudness_target_outside_the_range_is_refused_naming_the_field(world, target):
    with pytest.raises(ApplicationError) as caught:
        build(world, loudness_target_lufs=target)
    assert caught.value.message == LOUDNESS_TARGET_RANGE.format(low=-40, high=-10, value=target)
    assert caught.value.extra["fields"] == {"loudness_target_lufs": [caught.value.message]}


def test_the_build_command_aligns_by_default_and_can_be_turned_off(world, capsys):
    specs = [f"{c.run.name}@{c.step}" for c in world["checkpoints"]]
    call_command(
        "build_listening_test", "cmd-on", "--kind", "mos", "--checkpoints", *specs, "--loudness-target", "-26"
    )
    assert "loudness aligned to -26.0 LUFS" in capsys.readouterr().out
    call_command(
        "build_listening_test", "cmd-off", "--kind", "mos", "--checkpoints", *specs, "--no-loudness-alignment"
    )
    assert "loudness not aligned" in capsys.readouterr().out
    assert not Stimulus.objects.filter(trial__test__name="cmd-off", source_asset__isnull=False).exists()
    with pytest.raises(CommandError, match="between -40 and -10 LUFS"):
        call_command(
            "build_listening_test",
            "cmd-bad",
            "--kind",
            "mos",
            "--checkpoints",
            *specs,
            "--loudness-target",
            "0",
        )


def test_the_api_takes_a_loudness_target_refuses_one_out_of_range_and_null_turns_alignment_off():
    world = listening_world(runs=("api-run",), n_items=2)
    checkpoint = world["checkpoints"][0]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {run_token_issue(run=checkpoint.run)}")
    ref = [{"run": checkpoint.run.pk, "step": checkpoint.step}]

    def create(name, **extra):
        return client.post(
            "/api/v1/listening-tests/",
            {"name": name, "kind": "mos", "checkpoints": ref, **extra},
            format="json",
        )

    for bad in (-5.0, -41, "loud", "Infinity", "NaN", True):
        response = create("api-bad", loudness_target_lufs=bad)
        assert response.status_code == 400 and "loudness_target_lufs" in response.json()["extra"]["fields"], (
            bad
        )
    assert not ListeningTest.objects.filter(name="api-bad").exists()
    default = create("api-default").json()
    assert default["loudness_target_lufs"] == -23.0 and default["loudness_served_lufs"] == pytest.approx(
        -23.0
    )
    chosen = create("api-chosen", loudness_target_lufs=-30).json()
    assert chosen["loudness_served_lufs"] == pytest.approx(-30.0)
    off = create("api-off", loudness_target_lufs=None).json()
    assert off["loudness_target_lufs"] is None and off["loudness_served_lufs"] is None
    assert not Stimulus.objects.filter(trial__test_id=off["id"], source_asset__isnull=False).exists()


def test_the_build_form_aligns_when_ticked_refuses_a_target_out_of_range_and_can_turn_it_off(
    world, admin_client
):
    form = {
        "kind": "mos",
        "checkpoints": [c.pk for c in world["checkpoints"]],
        "title": "Quality",
        "training_items": 0,
        "votes_target": 3,
    }
    page = admin_client.post(
        "/listening/new/", {**form, "name": "form-bad", "align_loudness": "on", "loudness_target_lufs": "-5"}
    )
    assert page.status_code == 200 and "less than or equal to -10" in page.content.decode()
    assert not ListeningTest.objects.filter(name="form-bad").exists()
    admin_client.post(
        "/listening/new/", {**form, "name": "form-on", "align_loudness": "on", "loudness_target_lufs": "-20"}
    )
    admin_client.post("/listening/new/", {**form, "name": "form-off", "loudness_target_lufs": "-20"})
    on, off = ListeningTest.objects.get(name="form-on"), ListeningTest.objects.get(name="form-off")
    assert on.loudness_target_lufs == -20.0 and on.loudness_served_lufs == pytest.approx(-20.0)
    assert off.loudness_target_lufs is None and off.loudness_served_lufs is None
    # The box is ticked on a fresh form: alignment is what a researcher gets unless they untick it.
    fresh = admin_client.get("/listening/new/").content.decode()
    assert re.search(r'<input(?=[^>]*name="align_loudness")(?=[^>]*checked)[^>]*>', fresh)


def test_the_report_says_to_which_loudness_the_sounds_were_aligned_or_that_they_were_not(world, admin_client):
    aligned = build(world, name="rep-on", loudness_target_lufs=-24.5)
    raw = build(world, name="rep-off", loudness_target_lufs=None)
    on = admin_client.get(f"/analysis/tests/{aligned.pk}/report.html").content.decode()
    off = admin_client.get(f"/analysis/tests/{raw.pk}/report.html").content.decode()
    assert "loudness aligned to -24.5 LUFS" in on and "not aligned" not in on
    assert "not aligned: the sounds were served at the level they were generated" in off
