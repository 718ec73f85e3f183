"""Decode, validate and fingerprint audio for ingestion (pure: numpy, soundfile, soxr, pyloudnorm).

Formats are whatever the bundled libsndfile reads: WAV/W64/RF64, AIFF, FLAC, OGG Vorbis/Opus and
MP3 (the ``soundfile`` wheel ships libsndfile 1.2.2, which decodes MPEG layers I-III).

Every refusal is an ``AudioValidationError`` with a machine-readable ``reason`` and a message
naming the file, so an upload form or an API client can show exactly what was wrong.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

# BS.1770 integrated loudness needs at least one 400 ms gating block.
LOUDNESS_MIN_DURATION_S = 0.4
# pyloudnorm's channel weights cover up to 5 channels (L, R, C, Ls, Rs).
_LOUDNESS_MAX_CHANNELS = 5
# Formats whose header frame count is an estimate, so reading fewer frames is not truncation.
_ESTIMATED_LENGTH_FORMATS = frozenset({"MP3", "OGG"})
# libsndfile's header log reports a WAV data chunk longer than the file as "data : N (should be M)".
_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Data sizes that streaming writers (e.g. ffmpeg to a pipe) put in the header for "unknown length".
_UNKNOWN_DATA_SIZES = frozenset({0, 0xFFFFFFFF})
# When a WAV's data chunk is declared shorter than the samples that follow, libsndfile reads the
# declared part and logs the rest as an unparseable chunk right after it.
_UNDECLARED_TAIL = re.compile(
    r"^Length\s*:\s*(\d+)$.*^data\s*:\s*(\d+)\s*$.*?^\*\*\* Unknown chunk marker \(\w+\) at position (\d+)",
    re.MULTILINE | re.DOTALL,
)
# What a file that libsndfile cannot read turns out to be, from its first bytes, for the message.
_NOT_AUDIO_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint?)"),
    (b"\x80\x02", "a Python pickle"),
)

UNDECODABLE = "undecodable"
EMPTY = "empty"
NON_FINITE = "non_finite"
ZERO_CHANNELS = "zero_channels"
TOO_LONG = "too_long"
UNSUPPORTED_RATE = "unsupported_rate"
TOO_MANY_CHANNELS = "too_many_channels"
TRUNCATED = "truncated"
UNDECLARED_DATA = "undeclared_data"

AudioSource = str | Path | bytes | bytearray | memoryview | BinaryIO


class AudioValidationError(ValueError):
    """Audio that cannot be ingested; ``reason`` is one of the module's reason constants."""

    def __init__(self, reason: str, detail: str, *, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        self.detail = detail
        super().__init__(f"{path if path is not None else '<audio>'}: {detail}")


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Decoded, validated audio. ``samples`` is read-only float32 of shape (frames, channels).

    ``eq=False`` because array fields make ``==`` ambiguous; compare ``content_hash`` instead.
    """

    samples: np.ndarray
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    peak: float
    peak_dbfs: float | None
    loudness_lufs: float | None
    content_hash: str


def content_hash(samples: np.ndarray, sample_rate: int) -> str:
    """SHA-256 hex digest identifying decoded audio independent of its container and codec.

    Hashed bytes, in order: the samples as float32 little-endian in C order with shape
    (frames, channels) (a 1-D array counts as one channel), then the sample rate and the channel
    count, each as an unsigned 32-bit little-endian integer. So the same PCM stored as WAV or FLAC
    hashes the same, while a different rate or channel layout hashes differently.
    """
    array = np.asarray(samples)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"samples must have shape (frames,) or (frames, channels), got {array.shape}")
    canonical = np.ascontiguousarray(array, dtype="<f4")
    digest = hashlib.sha256(canonical.tobytes(order="C"))
    digest.update(struct.pack("<II", int(sample_rate), canonical.shape[1]))
    return digest.hexdigest()


def _label(source: AudioSource, name: str | None) -> str | None:
    if name is not None:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    file_name = getattr(source, "name", None)
    return file_name if isinstance(file_name, str) else None


def _head(target: object, size: int = 16) -> bytes:
    """The first bytes of the file, without disturbing a file object's position."""
    try:
        if isinstance(target, str):
            with open(target, "rb") as fh:
                return fh.read(size)
        position = target.tell()  # type: ignore[attr-defined]
        target.seek(0)  # type: ignore[attr-defined]
        head = target.read(size)  # type: ignore[attr-defined]
        target.seek(position)  # type: ignore[attr-defined]
        return head
    except (AttributeError, OSError, ValueError):
        return b""


def _unreadable(target: object, detail: str, label: str | None) -> AudioValidationError:
    head = _head(target)
    if not head:
        return AudioValidationError(EMPTY, "the file is empty (0 bytes)", path=label)
    for signature, kind in _NOT_AUDIO_SIGNATURES:
        if head.startswith(signature):
            return AudioValidationError(UNDECODABLE, f"not an audio file: its content is {kind}", path=label)
    return AudioValidationError(UNDECODABLE, f"not a readable audio file ({detail})", path=label)


def _open(source: AudioSource, label: str | None) -> soundfile.SoundFile:
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"no such audio file: {source}")
        target: object = str(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(source))
    else:
        seekable = getattr(source, "seekable", None)
        target = source if seekable is not None and seekable() else io.BytesIO(source.read())
    try:
        return soundfile.SoundFile(target)
    except soundfile.LibsndfileError as exc:
        message = exc.error_string
        if "channel count is zero" in message.lower():
            raise AudioValidationError(ZERO_CHANNELS, "the header declares 0 channels", path=label) from exc
        raise _unreadable(target, message, label) from exc
    except (RuntimeError, TypeError) as exc:
        raise _unreadable(target, str(exc), label) from exc


