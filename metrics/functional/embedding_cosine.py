"""Cosine similarity of paired embeddings (e.g. speaker similarity, the objective side of SMOS)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from metrics._common import MetricResult, pair_by_id


def embedding_cosine(
    first: Mapping,
    second: Mapping,
    *,
    name: str = "embedding_cos",
    first_label: str = "first",
    second_label: str = "second",
) -> MetricResult:
    """Mean cosine similarity of two embedding sets paired by item id (never by order).

    Args:
        first: Mapping id → ``(D,)`` embedding.
        second: Mapping id → ``(D,)`` embedding.
        name: Metric name.
        first_label: How ``first`` is called in messages and ``details``.
        second_label: How ``second`` is called in messages and ``details``.

    Returns:
        MetricResult with per-item cosines; unpaired ids in warnings and ``details``.

    Raises:
        ValueError: no shared id, shapes differ (both named) or a zero vector.

    Example:
        >>> r = embedding_cosine({"a": [1.0, 0.0]}, {"a": [1.0, 1.0], "b": [0.0, 1.0]})
        >>> round(r.value, 4), r.details["unpaired_second"]
        (0.7071, ['b'])
    """
    pairing = pair_by_id(first, second)
    if not pairing.ids:
        raise ValueError(f"no item id is present in both {first_label} and {second_label}")
    per_item = {}
    for i in pairing.ids:
        a = np.asarray(first[i], dtype=np.float64).reshape(-1)
        b = np.asarray(second[i], dtype=np.float64).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(
                f"item {i!r}: {first_label} embedding shape {a.shape} != {second_label} embedding shape {b.shape}"
            )
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:
            raise ValueError(
                f"item {i!r}: zero-norm embedding ({first_label} norm {na}, {second_label} norm {nb})"
            )
        per_item[str(i)] = float(a @ b / (na * nb))
    return MetricResult(
        name=name,
        value=float(np.mean(list(per_item.values()))),
        higher_is_better=True,
        per_item=per_item,
        warnings=pairing.warnings(first_label, second_label),
        details={
            "n_pairs": len(pairing.ids),
            f"unpaired_{first_label}": [str(i) for i in pairing.only_first],
            f"unpaired_{second_label}": [str(i) for i in pairing.only_second],
        },
    )
