"""Accumulating distribution metrics (torchmetrics-style): Fréchet audio distance and KAD.

An embedder produces ``(N, D)`` float arrays; feed them with ``update(..., real=True/False)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metrics._common import ArrayLike, MetricResult, as_2d, resolve_device
from metrics.functional.frechet import frechet_distance, frechet_distance_from_samples
from metrics.functional.kad import kad_name, kernel_audio_distance
from metrics.gaussian import GaussianStatistics


class FrechetAudioDistance:
    """Fréchet distance from accumulated reference ("real") and generated statistics.

    State is two :class:`GaussianStatistics` (n, Σx, Σxxᵀ in float64). The reference side can
    be loaded from a stored registry blob with :meth:`set_reference`, so only the generated
    side is embedded.

    Args:
        name: Metric name encoding the embedder, e.g. ``"fad/vggish-16k"``.
        device: Torch device of the state and the computation.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> fad = FrechetAudioDistance(name="fad/toy")
        >>> fad.update(rng.normal(size=(500, 4)), real=True)
        >>> fad.update(rng.normal(size=(500, 4)) + 1.0, real=False)
        >>> 3.5 < fad.compute().value < 4.5
        True
    """

    higher_is_better = False
    is_differentiable = False

    def __init__(self, name: str = "fad", *, device: str | torch.device | None = None) -> None:
        self.name = name
        self.device = resolve_device(device)
        self.reset()

    def reset(self, *, keep_reference: bool = False) -> None:
        """Clear the generated statistics (and the reference unless ``keep_reference``)."""
        if not keep_reference or not hasattr(self, "real"):
            self.real = GaussianStatistics(device=self.device)
        self.fake = GaussianStatistics(device=self.device)

    def update(self, embeddings: ArrayLike, *, real: bool) -> None:
        """Add ``(N, D)`` embeddings to the reference (``real=True``) or generated side."""
        (self.real if real else self.fake).update(embeddings)

    def set_reference(self, stats: GaussianStatistics) -> None:
        """Use stored reference statistics (e.g. ``GaussianStatistics.from_bytes(blob)``)."""
        self.real = stats

    def merge_state(self, other: FrechetAudioDistance) -> FrechetAudioDistance:
        """Merge another instance's reference and generated statistics into this one."""
        self.real.merge_state(other.real)
        self.fake.merge_state(other.fake)
        return self

    def compute(self) -> MetricResult:
        """Return the Fréchet distance (see :func:`metrics.functional.frechet.frechet_distance`)."""
        m1, c1 = self.real.compute()
        m2, c2 = self.fake.compute()
        return frechet_distance(
            m1, c1, m2, c2, n1=self.real.n, n2=self.fake.n, device=self.device, name=self.name
        )


class KernelAudioDistance:
    """KAD accumulating raw embeddings (the kernel needs samples, not moments).

    Args:
        name: Metric name; default from :func:`metrics.functional.kad.kad_name`.
        device: Torch device.
        **kwargs: Passed to :func:`metrics.functional.kad.kernel_audio_distance`
            (``bandwidth_from``, ``scale``, ``n_bootstrap``, ``seed``...).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> kad = KernelAudioDistance()
        >>> kad.update(rng.normal(size=(100, 4)), real=True)
        >>> kad.update(rng.normal(size=(100, 4)), real=False)
        >>> abs(kad.compute().value) < 1.0
        True
    """

    higher_is_better = False
    is_differentiable = False

    def __init__(
        self, name: str | None = None, *, device: str | torch.device | None = None, **kwargs: Any
    ) -> None:
        self.kwargs = kwargs
        self.name = name or kad_name(kwargs.get("bandwidth_from", "reference"), kwargs.get("scale", 100.0))
        self.device = resolve_device(device)
        self.reset()

    def reset(self) -> None:
        """Drop all accumulated embeddings."""
        self.real: list[np.ndarray] = []
        self.fake: list[np.ndarray] = []

    def update(self, embeddings: ArrayLike, *, real: bool) -> None:
        """Append ``(N, D)`` embeddings to one side (stored as float64 numpy)."""
        arr = as_2d(embeddings, "embeddings", device=torch.device("cpu")).numpy()
        (self.real if real else self.fake).append(arr)

    def merge_state(self, other: KernelAudioDistance) -> KernelAudioDistance:
        """Append another instance's embeddings."""
        self.real.extend(other.real)
        self.fake.extend(other.fake)
        return self

    def compute(self) -> MetricResult:
        """Return KAD between all accumulated reference and generated embeddings."""
        if not self.real or not self.fake:
            raise ValueError("KAD needs embeddings on both sides; call update(..., real=True/False) first")
        return kernel_audio_distance(
            np.concatenate(self.real),
            np.concatenate(self.fake),
            device=self.device,
            name=self.name,
            **self.kwargs,
        )


__all__ = ["FrechetAudioDistance", "KernelAudioDistance", "frechet_distance_from_samples"]
