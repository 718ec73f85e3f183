"""Abstract bases every model family implements.

The platform's workers only talk to models through these classes, so a plug-in architecture
(see :mod:`models.registry`) is usable by the platform as soon as it subclasses one of them.

Shapes use ``B`` for batch, ``T`` for samples, ``F`` for frames, ``C`` for channels.

Every loaded model has:

* ``kind``: ``"vocoder"``, ``"tokenizer"`` or ``"generator"``.
* ``family``: the registry name (``"hifigan"``, ``"evagan"``, ``"sat"``, ``"aar"`` or a plug-in's
  entry-point name / ``"pkg.module:factory"`` path).
* ``config``: a typed dataclass; ``dataclasses.asdict``-style kwargs of it go into checkpoints.
* ``sample_rate``: integer Hz of the waveforms it reads and writes.
* ``.to(device)`` from :class:`torch.nn.Module`.

Inference methods run under :func:`torch.inference_mode` and expect the model in ``eval()`` mode
(:func:`models.load` returns it so).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from models._config import config_from_kwargs

KINDS = ("vocoder", "tokenizer", "generator")


def check_waveform(wav: Tensor, *, name: str = "wav", min_samples: int = 1) -> None:
    """Raise ValueError unless ``wav`` is a floating (B, T) tensor with at least ``min_samples``."""
    if not isinstance(wav, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, T), got {type(wav).__name__}")
    if wav.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got shape {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {wav.dtype}")
    if wav.shape[1] < min_samples:
        raise ValueError(
            f"{name} must have shape (B, T) with T >= {min_samples}, got shape {tuple(wav.shape)}"
        )


class AudioModel(nn.Module, abc.ABC):
    """Base of every model the platform can load.

    Subclasses set the class attributes ``kind``, ``family``, ``config_class`` (a dataclass type)
    and optionally ``presets`` (name → zero-argument config factory), and take the config as the
    single constructor argument.
    """

    kind: ClassVar[str]
    family: ClassVar[str]
    config_class: ClassVar[type]
    presets: ClassVar[Mapping[str, Callable[[], Any]]] = {}

    config: Any

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Sample rate in Hz of the waveforms this model reads and writes."""

    @classmethod
    def from_config(cls, config: Any) -> AudioModel:
        """Build a randomly initialised model from a config dataclass (or its kwargs dict)."""
        if isinstance(config, dict):
            config = config_from_kwargs(cls.config_class, config)
        if not isinstance(config, cls.config_class):
            raise TypeError(
                f"{cls.__name__} expects a {cls.config_class.__name__}, got {type(config).__name__}"
            )
        return cls(config)  # type: ignore[call-arg]

    @classmethod
    def preset(cls, name: str) -> Any:
        """Return the config of a named preset (e.g. ``"v1"`` or ``"tiny"``).

        Raises:
            ValueError: if the preset does not exist; the message lists the known ones.
        """
        if name not in cls.presets:
            raise ValueError(f"unknown {cls.family} config {name!r}; known: {sorted(cls.presets)}")
        return cls.presets[name]()

    @classmethod
    def remap_state_dict(cls, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a third-party key layout onto this class's keys (identity by default)."""
        return state_dict

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        """Whether a (normalised) key set looks like this family; used for detection."""
        return False

    def fold_weight_norm(self) -> AudioModel:
        """Replace every weight-norm parametrisation by its plain weight (for inference)."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the first parameter or buffer (CPU for a model without tensors)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")


class Vocoder(AudioModel):
    """Mel spectrogram → waveform.

    Subclasses implement :meth:`mel`, :meth:`forward` and ``hop_length``; the mel front end is
    part of the model so copy-synthesis uses exactly the features the vocoder was trained on.
    """

    kind: ClassVar[str] = "vocoder"

    @property
    @abc.abstractmethod
    def hop_length(self) -> int:
        """Samples per mel frame; ``forward`` returns ``F * hop_length`` samples."""

    @property
    @abc.abstractmethod
    def n_mels(self) -> int:
        """Number of mel bands ``forward`` expects."""

    @abc.abstractmethod
    def mel(self, wav: Tensor) -> Tensor:
        """Log-mel features.

        Args:
            wav: (B, T) waveform in [-1, 1] at ``sample_rate``.

        Returns:
            (B, n_mels, F) log-mel spectrogram with ``F = T // hop_length``.
        """

    @abc.abstractmethod
    def forward(self, mel: Tensor) -> Tensor:
        """Vocode.

        Args:
            mel: (B, n_mels, F) log-mel spectrogram.

        Returns:
            (B, F * hop_length) waveform in [-1, 1].
        """

    @torch.inference_mode()
    def copy_synthesis(self, wav: Tensor) -> Tensor:
        """Analyse then resynthesise a waveform (mel → vocoder).

        The input is zero-padded on the right to a whole number of hops, and the output is
        trimmed back, so the output has exactly the input's length.

        Args:
            wav: (B, T) waveform at ``sample_rate``.

        Returns:
            (B, T) resynthesised waveform.
        """
        check_waveform(wav)
        length = wav.shape[1]
        hop = self.hop_length
        padded = -(-length // hop) * hop
        if padded != length:
            wav = nn.functional.pad(wav, (0, padded - length))
        return self.forward(self.mel(wav))[:, :length]


class Tokenizer(AudioModel):
    """Waveform → discrete tokens → waveform."""

    kind: ClassVar[str] = "tokenizer"

    @abc.abstractmethod
    def encode(self, wav: Tensor) -> list[Tensor]:
        """Tokenize a waveform.

        Args:
            wav: (B, T) waveform at ``sample_rate``.

        Returns:
            One LongTensor per scale / codebook.
        """

    @abc.abstractmethod
    def decode(self, tokens: list[Tensor]) -> Tensor:
        """Turn the output of :meth:`encode` back into a (B, T') waveform."""

    @property
    @abc.abstractmethod
    def tokens_per_second(self) -> float:
        """Tokens per second of audio, summed over scales / codebooks."""

    @property
    @abc.abstractmethod
    def bits_per_second(self) -> float:
        """Bitrate: ``tokens_per_second * log2(codebook size)``."""

    @torch.inference_mode()
    def reconstruct(self, wav: Tensor) -> Tensor:
        """Encode then decode; the output is trimmed / zero-padded to the input length.

        Args:
            wav: (B, T) waveform.

        Returns:
            (B, T) reconstruction.
        """
        check_waveform(wav)
        length = wav.shape[1]
        out = self.decode(self.encode(wav))
        if out.shape[1] < length:
            out = nn.functional.pad(out, (0, length - out.shape[1]))
        return out[:, :length]


class Generator(AudioModel):
    """Condition (embedding or class id) → waveform."""

    kind: ClassVar[str] = "generator"

    @abc.abstractmethod
    def generate(
        self,
        cond: Tensor,
        *,
        seed: int,
        cfg_scale: float = 4.0,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        num_frames: int | None = None,
        duration_s: float | None = None,
    ) -> Tensor:
        """Sample audio.

        Args:
            cond: (B, cond_dim) float conditioning vectors, or (B,) LongTensor class ids for a
                class-conditional model.
            seed: Seed of the sampling ``torch.Generator``; equal seeds give equal audio.
            cfg_scale: Classifier-free guidance strength.
            top_k: Keep only the k most likely tokens (None: no limit).
            top_p: Nucleus sampling mass (None: no limit).
            temperature: Softmax temperature (> 0).
            num_frames: Length in model frames (mutually exclusive with ``duration_s``).
            duration_s: Length in seconds.

        Returns:
            (B, T) waveform at ``sample_rate``.
        """


__all__ = ["KINDS", "AudioModel", "Generator", "Tokenizer", "Vocoder", "check_waveform"]
