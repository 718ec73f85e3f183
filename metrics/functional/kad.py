"""Kernel Audio Distance (kadtk): unbiased MMD² with a Gaussian RBF kernel, scaled ×100.

KAD = scale · MMD²_u(X, Y), with
MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n−1)) − 2/(mn) Σ_{i,j} k(xᵢ,yⱼ),
k(a, b) = exp(−γ‖a−b‖²), γ = 1/(2σ² + 1e-8), σ = median pairwise L2 distance.

kadtk documents σ from the *reference* set but its code takes it from the eval set (kadtk
issue #9). Here the default is the reference set; ``bandwidth_from="generated"`` reproduces
the kadtk code, and the choice is part of the metric name.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics._common import ArrayLike, MetricResult, as_2d, percentile_ci, resolve_device


def median_pairwise_distance(x: ArrayLike, *, device: str | torch.device | None = None) -> float:
    """Median of the pairwise L2 distances of the rows of ``x`` ``(N, D)`` (lower median, as torch).

    Example:
        >>> median_pairwise_distance([[0.0], [1.0], [3.0]])
        2.0
    """
    dev = resolve_device(device, x)
    t = as_2d(x, "x", device=dev)
    if t.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a pairwise distance; got shape {tuple(t.shape)}")
    return float(torch.median(torch.pdist(t)))


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_(min=0.0)


def _offdiag_mean(k: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of k[i, j] over i ≠ j; with ``idx`` (a bootstrap draw) over distinct items only."""
    if idx is None:
        m = k.shape[0]
        return (k.sum() - torch.diagonal(k).sum()) / (m * (m - 1))
    sub = k[idx][:, idx]
    mask = idx[:, None] != idx[None, :]
    return (sub * mask).sum() / mask.sum().clamp(min=1)


def kad_name(bandwidth_from: str = "reference", scale: float = 100.0, embedder: str | None = None) -> str:
    """Stable metric name, e.g. ``"kad/vggish-16k/rbf-median-ref-x100"``."""
    src = {"reference": "ref", "generated": "gen"}.get(bandwidth_from, bandwidth_from)
    body = f"rbf-median-{src}-x{scale:g}"
    return f"kad/{embedder}/{body}" if embedder else f"kad/{body}"


def kernel_audio_distance(
    x_ref: ArrayLike,
    x_gen: ArrayLike,
    *,
    bandwidth: float | None = None,
    bandwidth_from: str = "reference",
    scale: float = 100.0,
    n_bootstrap: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
    device: str | torch.device | None = None,
    name: str | None = None,
) -> MetricResult:
    """Kernel Audio Distance between reference and generated embeddings (float64).

    Memory is O((M+N)²): the three kernel matrices are formed explicitly (needed by the
    bootstrap). Use a GPU ``device`` for large sets.

    Args:
        x_ref: Reference embeddings ``(M, D)``, M ≥ 2.
        x_gen: Generated embeddings ``(N, D)``, N ≥ 2.
        bandwidth: Kernel σ; when ``None`` the median pairwise distance of the set named by
            ``bandwidth_from``.
        bandwidth_from: ``"reference"`` (documented kadtk intent) or ``"generated"`` (kadtk code).
        scale: Multiplier (kadtk uses 100).
        n_bootstrap: Seeded bootstrap resamples (both sets resampled with replacement; pairs of
            the same underlying item are excluded from the within-set terms). 0 = no CI.
        ci_level: Confidence level of the percentile interval.
        seed: Bootstrap seed.
        device: Torch device.
        name: Metric name; defaults to :func:`kad_name`.

    Returns:
        MetricResult (can be slightly negative: the estimator is unbiased).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> r = kernel_audio_distance(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)))
        >>> abs(r.value) < 0.5
        True
    """
    dev = resolve_device(device, x_ref, x_gen)
    x, y = as_2d(x_ref, "x_ref", device=dev), as_2d(x_gen, "x_gen", device=dev)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x_ref has shape {tuple(x.shape)} and x_gen {tuple(y.shape)}: dimensions differ")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"KAD needs at least 2 samples per set; got n_ref={m}, n_gen={n}")
    if bandwidth_from not in ("reference", "generated"):
        raise ValueError(f"bandwidth_from must be 'reference' or 'generated'; got {bandwidth_from!r}")
    if bandwidth is None:
        bandwidth = median_pairwise_distance(x if bandwidth_from == "reference" else y, device=dev)
        bw_source = bandwidth_from
    else:
        bw_source = "given"
    gamma = 1.0 / (2.0 * float(bandwidth) ** 2 + 1e-8)
    kxx = torch.exp(-gamma * _sq_dists(x, x))
    kyy = torch.exp(-gamma * _sq_dists(y, y))
    kxy = torch.exp(-gamma * _sq_dists(x, y))
    mmd = _offdiag_mean(kxx) + _offdiag_mean(kyy) - 2.0 * kxy.mean()
    value = scale * float(mmd)
    ci = None
    if n_bootstrap > 0:
        g = torch.Generator(device="cpu").manual_seed(seed)
        boots = np.empty(n_bootstrap)
        for b in range(n_bootstrap):
            ix = torch.randint(0, m, (m,), generator=g).to(dev)
            iy = torch.randint(0, n, (n,), generator=g).to(dev)
            est = _offdiag_mean(kxx, ix) + _offdiag_mean(kyy, iy) - 2.0 * kxy[ix][:, iy].mean()
            boots[b] = scale * float(est)
        ci = percentile_ci(boots, ci_level)
    warnings = ()
    if m != n:
        warnings = (f"sample sizes differ (n_reference={m}, n_generated={n})",)
    return MetricResult(
        name=name or kad_name(bandwidth_from if bw_source != "given" else "given", scale),
        value=value,
        higher_is_better=False,
        ci=ci,
        ci_level=ci_level if ci is not None else None,
        warnings=warnings,
        details={
            "bandwidth": float(bandwidth),
            "bandwidth_from": bw_source,
            "gamma": gamma,
            "scale": scale,
            "kernel": "gaussian-rbf",
            "estimator": "unbiased MMD^2",
            "n_reference": m,
            "n_generated": n,
            "dim": int(x.shape[1]),
            "seed": seed,
            "n_bootstrap": n_bootstrap,
        },
    )
