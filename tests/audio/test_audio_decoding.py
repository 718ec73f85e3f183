"""Audio decoding, validation, content hashing and loudness (pure: no Django, no database)."""

import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile

from evalsite.audio import decoding
from evalsite.audio.decoding import AudioValidationError, content_hash, decode_audio, encode_wav, resample

RATE = 16000


def sine(freq: float = 440.0, seconds: float = 1.0, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, samples: np.ndarray, rate: int = RATE, **kwargs) -> Path:
    soundfile.write(path, samples, rate, **kwargs)
    return path


def wav_header(*, channels: int, rate: int, data_bytes: int, bits: int = 16) -> bytes:
    """A canonical 44-byte PCM WAV header, for files soundfile refuses to write."""
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block_align, block_align, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def refusal(source, **kwargs) -> AudioValidationError:
    with pytest.raises(AudioValidationError) as info:
        decode_audio(source, **kwargs)
    return info.value


# --- every refusal reason ------------------------------------------------------------------------


def test_a_truncated_wav_header_is_undecodable(tmp_path):
    whole = write(tmp_path / "whole.wav", sine(), subtype="PCM_16").read_bytes()
    clip = tmp_path / "clip.wav"
    clip.write_bytes(whole[:20])
    error = refusal(clip)
    assert error.reason == "undecodable"
    assert error.path == str(clip)
    assert str(error).startswith(f"{clip}: ")


def test_png_bytes_named_wav_are_undecodable(tmp_path):
    fake = tmp_path / "picture.wav"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64))
    error = refusal(fake)
    assert error.reason == "undecodable"
    assert "picture.wav" in str(error)


def test_a_wav_whose_header_declares_more_frames_than_present_is_truncated(tmp_path):
    whole = write(tmp_path / "whole.wav", sine(), subtype="PCM_16").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:2000])
    error = refusal(cut)
    assert error.reason == "truncated"
    assert "32000 data bytes" in str(error)


def test_a_streamed_wav_with_unknown_data_size_is_accepted(tmp_path):
    pcm = (sine() * 32767).astype("<i2").tobytes()
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(
        wav_header(channels=1, rate=RATE, data_bytes=0xFFFFFFFF - 36)[:40] + b"\xff\xff\xff\xff" + pcm
    )
    decoded = decode_audio(streamed)
    assert decoded.frames == RATE


def test_zero_frames_are_empty(tmp_path):
    empty = write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32))
    assert refusal(empty).reason == "empty"


def test_nan_and_inf_samples_are_counted_and_located(tmp_path):
    samples = sine()
    samples[8320:8330] = np.nan
    samples[9000:9002] = np.inf
    clip = write(tmp_path / "clip.wav", samples, subtype="FLOAT")
    error = refusal(clip)
    assert error.reason == "non_finite"
    assert str(error) == f"{clip}: 12 NaN/Inf samples (first at 0.52 s)"


def test_eight_channels_are_too_many(tmp_path):
    clip = write(tmp_path / "octo.wav", np.zeros((RATE, 8), np.float32))
    error = refusal(clip)
    assert error.reason == "too_many_channels"
    assert "8 channels" in str(error)
    assert decode_audio(clip, max_channels=8).channels == 8


def test_zero_channels_are_refused(tmp_path):
    clip = tmp_path / "none.wav"
    clip.write_bytes(wav_header(channels=0, rate=RATE, data_bytes=64) + bytes(64))
    assert refusal(clip).reason == "zero_channels"


def test_a_one_hertz_rate_is_unsupported(tmp_path):
    clip = write(tmp_path / "slow.wav", np.zeros(10, np.float32), rate=1)
    error = refusal(clip)
    assert error.reason == "unsupported_rate"
    assert "1 Hz" in str(error)


def test_a_rate_above_the_maximum_is_unsupported(tmp_path):
    clip = write(tmp_path / "fast.wav", np.zeros(1000, np.float32), rate=48000)
    assert refusal(clip, max_rate=44100).reason == "unsupported_rate"


def test_a_two_hour_file_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    rate, seconds = 8000, 2 * 3600
    data_bytes = rate * seconds * 2
    clip = tmp_path / "long.wav"
    with clip.open("wb") as fh:
        fh.write(wav_header(channels=1, rate=rate, data_bytes=data_bytes))
        fh.truncate(44 + data_bytes)  # sparse: no 115 MB actually written

    def no_reading(*args, **kwargs):
        raise AssertionError("samples were read before the duration check")

    monkeypatch.setattr(soundfile.SoundFile, "read", no_reading)
    error = refusal(clip)
    assert error.reason == "too_long"
    assert str(error) == f"{clip}: 7200.0 s is longer than the 600 s limit"


def test_a_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_audio(tmp_path / "absent.wav")


def test_the_name_argument_labels_bytes_in_messages():
    error = refusal(b"not audio at all", name="upload.wav")
    assert (error.path, error.reason) == ("upload.wav", "undecodable")
    assert str(error).startswith("upload.wav: not a readable audio file")
    assert isinstance(error, ValueError)


# --- decoding ------------------------------------------------------------------------------------


