"""Audio preprocessing specification; its :meth:`PreprocessSpec.key` keys the embedding cache.

Every choice that changes an embedding (rate, resampler, channel policy, crop/pad, level
normalisation, int16 round trip) is a field, so two embeddings share a cache entry only when
they were produced by identical preprocessing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

RESAMPLERS = ("torchaudio", "torchaudio-kaiser-best", "soxr-hq", "soxr-vhq")
CHANNEL_POLICIES = ("mean", "first", "left-right-concat", "duplicate-mono")
CROP_POLICIES = ("none", "start", "center")
PAD_POLICIES = ("none", "zero", "repeat")
LOUDNESS_POLICIES = ("none", "peak")


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw audio becomes model input.

    Attributes:
        target_sr: Output sample rate in Hz.
        resampler: ``"torchaudio"`` (sinc/Hann, width 6, rolloff 0.99), ``"torchaudio-kaiser-best"``
            (width 64, rolloff 0.9475937, β 14.7697 — fadtk), ``"soxr-hq"``, ``"soxr-vhq"``.
        channels: ``"mean"`` downmix, ``"first"`` channel, ``"left-right-concat"`` (keep 2
            channels, the embedder concatenates), ``"duplicate-mono"`` (mono → 2 identical).
        crop: ``"none"``, ``"start"`` or ``"center"`` crop to ``max_seconds``.
        max_seconds: Crop length (required when ``crop != "none"``).
        pad: ``"none"``, ``"zero"`` or ``"repeat"`` padding up to ``min_seconds``.
        min_seconds: Minimum length after padding.
        loudness: ``"none"`` or ``"peak"`` normalisation to ``peak_dbfs``.
        peak_dbfs: Target peak level for ``loudness="peak"``.
        remove_dc: Subtract the mean per channel.
        int16_roundtrip: Quantise to 16-bit and back (as fadtk and laion_clap do).
        version: Bump when the implementation of :meth:`apply` changes results.

    Example:
        >>> spec = PreprocessSpec(target_sr=16000)
        >>> spec.key() == PreprocessSpec(target_sr=16000).key()
        True
        >>> spec.key() != PreprocessSpec(target_sr=16000, channels="first").key()
        True
    """

    target_sr: int
    resampler: str = "torchaudio"
    channels: str = "mean"
    crop: str = "none"
    max_seconds: float | None = None
    pad: str = "none"
    min_seconds: float | None = None
    loudness: str = "none"
    peak_dbfs: float = -1.0
    remove_dc: bool = False
    int16_roundtrip: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        for value, allowed, field in (
            (self.resampler, RESAMPLERS, "resampler"),
            (self.channels, CHANNEL_POLICIES, "channels"),
            (self.crop, CROP_POLICIES, "crop"),
            (self.pad, PAD_POLICIES, "pad"),
            (self.loudness, LOUDNESS_POLICIES, "loudness"),
        ):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {allowed}; got {value!r}")
        if self.target_sr <= 0:
            raise ValueError(f"target_sr must be positive; got {self.target_sr}")
        if self.crop != "none" and not self.max_seconds:
            raise ValueError(f"crop={self.crop!r} needs max_seconds")
        if self.pad != "none" and not self.min_seconds:
            raise ValueError(f"pad={self.pad!r} needs min_seconds")

    def to_dict(self) -> dict:
        """All fields as a plain dict."""
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace) of all fields."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Stable cache key: ``"pp1-"`` + first 16 hex digits of SHA-256 of :meth:`canonical_json`."""
        return "pp1-" + hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def apply(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Apply the spec to ``(T,)`` or ``(C, T)`` audio; returns float32 ``(C', T')``.

        Example:
            >>> PreprocessSpec(target_sr=8000).apply(torch.zeros(2, 16000), 16000).shape
            torch.Size([1, 8000])
        """
        x = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav).to(torch.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"audio must be (T,) or (C, T); got shape {tuple(x.shape)}")
        if self.channels == "mean":
            x = x.mean(dim=0, keepdim=True)
        elif self.channels == "first":
            x = x[:1]
        elif self.channels == "duplicate-mono":
            x = x.mean(dim=0, keepdim=True).repeat(2, 1)
        elif self.channels == "left-right-concat":
            x = x.repeat(2, 1) if x.shape[0] == 1 else x[:2]
        if self.remove_dc:
            x = x - x.mean(dim=1, keepdim=True)
        if sample_rate != self.target_sr:
            x = self._resample(x, sample_rate)
        n = x.shape[1]
        if self.crop != "none":
            m = int(round(self.max_seconds * self.target_sr))
            if n > m:
                start = 0 if self.crop == "start" else (n - m) // 2
                x = x[:, start : start + m]
        if self.pad != "none":
            m = int(round(self.min_seconds * self.target_sr))
            if x.shape[1] < m:
                if self.pad == "zero" or x.shape[1] == 0:
                    x = torch.nn.functional.pad(x, (0, m - x.shape[1]))
                else:
                    reps = -(-m // x.shape[1])
                    x = x.repeat(1, reps)[:, :m]
        if self.loudness == "peak":
            peak = x.abs().max()
            if peak > 0:
                x = x * (10 ** (self.peak_dbfs / 20) / peak)
        if self.int16_roundtrip:
            x = torch.round(x.clamp(-1.0, 32767 / 32768) * 32768) / 32768
        return x.contiguous()

    def _resample(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        import torchaudio

        if self.resampler == "torchaudio":
            return torchaudio.functional.resample(x, sr, self.target_sr)
        if self.resampler == "torchaudio-kaiser-best":
            return torchaudio.functional.resample(
                x,
                sr,
                self.target_sr,
                lowpass_filter_width=64,
                rolloff=0.9475937167399596,
                resampling_method="sinc_interp_kaiser",
                beta=14.769656459379492,
            )
        import soxr

        quality = "HQ" if self.resampler == "soxr-hq" else "VHQ"
        out = soxr.resample(x.numpy().T.astype(np.float64), sr, self.target_sr, quality=quality)
        return torch.as_tensor(np.ascontiguousarray(np.atleast_2d(out.T)), dtype=torch.float32)