def _check_header(
    f: soundfile.SoundFile,
    label: str | None,
    *,
    max_duration_s: float,
    min_rate: int,
    max_rate: int,
    max_channels: int,
) -> None:
    if f.channels == 0:
        raise AudioValidationError(ZERO_CHANNELS, "the header declares 0 channels", path=label)
    if f.channels > max_channels:
        raise AudioValidationError(
            TOO_MANY_CHANNELS, f"{f.channels} channels; at most {max_channels} are allowed", path=label
        )
    if not min_rate <= f.samplerate <= max_rate:
        raise AudioValidationError(
            UNSUPPORTED_RATE,
            f"sample rate {f.samplerate} Hz is outside the supported {min_rate}-{max_rate} Hz",
            path=label,
        )
    if f.frames == 0:
        raise AudioValidationError(EMPTY, "no audio frames", path=label)
    if f.frames / f.samplerate > max_duration_s:
        raise AudioValidationError(
            TOO_LONG,
            f"{f.frames / f.samplerate:.1f} s is longer than the {max_duration_s:g} s limit",
            path=label,
        )
    short = _SHORT_DATA_CHUNK.search(f.extra_info)
    if short is not None and int(short.group(1)) not in _UNKNOWN_DATA_SIZES:
        declared, present = (int(v) for v in short.groups())
        raise AudioValidationError(
            TRUNCATED, f"the header declares {declared} data bytes but the file holds {present}", path=label
        )
    tail = _UNDECLARED_TAIL.search(f.extra_info)
    if tail is not None:
        length, declared, position = (int(v) for v in tail.groups())
        # Under 10 ms worth of 16-bit audio is taken for the junk trailer some writers leave; more is
        # audio that the header hides (reading only the declared part would silently drop it).
        if length - position >= 0.01 * f.samplerate * f.channels * 2:
            raise AudioValidationError(
                UNDECLARED_DATA,
                f"the header declares {declared} data bytes but {length - position} more bytes follow them "
                "that are not a valid chunk (the data length in the header is wrong; re-encode the file)",
                path=label,
            )


def _loudness(samples: np.ndarray, sample_rate: int) -> float | None:
    frames, channels = samples.shape
    if frames < LOUDNESS_MIN_DURATION_S * sample_rate or channels > _LOUDNESS_MAX_CHANNELS:
        return None
    import pyloudnorm  # brings scipy.signal: loaded only where ingestion measures loudness, not in the web tier

    value = pyloudnorm.Meter(sample_rate).integrated_loudness(samples.astype(np.float64))
    return float(value) if math.isfinite(value) else None