def test_paths_bytes_and_file_objects_decode_alike(tmp_path):
    clip = write(tmp_path / "clip.flac", sine(), subtype="PCM_16")
    from_path = decode_audio(clip)
    from_bytes = decode_audio(clip.read_bytes())
    with clip.open("rb") as fh:
        from_file = decode_audio(fh)
    assert from_path.content_hash == from_bytes.content_hash == from_file.content_hash
    assert (from_path.sample_rate, from_path.channels, from_path.frames) == (RATE, 1, RATE)
    assert from_path.samples.shape == (RATE, 1) and from_path.samples.dtype == np.float32
    assert from_path.duration_s == pytest.approx(1.0)
    assert not from_path.samples.flags.writeable


def test_peak_is_linear_and_in_dbfs(tmp_path):
    decoded = decode_audio(write(tmp_path / "half.wav", sine(amplitude=0.5), subtype="FLOAT"))
    assert decoded.peak == pytest.approx(0.5, abs=1e-4)
    assert decoded.peak_dbfs == pytest.approx(-6.02, abs=0.01)


def test_digital_silence_has_no_peak_dbfs_or_loudness(tmp_path):
    decoded = decode_audio(write(tmp_path / "silence.wav", np.zeros(RATE, np.float32)))
    assert decoded.peak == 0.0
    assert decoded.peak_dbfs is None
    assert decoded.loudness_lufs is None


def test_mp3_and_ogg_decode_with_the_bundled_libsndfile(tmp_path):
    for fmt in ("MP3", "OGG"):
        clip = write(tmp_path / f"clip.{fmt.lower()}", sine(rate=22050, seconds=1.0), rate=22050, format=fmt)
        decoded = decode_audio(clip)
        assert decoded.sample_rate == 22050
        assert decoded.duration_s == pytest.approx(1.0, abs=0.1)
        assert 0.3 < decoded.peak < 0.7


# --- content hash --------------------------------------------------------------------------------


def test_the_content_hash_is_the_documented_canonical_form():
    samples = np.stack([sine(), sine(330.0)], axis=1)
    expected = hashlib.sha256(samples.astype("<f4").tobytes() + struct.pack("<II", RATE, 2)).hexdigest()
    assert content_hash(samples, RATE) == expected
    assert content_hash(samples[:, 0], RATE) == content_hash(samples[:, :1], RATE)


def test_the_same_pcm16_audio_in_wav_and_flac_has_the_same_hash(tmp_path):
    # int16 in, so both files store the very same PCM (libsndfile's float→int rounding differs per format).
    samples = (np.stack([sine(), sine(330.0)], axis=1) * 32767).astype(np.int16)
    as_wav = decode_audio(write(tmp_path / "clip.wav", samples, subtype="PCM_16"))
    as_flac = decode_audio(write(tmp_path / "clip.flac", samples, subtype="PCM_16"))
    assert as_wav.content_hash == as_flac.content_hash
    np.testing.assert_array_equal(as_wav.samples, as_flac.samples)


def test_a_different_rate_or_channel_layout_changes_the_hash():
    samples = sine()
    assert content_hash(samples, RATE) != content_hash(samples, 22050)
    assert content_hash(samples, RATE) != content_hash(samples.reshape(-1, 2), RATE)


def test_encoding_to_float_wav_and_decoding_again_is_identical(tmp_path):
    original = decode_audio(write(tmp_path / "clip.flac", np.stack([sine(), -sine()], 1), subtype="PCM_24"))
    stored = encode_wav(original)
    assert soundfile.info(io.BytesIO(stored)).subtype == "FLOAT"
    again = decode_audio(stored)
    assert again.content_hash == original.content_hash
    np.testing.assert_array_equal(again.samples, original.samples)
    assert encode_wav(again) == stored


# --- loudness and resampling ---------------------------------------------------------------------


def test_a_full_scale_1khz_sine_measures_minus_3_01_lufs(tmp_path):
    tone = sine(1000.0, seconds=3.0, rate=48000, amplitude=1.0)
    clip = write(tmp_path / "tone.wav", tone, rate=48000, subtype="FLOAT")
    assert decode_audio(clip).loudness_lufs == pytest.approx(-3.01, abs=0.1)


def test_loudness_is_none_below_400_ms(tmp_path):
    clip = write(tmp_path / "short.wav", sine(seconds=0.39))
    decoded = decode_audio(clip)
    assert decoded.duration_s < decoding.LOUDNESS_MIN_DURATION_S
    assert decoded.loudness_lufs is None


def test_resampling_a_tone_keeps_the_tone():
    out = resample(sine(1000.0, seconds=1.0, rate=48000), 48000, 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    expected = sine(1000.0, seconds=1.0, rate=16000)
    np.testing.assert_allclose(out[1000:-1000], expected[1000:-1000], atol=1e-3)


def test_resampling_keeps_channels_and_same_rate_is_a_copy():
    stereo = np.stack([sine(), sine(300.0)], axis=1)
    assert resample(stereo, RATE, 8000).shape == (8000, 2)
    same = resample(stereo, RATE, RATE)
    np.testing.assert_array_equal(same, stereo)
    assert same is not stereo
    with pytest.raises(ValueError):
        resample(stereo, 0, RATE)
