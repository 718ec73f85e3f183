"""Fréchet distance between Gaussians fitted to embeddings, in float64 with eigenvalue methods.

FD = ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁Σ₂)^{1/2}

The trace term never uses a general matrix square root (``scipy.linalg.sqrtm``), which is slow
and can return complex or negative results. Instead, with any factor F such that FFᵀ = Σ₁,
tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(FᵀΣ₂F), and FᵀΣ₂F is symmetric positive semi-definite, so a symmetric
eigenvalue solver applies and eigenvalues are clipped at 0 (they can only be negative by
rounding). F is a Cholesky factor when Σ₁ is positive definite (fast) and V·diag(√w) from a
symmetric eigendecomposition otherwise; both give the eigenvalues of Σ₁^{1/2}Σ₂Σ₁^{1/2}.

When one side has fewer samples than dimensions, the *low-rank* path works in the span of
the centred samples: with C the ``(n, D)`` matrix of centred samples scaled by 1/√(n−1)
(so Σ = CᵀC), tr (Σ₁Σ₂)^{1/2} is the nuclear norm of C₁C₂ᵀ (or of C·F for stored statistics),
computed from an ``n × n`` Gram matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from metrics._common import ArrayLike, MetricResult, as_2d, as_tensor, percentile_ci, resolve_device
from metrics.gaussian import GaussianStatistics

Reference = GaussianStatistics | tuple | ArrayLike
"""A reference distribution: GaussianStatistics, ``(mean, cov)``, ``(mean, cov, n)`` or ``(N, D)`` samples."""


# ---------------------------------------------------------------------------------------
# linear-algebra kernels
# ---------------------------------------------------------------------------------------
def _psd_factor(sigma: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Return (F, method) with F Fᵀ = sigma; Cholesky when PD, clipped eigh otherwise."""
    chol, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0 and bool(torch.isfinite(chol).all()):
        return chol, "cholesky"
    w, v = torch.linalg.eigh(sigma)
    return v * w.clamp(min=0.0).sqrt(), "eigh"


def _congruence(factor: torch.Tensor, sigma: torch.Tensor, *, lower_triangular: bool) -> torch.Tensor:
    """Fᵀ Σ F. On the CPU with a Cholesky factor, two BLAS triangular products (dtrmm) do it in
    half the floating-point work of two general matrix products."""
    if lower_triangular and factor.device.type == "cpu" and factor.dtype == torch.float64:
        from scipy.linalg import blas

        f = factor.numpy()
        right = blas.dtrmm(1.0, f, sigma.numpy(), side=1, lower=1)  # Σ F
        product = blas.dtrmm(1.0, f, right, side=0, lower=1, trans_a=1)  # Fᵀ (Σ F), Fortran order
        # The product is symmetric, so its transpose is the same matrix and, unlike it, C-contiguous.
        return torch.from_numpy(product).T
    return factor.T @ sigma @ factor


def _sqrt_eig_sum(m: torch.Tensor, rank: int | None = None) -> tuple[float, int]:
    """Σ √λ of a symmetric PSD matrix; returns (sum, number of negative eigenvalues clipped).

    ``rank`` is a known upper bound on the rank (e.g. n−1 for a sample covariance): only the
    largest ``rank`` eigenvalues are summed, so eigenvalues that are zero in exact arithmetic
    cannot add √(rounding noise) terms.
    """
    # eigvalsh reads one triangle only, so a matrix symmetric up to rounding needs no symmetrising.
    ev = torch.linalg.eigvalsh(m)
    scale = float(ev.abs().max()) if ev.numel() else 0.0
    if rank is not None and rank < ev.numel():
        ev = ev[ev.numel() - max(rank, 0) :]
    n_neg = int((ev < -1e-12 * max(scale, 1e-300)).sum())
    return float(ev.clamp(min=0.0).sqrt().sum()), n_neg


def _nuclear_norm(g: torch.Tensor, rank: int | None = None) -> tuple[float, int]:
    """Sum of singular values of ``g`` via the smaller Gram matrix (top ``rank`` only)."""
    gram = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g
    return _sqrt_eig_sum(gram, rank)


def _rank_bound(dim: int, *ns: int | None) -> int:
    """Upper bound on the rank of a product of sample covariances: min(D, n−1 for known n)."""
    return min([dim] + [n - 1 for n in ns if n is not None])


