"""Accumulating per-item paired metrics (torchmetrics-style classes over the functional API).

State is the dict item id → value; ``merge_state`` takes the union (an id scored twice with
different values is an error), ``compute`` returns the mean with all per-item values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from metrics._common import MetricResult
from metrics.functional import spectral, speech


class PairedMetric:
    """Base class: call a functional paired metric per ``update`` and keep per-item values.

    Args:
        **kwargs: Keyword arguments forwarded to the functional metric on every update.

    Example:
        >>> import torch
        >>> m = MRSTFTDistance()
        >>> x = torch.randn(16000)
        >>> m.update({"a": x}, {"a": x}).per_item
        {'a': 0.0}
        >>> m.compute().value
        0.0
    """

    higher_is_better: bool = False
    fn: Callable[..., MetricResult]

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.reset()

    def reset(self) -> None:
        """Forget all items."""
        self.values: dict[str, float] = {}
        self.name: str | None = None
        self.details: dict[str, Any] = {}
        self.warnings: list[str] = []

    def update(self, gen: Mapping, ref: Mapping) -> MetricResult:
        """Score id → waveform mappings; returns this batch's result and keeps its items."""
        res = type(self).fn(gen, ref, **self.kwargs)
        self._absorb(res.name, res.per_item or {}, res.details, res.warnings)
        return res

    def _absorb(self, name: str, values: Mapping[str, float], details: Mapping, warnings) -> None:
        if self.name is not None and name != self.name:
            raise ValueError(f"cannot combine results of {self.name!r} and {name!r}")
        self.name = name
        for k, v in values.items():
            old = self.values.get(k)
            if old is not None and not (old == v or (math.isnan(old) and math.isnan(v))):
                raise ValueError(f"item {k!r} was scored twice with different values ({old} vs {v})")
            self.values[k] = v
        self.details = {k: v for k, v in details.items() if k not in ("cropped", "n_items", "errors")}
        self.warnings.extend(warnings)

    def merge_state(self, other: PairedMetric) -> PairedMetric:
        """Union of two instances' per-item values."""
        if other.name is not None:
            self._absorb(other.name, other.values, other.details, other.warnings)
        return self

    def compute(self) -> MetricResult:
        """Mean over items with finite values, plus all per-item values."""
        if not self.values:
            raise ValueError("no items: call update() first")
        finite = np.array([v for v in self.values.values() if np.isfinite(v)])
        return MetricResult(
            name=self.name,
            value=float(finite.mean()) if finite.size else float("nan"),
            higher_is_better=self.higher_is_better,
            per_item=dict(self.values),
            warnings=tuple(dict.fromkeys(self.warnings)),
            details=dict(self.details, n_items=len(self.values)),
        )


class MelDistance(PairedMetric):
    """Accumulating :func:`metrics.functional.spectral.mel_distance` (needs ``sample_rate=``)."""

    higher_is_better = False
    fn = staticmethod(spectral.mel_distance)


class MRSTFTDistance(PairedMetric):
    """Accumulating :func:`metrics.functional.spectral.mrstft_distance`."""

    higher_is_better = False
    fn = staticmethod(spectral.mrstft_distance)


class LogSpectralDistance(PairedMetric):
    """Accumulating :func:`metrics.functional.spectral.log_spectral_distance`."""

    higher_is_better = False
    fn = staticmethod(spectral.log_spectral_distance)


class SISDR(PairedMetric):
    """Accumulating :func:`metrics.functional.speech.si_sdr`."""

    higher_is_better = True
    fn = staticmethod(speech.si_sdr)


class PESQ(PairedMetric):
    """Accumulating :func:`metrics.functional.speech.pesq_wb` (needs ``sample_rate=``)."""

    higher_is_better = True
    fn = staticmethod(speech.pesq_wb)


class STOI(PairedMetric):
    """Accumulating :func:`metrics.functional.speech.stoi` (needs ``sample_rate=``)."""

    higher_is_better = True
    fn = staticmethod(speech.stoi)
