"""CLAP score: mean cosine similarity between paired text and audio embeddings.

The embeddings come from a CLAP embedder (checkpoint, crop policy and normalisation are the
embedder's business and must be recorded in its name); pairing is **by item id**.
"""

from __future__ import annotations

from collections.abc import Mapping

from metrics._common import MetricResult
from metrics.functional.embedding_cosine import embedding_cosine


def clap_score_name(embedder: str | None = None) -> str:
    """Stable name, e.g. ``"clap_score/laion-630k-audioset/cos"``."""
    return f"clap_score/{embedder}/cos" if embedder else "clap_score/cos"


def clap_score(
    text_embeddings: Mapping,
    audio_embeddings: Mapping,
    *,
    name: str | None = None,
) -> MetricResult:
    """Mean cosine similarity of text and audio embeddings paired by id (no ×100, no clipping).

    Args:
        text_embeddings: Mapping id → ``(D,)`` text embedding.
        audio_embeddings: Mapping id → ``(D,)`` audio embedding.
        name: Metric name; defaults to :func:`clap_score_name`.

    Returns:
        MetricResult with per-item cosines; unpaired ids in warnings and ``details``.

    Raises:
        ValueError: if no id is present on both sides, shapes differ (both named) or a vector is zero.

    Example:
        >>> r = clap_score({"a": [1.0, 0.0]}, {"a": [1.0, 1.0], "b": [0.0, 1.0]})
        >>> round(r.value, 4), r.details["unpaired_audio"]
        (0.7071, ['b'])
    """
    return embedding_cosine(
        text_embeddings,
        audio_embeddings,
        name=name or clap_score_name(),
        first_label="text",
        second_label="audio",
    )