def _centred(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    return (x - x.mean(dim=0)) / math.sqrt(n - 1)


def _sample_warnings(n1: int | None, n2: int | None, dim: int) -> list[str]:
    out = []
    for label, n in (("reference", n1), ("generated", n2)):
        if n is not None and n < dim:
            out.append(
                f"n_{label}={n} < dim={dim}: the covariance is rank-deficient and the Fréchet "
                "distance is strongly biased upward; compare only at equal n, or use FAD-inf/KAD"
            )
    if n1 is not None and n2 is not None and n1 != n2:
        out.append(
            f"sample sizes differ (n_reference={n1}, n_generated={n2}); the Fréchet distance's "
            "bias depends on n, so compare runs only at equal n"
        )
    return out


def _finish(
    name: str,
    mean_term: float,
    tr1: float,
    tr2: float,
    tr_sqrt: float,
    *,
    method: str,
    dim: int,
    n1: int | None,
    n2: int | None,
    n_neg: int,
) -> MetricResult:
    raw = mean_term + tr1 + tr2 - 2.0 * tr_sqrt
    warnings = _sample_warnings(n1, n2, dim)
    if n_neg:
        warnings.append(f"{n_neg} negative eigenvalue(s) of the trace-term matrix clipped to 0")
    return MetricResult(
        name=name,
        value=max(raw, 0.0),
        higher_is_better=False,
        warnings=tuple(warnings),
        details={
            "mean_term": mean_term,
            "trace_term": tr1 + tr2 - 2.0 * tr_sqrt,
            "trace_sqrt": tr_sqrt,
            "raw_value": raw,
            "method": method,
            "dtype": "float64",
            "dim": dim,
            "n_reference": n1,
            "n_generated": n2,
        },
    )


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------
def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    *,
    n1: int | None = None,
    n2: int | None = None,
    device: str | torch.device | None = None,
    name: str = "fd",
) -> MetricResult:
    """Fréchet distance between N(mu1, sigma1) (reference) and N(mu2, sigma2) (generated).

    Computed in float64 on ``device`` (CPU by default, or the device of tensor inputs).
    Never negative, never complex.

    Args:
        mu1: Reference mean, shape ``(D,)``.
        sigma1: Reference covariance, shape ``(D, D)``.
        mu2: Generated mean, shape ``(D,)``.
        sigma2: Generated covariance, shape ``(D, D)``.
        n1: Reference sample count (only used for warnings and details).
        n2: Generated sample count (only used for warnings and details).
        device: Torch device, e.g. ``"cuda"``.
        name: Metric name to record, e.g. ``"fad/vggish-16k"``.

    Returns:
        MetricResult with ``value`` and ``details`` (mean/trace terms, method, dim, n).

    Raises:
        ValueError: if shapes are inconsistent (both shapes are named).

    Example:
        >>> import numpy as np
        >>> r = frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3))
        >>> round(r.value, 6)
        3.0
    """
    dev = resolve_device(device, mu1, sigma1, mu2, sigma2)
    m1, m2 = as_tensor(mu1, device=dev), as_tensor(mu2, device=dev)
    s1, s2 = as_tensor(sigma1, device=dev), as_tensor(sigma2, device=dev)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must both have shape (D,); got {tuple(m1.shape)} and {tuple(m2.shape)}")
    d = m1.shape[0]
    for label, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{label} must have shape ({d}, {d}) to match the means; got {tuple(s.shape)}")
    # Only Σ₂ is used whole (in the congruence); Σ₁ is read through one triangle (Cholesky/eigh).
    s2 = 0.5 * (s2 + s2.T)
    factor, how = _psd_factor(s1)
    congruent = _congruence(factor, s2, lower_triangular=how == "cholesky")
    tr_sqrt, n_neg = _sqrt_eig_sum(congruent, _rank_bound(d, n1, n2))
    diff = m1 - m2
    return _finish(
        name,
        float(diff @ diff),
        float(torch.trace(s1)),
        float(torch.trace(s2)),
        tr_sqrt,
        method=f"{how}+eigvalsh",
        dim=d,
        n1=n1,
        n2=n2,
        n_neg=n_neg,
    )


