"""Mergeable Gaussian sufficient statistics (n, Σx, Σxxᵀ in float64) for Fréchet distances.

The platform stores reference statistics in a registry; an embedder produces ``(N, D)`` float
arrays that are fed to :meth:`GaussianStatistics.update`. Statistics merge exactly, so the
statistics of a union of sets (or of shards computed on several workers) never need the
embeddings again.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from metrics._common import ArrayLike, MetricResult, as_2d, resolve_device

FORMAT_VERSION = 1


class GaussianStatistics:
    """Accumulator of count, sum and outer-product sum of ``D``-dimensional embeddings.

    State is kept in float64 relative to a fixed *shift* vector (the mean of the first batch),
    i.e. ``sum = Σ(x - shift)`` and ``sum_outer = Σ(x - shift)(x - shift)ᵀ``. This is the
    classical shifted-data algorithm: it gives the same result as raw sums in exact arithmetic
    but avoids catastrophic cancellation when the embedding mean is large compared with its
    spread (e.g. ReLU features). Merging re-expresses one side on the other's shift exactly.

    Args:
        dim: Embedding dimension ``D``; inferred from the first :meth:`update` when ``None``.
        device: Torch device holding the state (``"cuda"`` for GPU accumulation).
        meta: JSON-serialisable metadata (embedder id, preprocessing key, manifest...). Two
            statistics whose metadata disagree on a shared key refuse to merge.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 8))
        >>> a = GaussianStatistics().update(x[:60])
        >>> b = GaussianStatistics().update(x[60:])
        >>> mean, cov = a.merge_state(b).compute()
        >>> bool(np.allclose(cov.numpy(), np.cov(x, rowvar=False)))
        True
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        device: str | torch.device | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.meta: dict[str, Any] = dict(meta or {})
        self.dim = dim
        self.reset()

    # -- accumulation -------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all accumulated samples (dimension and metadata are kept)."""
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.sum_outer: torch.Tensor | None = None

    def _init_state(self, dim: int, shift: torch.Tensor) -> None:
        self.dim = dim
        self.shift = shift.to(self.device, torch.float64).clone()
        self.sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def update(self, x: ArrayLike) -> GaussianStatistics:
        """Add a batch of embeddings.

        Args:
            x: Embeddings of shape ``(N, D)`` (numpy or torch, any float dtype).

        Returns:
            ``self``, so calls can be chained.

        Raises:
            ValueError: if ``x`` is not 2-D, has non-finite values, or ``D`` differs from the
                accumulated dimension (both shapes are named).
        """
        t = as_2d(x, "embeddings", device=self.device)
        if t.shape[0] == 0:
            return self
        if self.dim is not None and t.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have shape {tuple(t.shape)} but the statistics have dimension "
                f"D={self.dim} (expected shape (N, {self.dim}))"
            )
        if self.shift is None:
            self._init_state(t.shape[1], t.mean(dim=0))
        c = t - self.shift
        self.n += int(t.shape[0])
        self.sum += c.sum(dim=0)
        self.sum_outer += c.T @ c
        return self

    def _rebased(self, new_shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (sum, sum_outer) of this state re-expressed relative to ``new_shift``."""
        delta = self.shift - new_shift
        s = self.sum + self.n * delta
        q = (
            self.sum_outer
            + torch.outer(self.sum, delta)
            + torch.outer(delta, self.sum)
            + self.n * torch.outer(delta, delta)
        )
        return s, q

    def merge_state(self, other: GaussianStatistics) -> GaussianStatistics:
        """Merge another accumulator into this one (exact, order independent up to rounding).

        Args:
            other: Statistics of the same dimension with compatible metadata.

        Returns:
            ``self``.

        Raises:
            ValueError: on a dimension mismatch or conflicting metadata.
        """
        if not isinstance(other, GaussianStatistics):
            raise TypeError(f"can only merge GaussianStatistics, got {type(other).__name__}")
        for key in set(self.meta) & set(other.meta):
            if self.meta[key] != other.meta[key]:
                raise ValueError(
                    f"cannot merge statistics with different meta[{key!r}]: "
                    f"{self.meta[key]!r} vs {other.meta[key]!r}"
                )
        if other.n == 0:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        other_shift = other.shift.to(self.device)
        if self.shift is None:
            self._init_state(other.dim, other_shift)
        moved = GaussianStatistics(other.dim, device=self.device)
        moved.n, moved.shift = other.n, other_shift
        moved.sum, moved.sum_outer = other.sum.to(self.device), other.sum_outer.to(self.device)
        s, q = moved._rebased(self.shift)
        self.n += other.n
        self.sum += s
        self.sum_outer += q
        for key, value in other.meta.items():
            self.meta.setdefault(key, value)
        return self

    # -- results ------------------------------------------------------------------------
    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, cov)`` as float64 tensors of shapes ``(D,)`` and ``(D, D)``.

        The covariance uses ``ddof=1`` (as ``np.cov`` and every FAD toolkit).

        Raises:
            ValueError: with fewer than 2 samples.
        """
        if self.n < 2:
            raise ValueError(f"need at least 2 samples to estimate a covariance; have n={self.n}")
        mean = self.shift + self.sum / self.n
        cov = (self.sum_outer - torch.outer(self.sum, self.sum) / self.n) / (self.n - 1)
        cov = 0.5 * (cov + cov.T)
        return mean, cov

    def frechet_distance(
        self, other: GaussianStatistics, *, device: str | torch.device | None = None
    ) -> MetricResult:
        """Fréchet distance between ``self`` (reference) and ``other`` (generated).

        See :func:`metrics.functional.frechet.frechet_distance`.
        """
        from metrics.functional.frechet import frechet_distance

        m1, c1 = self.compute()
        m2, c2 = other.compute()
        return frechet_distance(m1, c1, m2, c2, n1=self.n, n2=other.n, device=device)

    # -- construction / serialisation ---------------------------------------------------
    @classmethod
    def from_samples(cls, x: ArrayLike, **kwargs: Any) -> GaussianStatistics:
        """Build statistics from an ``(N, D)`` array in one call."""
        return cls(**kwargs).update(x)

    @classmethod
    def from_mean_cov(cls, mean: ArrayLike, cov: ArrayLike, n: int, **kwargs: Any) -> GaussianStatistics:
        """Build statistics from a mean ``(D,)``, covariance ``(D, D)`` (ddof=1) and count ``n``.

        Useful to import published reference statistics (e.g. ``mu``/``sigma`` ``.npz`` files).
        """
        stats = cls(**kwargs)
        m = torch.as_tensor(np.asarray(mean), dtype=torch.float64, device=stats.device)
        c = torch.as_tensor(np.asarray(cov), dtype=torch.float64, device=stats.device)
        if m.ndim != 1 or c.shape != (m.shape[0], m.shape[0]):
            raise ValueError(f"mean must be (D,) and cov (D, D); got {tuple(m.shape)} and {tuple(c.shape)}")
        if n < 2:
            raise ValueError(f"n must be >= 2; got {n}")
        stats._init_state(m.shape[0], m)
        stats.n = int(n)
        stats.sum_outer = c * (n - 1)
        return stats

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return the state as numpy arrays (float64), suitable for ``np.savez``."""
        if self.shift is None:
            raise ValueError("cannot serialise empty statistics (n=0)")
        return {
            "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
            "n": np.asarray(self.n, dtype=np.int64),
            "shift": self.shift.cpu().numpy(),
            "sum": self.sum.cpu().numpy(),
            "sum_outer": self.sum_outer.cpu().numpy(),
            "meta_json": np.asarray(json.dumps(self.meta, sort_keys=True)),
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, np.ndarray], *, device: str | torch.device | None = None
    ) -> GaussianStatistics:
        """Inverse of :meth:`state_dict`."""
        version = int(state["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported statistics format_version={version} (expected {FORMAT_VERSION})")
        meta = json.loads(str(state["meta_json"]))
        shift = torch.as_tensor(np.asarray(state["shift"], dtype=np.float64))
        stats = cls(int(shift.shape[0]), device=device, meta=meta)
        stats._init_state(int(shift.shape[0]), shift)
        stats.n = int(state["n"])
        stats.sum = torch.as_tensor(np.asarray(state["sum"], dtype=np.float64), device=stats.device)
        stats.sum_outer = torch.as_tensor(
            np.asarray(state["sum_outer"], dtype=np.float64), device=stats.device
        )
        return stats

    def to_bytes(self, *, compressed: bool = False) -> bytes:
        """Serialise to ``.npz`` bytes (float64, lossless) for a database blob."""
        buf = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buf, **self.state_dict())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, device: str | torch.device | None = None) -> GaussianStatistics:
        """Inverse of :meth:`to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return cls.from_state_dict({k: f[k] for k in f.files}, device=device)

    def save(self, path: str | os.PathLike, *, compressed: bool = False) -> None:
        """Write the statistics to an ``.npz`` file."""
        with open(path, "wb") as fh:
            fh.write(self.to_bytes(compressed=compressed))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device | None = None) -> GaussianStatistics:
        """Read statistics written by :meth:`save`."""
        with open(path, "rb") as fh:
            return cls.from_bytes(fh.read(), device=device)

    def __repr__(self) -> str:
        return f"GaussianStatistics(n={self.n}, dim={self.dim}, device={self.device}, meta={self.meta})"
