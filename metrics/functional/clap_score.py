"""CLAP score: mean cosine similarity between paired text and audio embeddings.

The embeddings come from a CLAP embedder (checkpoint, crop policy and normalisation are the
embedder's business and must be recorded in its name); pairing is **by item id**.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from metrics._common import MetricResult, pair_by_id


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
    pairing = pair_by_id(text_embeddings, audio_embeddings)
    if not pairing.ids:
        raise ValueError("no item id is present in both text_embeddings and audio_embeddings")
    per_item = {}
    for i in pairing.ids:
        t = np.asarray(text_embeddings[i], dtype=np.float64).reshape(-1)
        a = np.asarray(audio_embeddings[i], dtype=np.float64).reshape(-1)
        if t.shape != a.shape:
            raise ValueError(f"item {i!r}: text embedding shape {t.shape} != audio embedding shape {a.shape}")
        nt, na = np.linalg.norm(t), np.linalg.norm(a)
        if nt == 0 or na == 0:
            raise ValueError(f"item {i!r}: zero-norm embedding (text norm {nt}, audio norm {na})")
        per_item[str(i)] = float(t @ a / (nt * na))
    return MetricResult(
        name=name or clap_score_name(),
        value=float(np.mean(list(per_item.values()))),
        higher_is_better=True,
        per_item=per_item,
        warnings=pairing.warnings("text_embeddings", "audio_embeddings"),
        details={"n_pairs": len(pairing.ids), "unpaired_text": [str(i) for i in pairing.only_first],
                 "unpaired_audio": [str(i) for i in pairing.only_second]},
    )