def frechet_distance_from_samples(
    x_ref: ArrayLike,
    x_gen: ArrayLike,
    *,
    method: str = "auto",
    device: str | torch.device | None = None,
    name: str = "fd",
) -> MetricResult:
    """Fréchet distance between Gaussians fitted (ddof=1) to two embedding sets.

    Args:
        x_ref: Reference embeddings, shape ``(N1, D)``.
        x_gen: Generated embeddings, shape ``(N2, D)``.
        method: ``"full"`` (D×D covariances), ``"lowrank"`` (n-dimensional span of the centred
            samples, cost O(N1·N2·D)), or ``"auto"`` (low-rank when min(N1, N2) < D).
        device: Torch device.
        name: Metric name to record.

    Returns:
        MetricResult; ``details["method"]`` records the path taken.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 4))
        >>> frechet_distance_from_samples(x, x).value < 1e-9
        True
    """
    dev = resolve_device(device, x_ref, x_gen)
    a, b = as_2d(x_ref, "x_ref", device=dev), as_2d(x_gen, "x_gen", device=dev)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x_ref has shape {tuple(a.shape)} and x_gen {tuple(b.shape)}: dimensions differ")
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"need at least 2 samples per set; got n_ref={n1}, n_gen={n2}")
    if method not in ("auto", "full", "lowrank"):
        raise ValueError(f"method must be 'auto', 'full' or 'lowrank'; got {method!r}")
    if method == "auto":
        method = "lowrank" if min(n1, n2) < d else "full"
    if method == "full":
        return frechet_distance(
            a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T), n1=n1, n2=n2, device=dev, name=name
        )
    c1, c2 = _centred(a), _centred(b)
    tr_sqrt, n_neg = _nuclear_norm(c1 @ c2.T, _rank_bound(d, n1, n2))
    diff = a.mean(0) - b.mean(0)
    return _finish(
        name,
        float(diff @ diff),
        float((c1 * c1).sum()),
        float((c2 * c2).sum()),
        tr_sqrt,
        method="lowrank+eigvalsh",
        dim=d,
        n1=n1,
        n2=n2,
        n_neg=n_neg,
    )


class _ReferenceGaussian:
    """A reference N(μ, Σ) with a cached PSD factor, for repeated distances to it."""

    def __init__(self, reference: Reference, device: torch.device) -> None:
        if isinstance(reference, GaussianStatistics):
            mu, sigma = reference.compute()
            self.n: int | None = reference.n
        elif isinstance(reference, tuple) and len(reference) in (2, 3):
            mu, sigma = reference[0], reference[1]
            self.n = int(reference[2]) if len(reference) == 3 else None
        else:
            x = as_2d(reference, "reference", device=device)
            self.n = int(x.shape[0])
            mu, sigma = x.mean(0), torch.cov(x.T)
        self.mu = as_tensor(mu, device=device)
        self.sigma = as_tensor(sigma, device=device)
        d = self.mu.shape[0]
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise ValueError(
                f"reference mean/cov must be (D,) and (D, D); got {tuple(self.mu.shape)} and {tuple(self.sigma.shape)}"
            )
        self.sigma = 0.5 * (self.sigma + self.sigma.T)
        self.factor, self.how = _psd_factor(self.sigma)
        self.trace = float(torch.trace(self.sigma))

    def distance(self, x: torch.Tensor, name: str) -> MetricResult:
        """FD between the reference and samples ``x`` (N, D) via the nuclear norm of C·F."""
        n, d = x.shape
        if d != self.mu.shape[0]:
            raise ValueError(
                f"samples have shape {tuple(x.shape)} but the reference has D={self.mu.shape[0]}"
            )
        c = _centred(x)
        tr_sqrt, n_neg = _nuclear_norm(c @ self.factor, _rank_bound(d, n, self.n))
        diff = x.mean(0) - self.mu
        return _finish(
            name,
            float(diff @ diff),
            self.trace,
            float((c * c).sum()),
            tr_sqrt,
            method=f"{self.how}-reference+gram-eigvalsh",
            dim=d,
            n1=self.n,
            n2=n,
            n_neg=n_neg,
        )


def frechet_distance_to_reference(
    x_gen: ArrayLike,
    reference: Reference,
    *,
    device: str | torch.device | None = None,
    name: str = "fd",
) -> MetricResult:
    """Fréchet distance between generated samples and a stored reference distribution.

    Works in the span of the centred generated samples, so with N < D it costs
    O(N·D² + N²·D) instead of a D×D eigenproblem.

    Args:
        x_gen: Generated embeddings ``(N, D)``.
        reference: GaussianStatistics, ``(mean, cov)``, ``(mean, cov, n)`` or samples ``(M, D)``.
        device: Torch device.
        name: Metric name to record.

    Returns:
        MetricResult.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(20, 4))
        >>> r = frechet_distance_to_reference(x, (x.mean(0), np.cov(x, rowvar=False)))
        >>> r.value < 1e-9
        True
    """
    dev = resolve_device(device, x_gen)
    x = as_2d(x_gen, "x_gen", device=dev)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 generated samples; got {x.shape[0]}")
    return _ReferenceGaussian(reference, dev).distance(x, name)


