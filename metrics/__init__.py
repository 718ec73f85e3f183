"""evalsite metrics: a pure library of audio metrics (no Django, Celery or evalsite imports).

Embedders (in ``metrics.embedders``) turn audio into ``(N, D)`` float arrays; the statistics
and distances here consume those arrays. Heavy optional dependencies are imported lazily.

The names below are loaded on first access (PEP 562), not when the package is imported: they import
torch, and importing a NumPy-only submodule such as ``metrics.detectors`` (which the web tier's
dashboards use) must not load the model stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metrics._common import MetricResult, pair_by_id
    from metrics.distribution import FrechetAudioDistance, KernelAudioDistance
    from metrics.gaussian import GaussianStatistics
    from metrics.preprocess import PreprocessSpec

_EXPORTS = {
    "MetricResult": "metrics._common",
    "pair_by_id": "metrics._common",
    "GaussianStatistics": "metrics.gaussian",
    "FrechetAudioDistance": "metrics.distribution",
    "KernelAudioDistance": "metrics.distribution",
    "PreprocessSpec": "metrics.preprocess",
}

__all__ = [
    "MetricResult",
    "pair_by_id",
    "GaussianStatistics",
    "FrechetAudioDistance",
    "KernelAudioDistance",
    "PreprocessSpec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
