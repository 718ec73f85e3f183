"""Offline eSpeak NG demo speech (pure: no Django, no database)."""

import csv
import itertools
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile

from evalsite.demo import speech

SENTENCE = speech.DEMO_SENTENCES[0]


def test_synthesis_returns_float32_mono_speech_at_22050_hz():
    samples, rate = speech.synthesize(SENTENCE, voice="en-us")
    assert rate == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert 1.0 < samples.size / rate < 6.0
    assert np.abs(samples).max() <= 1.0
    assert np.sqrt(np.mean(samples**2)) > 0.01


def test_the_same_input_gives_the_same_samples_even_after_other_calls():
    first, _ = speech.synthesize(SENTENCE, voice="en-us+f3", rate_wpm=170, pitch=40)
    speech.synthesize("Something else entirely.", voice="en-us+klatt", rate_wpm=300)
    second, _ = speech.synthesize(SENTENCE, voice="en-us+f3", rate_wpm=170, pitch=40)
    np.testing.assert_array_equal(first, second)


def test_breathy_voices_match_in_another_process_in_another_second():
    # eSpeak NG seeds its noise generator from the clock at initialisation; the module re-seeds it.
    here, _ = speech.synthesize(SENTENCE, voice="en-us+f2")
    time.sleep(1.05 - time.time() % 1.0)
    script = (
        "import sys; from evalsite.demo.speech import synthesize; "
        f"sys.stdout.buffer.write(synthesize({SENTENCE!r}, voice='en-us+f2')[0].tobytes())"
    )
    repo = Path(__file__).resolve().parents[2]
    there = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, check=True).stdout
    np.testing.assert_array_equal(np.frombuffer(there, dtype=np.float32), here)


def test_concurrent_calls_match_sequential_ones():
    voices = list(speech.DEMO_SPEAKERS[:4])
    sequential = [speech.synthesize(SENTENCE, voice=v)[0] for v in voices]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda v: speech.synthesize(SENTENCE, voice=v)[0], voices))
    for a, b in zip(sequential, concurrent):
        np.testing.assert_array_equal(a, b)


def test_the_demo_speakers_exist_and_sound_different():
    assert len(speech.DEMO_SPEAKERS) >= 4
    voices = set(speech.available_voices())
    assert {s.partition("+")[0] for s in speech.DEMO_SPEAKERS} <= voices
    audio = [speech.synthesize(SENTENCE, voice=s)[0] for s in speech.DEMO_SPEAKERS]
    for a, b in itertools.combinations(audio, 2):
        assert a.shape != b.shape or not np.array_equal(a, b)


def test_rate_and_pitch_change_the_audio():
    normal, _ = speech.synthesize(SENTENCE, voice="en-us")
    fast, _ = speech.synthesize(SENTENCE, voice="en-us", rate_wpm=320)
    high, _ = speech.synthesize(SENTENCE, voice="en-us", pitch=90)
    assert fast.size < 0.7 * normal.size
    assert high.shape != normal.shape or not np.array_equal(high, normal)


def test_an_unknown_voice_is_refused_with_the_available_ones_listed():
    with pytest.raises(ValueError, match="unknown eSpeak NG voice 'en-xx'") as info:
        speech.synthesize(SENTENCE, voice="en-xx")
    assert "en-us" in str(info.value) and "f3" in str(info.value)
    with pytest.raises(ValueError, match="unknown eSpeak NG voice"):
        speech.synthesize(SENTENCE, voice="en-us+nosuchvariant")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        speech.synthesize("   ", voice="en-us")
    with pytest.raises(ValueError):
        speech.synthesize(SENTENCE, voice="en-us", rate_wpm=10)
    with pytest.raises(ValueError):
        speech.synthesize(SENTENCE, voice="en-us", pitch=101)


def test_there_are_at_least_24_distinct_demo_sentences():
    assert len(set(speech.DEMO_SENTENCES)) == len(speech.DEMO_SENTENCES) >= 24


def test_the_demo_corpus_has_a_manifest_and_is_rewritten_identically(tmp_path):
    manifest = speech.write_demo_corpus(tmp_path)
    assert manifest == tmp_path / "manifest.csv"
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "text", "speaker"]
        rows = list(reader)
    assert [r["path"] for r in rows] == [f"item_{i:03d}.wav" for i in range(24)]
    assert [r["text"] for r in rows] == list(speech.DEMO_SENTENCES[:24])
    assert {r["speaker"] for r in rows} == set(speech.DEMO_SPEAKERS)
    first_bytes = {}
    for row in rows:
        info = soundfile.info(tmp_path / row["path"])
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert info.frames > 22050 // 2
        first_bytes[row["path"]] = (tmp_path / row["path"]).read_bytes()
    manifest_bytes = manifest.read_bytes()

    assert speech.write_demo_corpus(tmp_path) == manifest
    assert manifest.read_bytes() == manifest_bytes
    for name, data in first_bytes.items():
        assert (tmp_path / name).read_bytes() == data


def test_the_command_line_prints_the_manifest_path(tmp_path, capsys):
    speech.main([str(tmp_path / "corpus"), "--n-items", "3"])
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "corpus" / "manifest.csv")
    assert len((tmp_path / "corpus" / "manifest.csv").read_text().splitlines()) == 4
