"""Issue 14, finding 10: trapping clips gave themselves away by size (495 288 bytes against 88 256 for
every other sound of the trial: a real second, a pause, then several seconds of speech). Every sound a
gold or trapping trial serves now has the size, duration, sample rate and channels of the other sounds
of the trial, and their level (active RMS, as the calibration measures it) within 1 dB."""

import io

import numpy as np
import pytest
import soundfile as sf
from django.test import Client

from evalsite.core.exceptions import ApplicationError
from evalsite.listening import services
from evalsite.listening.calibration import active_level_dbfs
from evalsite.listening.models import Assignment, Stimulus, StimulusHandle
from evalsite.runs.models import EvalItem, Generation
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

LEVEL_DB = 1.0


def served_trials(test) -> dict[str, list[tuple[str, bytes]]]:
    """Every trial of one listener as the browser gets it: control kind -> [(role, served bytes)] per trial."""
    client = Client()
    client.get(f"/l/i/{test.invite_token}/")
    session = client.post(f"/l/i/{test.invite_token}/")["Location"]
    state = client.get(session + "state").json()
    trials = {}
    for trial in state["trials"]:
        assignment = Assignment.objects.select_related("trial").get(token=trial["id"])
        sounds = []
        if trial["reference"]:
            sounds.append(("open reference", client.get(trial["reference"]["url"])))
        for stim in trial["stimuli"]:
            handle = StimulusHandle.objects.select_related("stimulus__condition").get(token=stim["id"])
            sounds.append((handle.stimulus.condition.label, client.get(stim["url"])))
        assert all(r.status_code == 200 for _, r in sounds)
        trials[trial["id"]] = (
            assignment.trial,
            [(label, b"".join(r.streaming_content)) for label, r in sounds],
        )
    return trials


def decoded(data: bytes):
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate


@pytest.mark.parametrize("rate,seconds", [(22050, 1.0), (44100, 3.0)], ids=["1s-22k", "3s-44k"])
@pytest.mark.parametrize(
    "kind,speakers",
    [("mushra", True), ("smos", True), ("smos", False), ("mos", True), ("cmos", True), ("ab", True)],
)
def test_every_sound_of_a_control_trial_has_the_size_duration_and_level_of_the_trials_other_sounds(
    kind, speakers, rate, seconds
):
    world = listening_world(rate=rate, seconds=seconds)
    if not speakers:
        EvalItem.objects.filter(eval_set=world["eval_set"]).update(speaker="")
    test = services.listening_test_publish(
        test=make_listening_test(
            name=f"sizes-{kind}",
            kind=kind,
            checkpoints=world["checkpoints"],
            training_items=0,
            seed=11,
            gold_items=2,
            trapping_items=2,
        )
    )
    seen, all_sizes = set(), set()
    for _ in range(3):  # each listener gets one gold and one trapping trial, picked at random
        for trial, sounds in served_trials(test).values():
            sizes = {label: len(data) for label, data in sounds}
            assert len(set(sizes.values())) == 1, f"{trial.control or 'ordinary'} trial: {sizes}"
            all_sizes |= set(sizes.values())  # and control trials are no larger than ordinary ones
            if not trial.control:
                continue
            seen.add((trial.control, trial.pk))
            reference_level = active_level_dbfs(*decoded(sounds[0][1]))
            for label, data in sounds:
                samples, served_rate = decoded(data)
                assert (served_rate, samples.shape) == (rate, (int(seconds * rate), 1)), label
                assert np.abs(samples).max() <= 1.0
                if "anchor" in label:
                    continue  # band-limited copies of the reference, in every MUSHRA trial alike
                level = active_level_dbfs(samples, served_rate)
                assert abs(level - reference_level) <= LEVEL_DB, (
                    f"{trial.control} {label}: {level} vs {reference_level}"
                )
    assert len(all_sizes) == 1
    assert {c for c, _ in seen} == {"gold", "trapping"}


def test_the_trapping_sound_holds_the_real_output_then_the_spoken_request_within_the_items_length():
    world = listening_world(n_items=2, seconds=4.0)
    test = make_listening_test(
        name="trap-layout",
        kind="mushra",
        checkpoints=world["checkpoints"],
        training_items=0,
        seed=2,
        trapping_items=1,
    )
    trap = Stimulus.objects.get(trial__test=test, trial__control="trapping", expected__isnull=False)
    samples, rate = decoded(trap.asset.file.open("rb").read())
    assert len(samples) == 4 * rate
    source = next(
        g.asset
        for g in Generation.objects.filter(item=trap.trial.item).select_related("checkpoint__run")
        if trap.condition.label.endswith(f"{g.checkpoint.run.name}@{g.checkpoint.step}")
    )
    original, _ = decoded(source.file.open("rb").read())
    head = int(services.TRAP_PREFIX_S * rate) - int(services.CONTROL_FADE_S * rate)
    gain = np.abs(samples[:head]).max() / np.abs(original[:head]).max()
    np.testing.assert_allclose(
        samples[:head], original[:head] * gain, atol=1e-4
    )  # the real output, level-matched
    pause = samples[
        int(services.TRAP_PREFIX_S * rate) : int((services.TRAP_PREFIX_S + services.TRAP_PAUSE_S) * rate)
    ]
    assert np.abs(pause).max() == 0
    speech = samples[int((services.TRAP_PREFIX_S + services.TRAP_PAUSE_S) * rate) :]
    assert np.abs(speech).max() > 0.05  # the request is there, after the pause


def test_an_item_too_short_for_any_spoken_request_is_refused_by_name():
    world = listening_world(n_items=1, seconds=0.3)
    with pytest.raises(ApplicationError) as exc:
        make_listening_test(
            name="too-short",
            kind="mos",
            checkpoints=world["checkpoints"],
            training_items=0,
            seed=2,
            trapping_items=1,
        )
    assert exc.value.message.startswith("item utt0 is 0.30 s long; the shortest spoken attention check")
