"""Shared result type, tensor conversion and id-pairing helpers for :mod:`metrics`.

Nothing here imports Django, Celery or evalsite: ``metrics`` is a plain library.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | list | tuple
"""Anything that converts to a numeric array: ``np.ndarray``, ``torch.Tensor``, nested lists."""


@dataclass(frozen=True)
class MetricResult:
    """The value of one metric plus everything needed to interpret and store it.

    Attributes:
        name: Stable metric name that encodes the variant, e.g. ``"mrstft/auraloss-default"``.
        value: The aggregate value (mean over items for per-item metrics).
        higher_is_better: Direction of the metric.
        per_item: Per-item values keyed by item id (``None`` for distribution metrics).
        ci: Optional ``(low, high)`` confidence interval of ``value``.
        ci_level: Confidence level of ``ci`` (e.g. 0.95).
        warnings: Human-readable caveats (sample size below dimension, unpaired ids, ...).
        details: JSON-serialisable parameters and intermediate terms (method, n, dims, ...).

    Example:
        >>> r = MetricResult(name="si_sdr", value=12.5, higher_is_better=True)
        >>> float(r)
        12.5
    """

    name: str
    value: float
    higher_is_better: bool
    per_item: Mapping[str, float] | None = None
    ci: tuple[float, float] | None = None
    ci_level: float | None = None
    warnings: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (NaN values become ``None``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, (float, np.floating)):
                return None if not math.isfinite(float(v)) else float(v)
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                return int(v)
            if isinstance(v, Mapping):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        return {
            "name": self.name,
            "value": clean(self.value),
            "higher_is_better": self.higher_is_better,
            "per_item": clean(self.per_item) if self.per_item is not None else None,
            "ci": clean(self.ci) if self.ci is not None else None,
            "ci_level": self.ci_level,
            "warnings": list(self.warnings),
            "details": clean(dict(self.details)),
        }


def resolve_device(device: str | torch.device | None, *tensors: Any) -> torch.device:
    """Pick the compute device: the explicit one, else the device of a tensor input, else CPU.

    Raises:
        RuntimeError: if a CUDA device is requested but CUDA is not available.
    """
    if device is None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                return t.device
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} was requested but torch.cuda.is_available() is False; "
            "pass device='cpu' or run on a machine with a CUDA GPU."
        )
    return dev


def as_tensor(
    x: ArrayLike, *, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> torch.Tensor:
    """Convert ``x`` to a torch tensor of ``dtype`` on ``device`` (no copy when already right)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device if device is not None else x.device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def as_2d(x: ArrayLike, what: str, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Convert an ``(N, D)`` embedding array, raising a ValueError that names the shape."""
    t = as_tensor(x, dtype=dtype, device=device)
    if t.ndim != 2:
        raise ValueError(f"{what} must have shape (N, D); got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return t


@dataclass(frozen=True)
class Pairing:
    """Result of pairing two id-keyed mappings.

    Attributes:
        ids: Ids present in both mappings, sorted by ``str(id)`` (deterministic order).
        only_first: Ids only in the first mapping, sorted.
        only_second: Ids only in the second mapping, sorted.
    """

    ids: tuple[Hashable, ...]
    only_first: tuple[Hashable, ...]
    only_second: tuple[Hashable, ...]

    def warnings(self, first: str, second: str) -> tuple[str, ...]:
        """Describe unpaired ids (at most 10 listed each) as warning strings."""
        out = []
        for ids, present, missing in (
            (self.only_first, first, second),
            (self.only_second, second, first),
        ):
            if ids:
                shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
                out.append(f"{len(ids)} id(s) in {present} have no {missing}: {shown}")
        return tuple(out)


def pair_by_id(first: Mapping, second: Mapping) -> Pairing:
    """Pair two ``id -> value`` mappings by id, never by order.

    Example:
        >>> p = pair_by_id({"a": 1, "b": 2}, {"b": 3, "c": 4})
        >>> p.ids, p.only_first, p.only_second
        (('b',), ('a',), ('c',))
    """
    if not isinstance(first, Mapping) or not isinstance(second, Mapping):
        raise TypeError(
            f"pairing needs two mappings id -> value; got {type(first).__name__} and {type(second).__name__}"
        )
    a, b = set(first), set(second)
    key = str
    return Pairing(
        ids=tuple(sorted(a & b, key=key)),
        only_first=tuple(sorted(a - b, key=key)),
        only_second=tuple(sorted(b - a, key=key)),
    )


def percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile bootstrap interval of ``samples`` at confidence ``level``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1); got {level}")
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))