def frechet_distance_inf(
    x_gen: ArrayLike,
    reference: Reference,
    *,
    min_n: int = 500,
    max_n: int | None = None,
    steps: int = 25,
    seed: int = 0,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    device: str | torch.device | None = None,
    name: str = "fad_inf",
) -> MetricResult:
    """FAD∞ (fadtk): extrapolate the Fréchet distance to infinite sample size.

    For ``steps`` sizes n in ``linspace(min_n, max_n, steps)`` draws n generated embeddings with
    replacement (seeded), computes FD against the fixed reference, fits FD_n = a + b/n by least
    squares and reports the intercept a. The confidence interval is a seeded percentile
    bootstrap over the ``steps`` (1/n, FD_n) points (pairs bootstrap of the regression).

    Args:
        x_gen: Generated embeddings ``(N, D)`` (frames or clips).
        reference: GaussianStatistics, ``(mean, cov)``, ``(mean, cov, n)`` or samples.
        min_n: Smallest subset size (fadtk default 500).
        max_n: Largest subset size; defaults to N.
        steps: Number of subset sizes (fadtk default 25).
        seed: Seed of the subset draws and of the bootstrap.
        n_bootstrap: Bootstrap resamples of the regression points (0 disables the CI).
        ci_level: Confidence level of the interval.
        device: Torch device.
        name: Metric name to record.

    Returns:
        MetricResult with ``value`` = intercept, ``details`` holding slope, r2, ns and fds.

    Raises:
        ValueError: if ``min_n >= max_n`` (both are named).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.normal(size=(4000, 8))
        >>> r = frechet_distance_inf(rng.normal(size=(2000, 8)), ref, min_n=100, steps=10)
        >>> abs(r.value) < 0.05
        True
    """
    dev = resolve_device(device, x_gen)
    x = as_2d(x_gen, "x_gen", device=dev)
    big_n = x.shape[0]
    max_n = big_n if max_n is None else int(max_n)
    if not 2 <= min_n < max_n:
        raise ValueError(
            f"FAD-inf needs 2 <= min_n < max_n; got min_n={min_n}, max_n={max_n} (N={big_n} generated samples)"
        )
    if steps < 3:
        raise ValueError(f"steps must be >= 3 for a fit with a residual; got {steps}")
    ref = _ReferenceGaussian(reference, dev)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ns = np.linspace(min_n, max_n, steps).astype(int)
    fds = np.empty(steps)
    for i, n in enumerate(ns):
        idx = torch.randint(0, big_n, (int(n),), generator=gen).to(dev)
        fds[i] = ref.distance(x[idx], name).details["raw_value"]
    xs = 1.0 / ns
    design = np.stack([np.ones_like(xs), xs], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, fds, rcond=None)
    pred = intercept + slope * xs
    ss_tot = float(((fds - fds.mean()) ** 2).sum())
    r2 = 1.0 - float(((fds - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    ci = None
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_bootstrap):
            j = rng.integers(0, steps, steps)
            if np.unique(xs[j]).size < 2:
                continue
            (a, _b), *_ = np.linalg.lstsq(design[j], fds[j], rcond=None)
            boots.append(a)
        ci = percentile_ci(np.asarray(boots), ci_level)
    return MetricResult(
        name=name,
        value=float(intercept),
        higher_is_better=False,
        ci=ci,
        ci_level=ci_level if ci is not None else None,
        warnings=tuple(_sample_warnings(ref.n, None, x.shape[1])),
        details={
            "slope": float(slope),
            "r2": r2,
            "ns": ns.tolist(),
            "fds": fds.tolist(),
            "seed": seed,
            "n_generated": big_n,
            "n_reference": ref.n,
            "dim": int(x.shape[1]),
            "method": f"fadtk-1/n-fit; {ref.how}-reference+gram-eigvalsh",
            "ci_method": "percentile bootstrap over regression points" if ci is not None else None,
        },
    )


__all__: Sequence[str] = (
    "frechet_distance",
    "frechet_distance_from_samples",
    "frechet_distance_to_reference",
    "frechet_distance_inf",
)
