"""A corpus of malformed inputs (issue #8 item 4), written offline into a folder in well under a second.

Bad audio goes through eval-set import, bad checkpoints through generation. Each entry names the
file, says what is wrong with it, and carries a phrase the platform's error must contain (and, for
audio, the refusal's ``reason``). The unit tests and the worker integration test both send this
same corpus through, next to good files: 12 bad audio files and 7 bad checkpoints.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

# Eight bytes that open every PNG file, then the start of its IHDR chunk.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR"
TWO_HOURS_S = 2 * 3600
_RATE = 16000


@dataclass(frozen=True)
class BadInput:
    name: str  # file name inside the corpus folder
    problem: str  # what is wrong with it, in words
    says: str  # a phrase the platform's error message for it must contain
    reason: str = ""  # audio only: the ``AudioValidationError.reason`` (and the import report's)


# The messages quote the default limits (EVALSITE_MAX_AUDIO_DURATION_S, _SAMPLE_RATE, _CHANNELS).
BAD_AUDIO: tuple[BadInput, ...] = (
    BadInput(
        "truncated_header.wav",
        "the file stops 20 bytes into its header",
        "not a readable audio file",
        "undecodable",
    ),
    BadInput(
        "declared_longer.wav",
        "the data chunk declares twice the bytes the file holds",
        "the header declares 32000 data bytes but the file holds 16000",
        "truncated",
    ),
    BadInput(
        "declared_shorter.wav",
        "the data chunk declares half the bytes the file holds",
        "the header declares 8000 data bytes but 8000 more bytes follow them",
        "undeclared_data",
    ),
    BadInput("zero_frames.wav", "a valid header with 0 frames", "no audio frames", "empty"),
    BadInput("nan.wav", "float samples with 10 NaN in the middle", "10 NaN/Inf samples", "non_finite"),
    BadInput("inf.wav", "float samples with one +Inf and one -Inf", "2 NaN/Inf samples", "non_finite"),
    BadInput("eight_channels.wav", "8 channels", "8 channels; at most 2 are allowed", "too_many_channels"),
    BadInput(
        "rate_1hz.wav",
        "a sample rate of 1 Hz",
        "sample rate 1 Hz is outside the supported 8000-192000 Hz",
        "unsupported_rate",
    ),
    BadInput(
        "rate_1mhz.wav",
        "a sample rate of 1 MHz",
        "sample rate 1000000 Hz is outside the supported 8000-192000 Hz",
        "unsupported_rate",
    ),
    BadInput(
        "two_hours.flac",
        "2 hours of digital silence (FLAC, 8 kHz)",
        "7200.0 s is longer than the 600 s limit",
        "too_long",
    ),
    BadInput(
        "picture.wav",
        "a PNG image renamed .wav",
        "not an audio file: its content is a PNG image",
        "undecodable",
    ),
    BadInput("empty_file.wav", "0 bytes", "the file is empty (0 bytes)", "empty"),
)

BAD_CHECKPOINTS: tuple[BadInput, ...] = (
    BadInput(
        "truncated.pt", "the first 1000 bytes of a good checkpoint", "corrupt, truncated or not a torch file"
    ),
    BadInput("a_list.pt", "torch.save of a list", "expected a checkpoint dict"),
    BadInput("a_string.pt", "torch.save of a str", "found str"),
    BadInput("wrong_keys.pt", "every state-dict key renamed", "unexpected keys"),
    BadInput("wrong_shapes.pt", "one tensor transposed, one cut in half", "shape mismatches (2)"),
    BadInput(
        "huge_config.pt",
        "its config describes a model of about 10^14 parameters",
        "parameters but the file holds",
    ),
    BadInput("code_execution.pt", "a pickle whose __reduce__ calls exec()", "first refused global: exec"),
)


def _tone(seconds: float = 0.5, rate: int = _RATE, freq: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _pcm16_wav(samples: np.ndarray, rate: int = _RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.round(samples * 32767).astype(np.int16), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _with_data_size(wav: bytes, size: int) -> bytes:
    at = wav.index(b"data") + 4
    return wav[:at] + struct.pack("<I", size) + wav[at + 4 :]


def write_bad_audio(directory: str | Path) -> dict[str, Path]:
    """Write every ``BAD_AUDIO`` file into ``directory``; returns name → path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    wav = _pcm16_wav(_tone())
    data_bytes = len(wav) - 44  # soundfile writes the canonical 44-byte header
    (d / "truncated_header.wav").write_bytes(wav[:20])
    (d / "declared_longer.wav").write_bytes(_with_data_size(wav, 2 * data_bytes))
    (d / "declared_shorter.wav").write_bytes(_with_data_size(wav, data_bytes // 2))
    sf.write(d / "zero_frames.wav", np.zeros((0, 1), np.float32), _RATE, subtype="PCM_16")
    nan = _tone()
    nan[1000:1010] = np.nan
    sf.write(d / "nan.wav", nan, _RATE, subtype="FLOAT")
    inf = _tone()
    inf[2000], inf[3000] = np.inf, -np.inf
    sf.write(d / "inf.wav", inf, _RATE, subtype="FLOAT")
    sf.write(d / "eight_channels.wav", np.tile(_tone()[:, None], (1, 8)), _RATE, subtype="PCM_16")
    sf.write(d / "rate_1hz.wav", np.zeros(10, np.float32), 1, subtype="PCM_16")
    sf.write(d / "rate_1mhz.wav", np.zeros(1000, np.float32), 1_000_000, subtype="PCM_16")
    # Digital silence compresses to constant FLAC subframes: ~180 KB and ~0.3 s for the 2 hours.
    rate = 8000
    with sf.SoundFile(
        d / "two_hours.flac", "w", samplerate=rate, channels=1, subtype="PCM_16", format="FLAC"
    ) as fh:
        minute = np.zeros(60 * rate, dtype=np.int16)
        for _ in range(TWO_HOURS_S // 60):
            fh.write(minute)
    (d / "picture.wav").write_bytes(PNG_SIGNATURE + bytes(64))
    (d / "empty_file.wav").write_bytes(b"")
    return {bad.name: d / bad.name for bad in BAD_AUDIO}


def write_good_audio(
    directory: str | Path, n: int = 2, *, rate: int = 22050, prefix: str = "good"
) -> list[Path]:
    """``n`` distinct short tones, the files that must be imported next to the bad ones."""
    from tests.factories import write_tone

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = d / f"{prefix}{i}.wav"
        write_tone(path, freq=220 + 70 * i, seconds=0.4 + 0.05 * i, rate=rate, seed=100 + i)
        paths.append(path)
    return paths


class _RunsCode:
    """Unpickling this calls ``exec`` (writing ``marker``); a safe loader must refuse it unrun."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran while loading a checkpoint')",))


def write_bad_checkpoints(directory: str | Path, good: str | Path, *, marker: str | Path) -> dict[str, Path]:
    """Write every ``BAD_CHECKPOINTS`` file into ``directory``, derived from the good one at ``good``.

    ``good`` must be a HiFi-GAN checkpoint in the platform's own format (``models.save_checkpoint``;
    ``huge_config.pt`` widens its ``upsample_initial_channel``). ``marker`` is the file that
    ``code_execution.pt`` writes if anything ever unpickles it unsafely.
    """
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    good = Path(good)
    (d / "truncated.pt").write_bytes(good.read_bytes()[:1000])
    torch.save([1, 2, 3], d / "a_list.pt")
    torch.save("not a checkpoint", d / "a_string.pt")
    payload = torch.load(good, map_location="cpu", weights_only=True)
    state = payload["state_dict"]
    torch.save({**payload, "state_dict": {f"renamed.{k}": v for k, v in state.items()}}, d / "wrong_keys.pt")
    misshaped = dict(state)
    first, second = [k for k, v in state.items() if v.ndim == 3 and v.shape[0] > 1 and v.shape[1] > 1][:2]
    misshaped[first] = state[first].transpose(0, 1).contiguous()
    misshaped[second] = state[second][: state[second].shape[0] // 2].clone()
    torch.save({**payload, "state_dict": misshaped}, d / "wrong_shapes.pt")
    # Layers quadratic in 2M channels: ~9 * 10^13 parameters, ~365 TB as float32.
    torch.save(
        {**payload, "kwargs": {**payload["kwargs"], "upsample_initial_channel": 2**21}}, d / "huge_config.pt"
    )
    torch.save({**payload, "hook": _RunsCode(Path(marker))}, d / "code_execution.pt")
    return {bad.name: d / bad.name for bad in BAD_CHECKPOINTS}
