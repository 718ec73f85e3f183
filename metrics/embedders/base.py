"""The :class:`Embedder` interface and the spec that records how an embedding was made.

An embedder maps mono float32 audio at its own ``sample_rate`` to per-frame embeddings
``(frames_i, dim)``. Everything that changes the numbers is recorded: the input conditioning
(:class:`metrics.preprocess.PreprocessSpec`: rate, resampler, channel policy) plus the
embedder-side choices (windowing, padding, level normalisation, quantisation) in
:class:`EmbedderSpec`, and the SHA-256 of the weight file(s) loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metrics.preprocess import PreprocessSpec


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything about an embedder's preprocessing that changes its output.

    Attributes:
        embedder: Embedder id, e.g. ``"vggish-16k"``.
        audio: Input conditioning applied by :meth:`Embedder.prepare` (target rate, resampler,
            channel policy, and crop/pad/loudness when the embedder wants them).
        options: Embedder-side choices applied inside :meth:`Embedder.embed`, as sorted
            ``(name, value)`` pairs: window and hop, minimum-length padding, level
            normalisation, int16 round trip, post-processing.
        version: Bump when the embedder implementation changes values.

    Example:
        >>> a = EmbedderSpec("toy", PreprocessSpec(target_sr=16000), (("hop_s", 0.96),))
        >>> b = EmbedderSpec("toy", PreprocessSpec(target_sr=16000), (("hop_s", 0.5),))
        >>> a.key() != b.key()
        True
    """

    embedder: str
    audio: PreprocessSpec
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "embedder": self.embedder,
            "audio": self.audio.to_dict(),
            "options": dict(self.options),
            "version": self.version,
        }

    def canonical_json(self) -> str:
        """Sorted-key compact JSON of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Stable key: ``"es1-"`` + 16 hex digits of SHA-256 of :meth:`canonical_json`."""
        return "es1-" + hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def resolve_embed_device(device: str | torch.device | None) -> torch.device:
    """``device`` if given (CUDA checked), else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} requested but torch.cuda.is_available() is False; pass device='cpu'"
        )
    return dev


def set_offline_hub_env() -> None:
    """Keep Hugging Face / transformers from reaching the network (they hang offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Embedder(ABC):
    """Base class of all audio embedders.

    Subclasses set ``name``, ``sample_rate`` and ``dim`` and implement :meth:`_spec_options`
    and :meth:`_embed_batch` (or override :meth:`embed`).

    Attributes:
        name: Stable id encoding the variant (``"panns-cnn14-32k"``).
        sample_rate: Rate in Hz the input of :meth:`embed` must have.
        dim: Embedding dimension.
        frame_level: ``True`` when :meth:`embed` returns several frames per clip (VGGish
            0.96 s patches, EnCodec 75 Hz latents, CREPE 10 ms frames), ``False`` when it returns
            one row per clip (PANNs clip embedding).
        device: Torch device the model runs on.
    """

    name: str
    sample_rate: int
    dim: int
    frame_level: bool = True
    resampler: str = "torchaudio-kaiser-best"

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 64) -> None:
        self.device = resolve_embed_device(device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = batch_size
        self._weights_checksum: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r})"

    # -- identity ---------------------------------------------------------------------------
    @property
    def weights_checksum(self) -> str:
        """SHA-256 (hex) of the weight file(s) actually loaded."""
        if self._weights_checksum is None:
            raise RuntimeError(f"{self.name}: weights not loaded")
        return self._weights_checksum

    def _spec_options(self) -> dict[str, Any]:
        """Embedder-side preprocessing choices (override)."""
        return {}

    def preprocess_spec(self) -> EmbedderSpec:
        """The full preprocessing spec; its :meth:`EmbedderSpec.key` changes with any parameter.

        Example:
            >>> from metrics.embedders import get_embedder
            >>> get_embedder("crepe-tiny-16k", device="cpu").preprocess_spec().audio.target_sr
            16000
        """
        audio = PreprocessSpec(target_sr=self.sample_rate, resampler=self.resampler, channels="mean")
        return EmbedderSpec(self.name, audio, tuple(sorted(self._spec_options().items())))

    def cache_key(self) -> str:
        """Key for an embedding cache: embedder id + weights checksum + preprocessing spec."""
        payload = f"{self.name}|{self.weights_checksum}|{self.preprocess_spec().canonical_json()}"
        return f"{self.name}:" + hashlib.sha256(payload.encode()).hexdigest()[:24]

    # -- input --------------------------------------------------------------------------------
    def prepare(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """Condition raw ``(T,)`` or ``(C, T)`` audio at ``sample_rate`` for :meth:`embed`.

        Returns:
            float32 ``(T',)`` mono audio at :attr:`sample_rate`.
        """
        return self.preprocess_spec().audio.apply(wav, sample_rate)[0].numpy()

    def _check_waves(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        if isinstance(waves, np.ndarray) and waves.ndim == 1:
            raise TypeError(f"{self.name}: embed() takes a list of 1-D arrays; wrap a single clip in a list")
        out = []
        for i, w in enumerate(waves):
            a = np.asarray(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w, dtype=np.float32)
            if a.ndim != 1:
                raise ValueError(
                    f"{self.name}: clip {i} must be mono (T,) at {self.sample_rate} Hz; got shape "
                    f"{a.shape}. Use prepare(wav, sample_rate) first."
                )
            if a.size == 0:
                raise ValueError(f"{self.name}: clip {i} is empty")
            if not np.isfinite(a).all():
                raise ValueError(f"{self.name}: clip {i} contains NaN or infinite samples")
            out.append(a)
        return out

    # -- embedding ----------------------------------------------------------------------------
    @abstractmethod
    def embed(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame embeddings.

        Args:
            waves: List of mono float32 arrays ``(T_i,)`` at :attr:`sample_rate`.

        Returns:
            List of float32 arrays ``(frames_i, dim)``, one per clip.
        """

    def embed_clip(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """One embedding per clip: the mean over its frames.

        Args:
            waves: List of mono float32 arrays ``(T_i,)`` at :attr:`sample_rate`.

        Returns:
            float32 array ``(N, dim)``.
        """
        frames = self.embed(waves)
        if not frames:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([f.mean(axis=0) for f in frames]).astype(np.float32)


def batched(items: list, size: int):
    """Yield consecutive slices of ``items`` of at most ``size`` elements."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group clip indices of *equal* length into batches (for models where padding changes output)."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    out: list[list[int]] = []
    for n in sorted(groups):
        out.extend(batched(groups[n], batch_size))
    return out