def decode_audio(
    source: AudioSource,
    *,
    max_duration_s: float = 600.0,
    min_rate: int = 8000,
    max_rate: int = 192000,
    max_channels: int = 2,
    name: str | None = None,
) -> DecodedAudio:
    """Decode ``source`` (path, bytes or binary file object) and refuse what cannot be ingested.

    Channel count, sample rate and duration are checked from the header before any sample is
    read, so an over-long file is refused without decoding it. ``name`` labels the audio in error
    messages (defaults to the path or the file object's ``name``). ``peak_dbfs`` is ``None`` for
    digital silence; ``loudness_lufs`` (ITU-R BS.1770-4 integrated) is ``None`` below 400 ms, for
    more than 5 channels, and when every block is under the -70 LUFS absolute gate.

    Raises:
        AudioValidationError: with ``reason`` one of undecodable, zero_channels,
            too_many_channels, unsupported_rate, empty, too_long, truncated, undeclared_data,
            non_finite.
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    label = _label(source, name)
    with _open(source, label) as f:
        _check_header(
            f,
            label,
            max_duration_s=max_duration_s,
            min_rate=min_rate,
            max_rate=max_rate,
            max_channels=max_channels,
        )
        declared_frames = f.frames
        sample_rate = int(f.samplerate)
        fmt = f.format
        max_frames = int(math.floor(max_duration_s * sample_rate))
        try:
            samples = f.read(frames=max_frames + 1, dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.SoundFileError) as exc:
            raise AudioValidationError(UNDECODABLE, f"decoding failed ({exc})", path=label) from exc

    frames, channels = samples.shape
    if frames == 0:
        raise AudioValidationError(EMPTY, "no audio frames could be decoded", path=label)
    if frames > max_frames:
        raise AudioValidationError(
            TOO_LONG,
            f"longer than the {max_duration_s:g} s limit (header under-reported the length)",
            path=label,
        )
    if frames < declared_frames and fmt not in _ESTIMATED_LENGTH_FORMATS:
        raise AudioValidationError(
            TRUNCATED,
            f"the header declares {declared_frames} frames but only {frames} could be decoded",
            path=label,
        )
    return decoded_from_array(samples, sample_rate, name=label)


def decoded_from_array(samples: np.ndarray, sample_rate: int, *, name: str | None = None) -> DecodedAudio:
    """Validate in-memory audio (e.g. a model's output) and describe it like decoded audio.

    Args:
        samples: (frames,) or (frames, channels) floating-point samples.
        sample_rate: Hz.
        name: labels the audio in error messages.

    Raises:
        AudioValidationError: ``empty`` for no frames, ``non_finite`` for NaN/Inf samples.
    """
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"samples must have shape (frames,) or (frames, channels), got {array.shape}")
    frames, channels = array.shape
    if frames == 0:
        raise AudioValidationError(EMPTY, "no audio frames", path=name)
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        n_bad = int((~finite).sum())
        raise AudioValidationError(
            NON_FINITE, f"{n_bad} NaN/Inf samples (first at {bad[0] / sample_rate:.2f} s)", path=name
        )
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    peak = float(np.abs(array).max())
    return DecodedAudio(
        samples=array,
        sample_rate=sample_rate,
        channels=channels,
        frames=frames,
        duration_s=frames / sample_rate,
        peak=peak,
        peak_dbfs=20.0 * math.log10(peak) if peak > 0 else None,
        loudness_lufs=_loudness(array, sample_rate),
        content_hash=content_hash(array, sample_rate),
    )


def encode_wav(decoded: DecodedAudio) -> bytes:
    """Lossless 32-bit float WAV of ``decoded``; decoding it again gives the same ``content_hash``."""
    buffer = io.BytesIO()
    soundfile.write(buffer, decoded.samples, decoded.sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample (frames,) or (frames, channels) audio with soxr at very high quality; returns float32."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim not in (1, 2):
        raise ValueError(f"samples must have shape (frames,) or (frames, channels), got {array.shape}")
    if from_rate == to_rate:
        return array.copy()
    return np.asarray(soxr.resample(array, from_rate, to_rate, quality="VHQ"), dtype=np.float32)
