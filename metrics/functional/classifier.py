"""Classifier-based metrics: Inception Score and paired KL divergence.

Inputs are class logits (or probabilities) from an audio classifier (PANNs, PaSST, ...) that
an embedder produces; this module only does the arithmetic. The activation (softmax vs
sigmoid) and the KL direction are part of every metric name because published numbers
differ on both (audioldm_eval/AudioCraft: KL(ref‖gen); stable-audio-metrics: KL(gen‖ref)).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from metrics._common import ArrayLike, MetricResult, pair_by_id

ACTIVATIONS = ("softmax", "sigmoid", "sigmoid-bernoulli")
DIRECTIONS = ("ref||gen", "gen||ref")


def _probs(x: torch.Tensor, activation: str, from_logits: bool) -> torch.Tensor:
    if not from_logits:
        return x
    if activation == "softmax":
        return torch.softmax(x, dim=-1)
    return torch.sigmoid(x)


def _stack(values: ArrayLike | Mapping, what: str) -> tuple[list, torch.Tensor]:
    if isinstance(values, Mapping):
        ids = sorted(values, key=str)
        rows = [np.asarray(values[i], dtype=np.float64).reshape(-1) for i in ids]
        if not rows:
            raise ValueError(f"{what} is empty")
        sizes = {r.shape[0] for r in rows}
        if len(sizes) != 1:
            raise ValueError(
                f"{what}: all items must have the same number of classes; got sizes {sorted(sizes)}"
            )
        return ids, torch.as_tensor(np.stack(rows))
    t = torch.as_tensor(np.asarray(values), dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{what} must have shape (N, C); got shape {tuple(t.shape)}")
    return [str(i) for i in range(t.shape[0])], t


def inception_score_name(
    activation: str = "softmax", n_splits: int = 10, seed: int = 2020, classifier: str | None = None
) -> str:
    """Stable name, e.g. ``"is/panns-cnn14-32k/softmax-s10-seed2020"``."""
    body = f"{activation}-s{n_splits}-seed{seed}"
    return f"is/{classifier}/{body}" if classifier else f"is/{body}"


def inception_score(
    logits: ArrayLike | Mapping,
    *,
    from_logits: bool = True,
    activation: str = "softmax",
    n_splits: int = 10,
    seed: int = 2020,
    eps: float = 1e-12,
    name: str | None = None,
) -> MetricResult:
    """Inception Score exp(E_x KL(p(y|x) ‖ p(y))) over seeded splits (audioldm_eval convention).

    Items are shuffled with ``np.random.RandomState(seed)`` (dict inputs are first sorted by id,
    so the result does not depend on insertion order), split into ``n_splits`` chunks with
    ``np.array_split``; the value is the mean over chunks and ``details["std"]`` the std.

    Args:
        logits: ``(N, C)`` array or mapping id → ``(C,)`` logits (or probabilities).
        from_logits: ``False`` when the inputs already are probabilities.
        activation: ``"softmax"`` (standard) or ``"sigmoid"`` (rows renormalised to sum to 1).
        n_splits: Number of chunks.
        seed: Shuffle seed.
        eps: Floor inside the logarithms.
        name: Metric name; defaults to :func:`inception_score_name`.

    Returns:
        MetricResult (higher is better).

    Example:
        A confident classifier that spreads 40 items evenly over 4 classes scores the number of
        classes; split in two, each shuffled half is not quite balanced, so each scores a little less:

        >>> import numpy as np
        >>> probs = np.eye(4)[np.arange(40) % 4]
        >>> round(inception_score(probs, from_logits=False, n_splits=1).value, 4)
        4.0
        >>> round(inception_score(probs, from_logits=False, n_splits=2).value, 4)
        3.9203
    """
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid'; got {activation!r}")
    _, x = _stack(logits, "logits")
    p = _probs(x, activation, from_logits)
    p = p / p.sum(dim=1, keepdim=True)
    n = p.shape[0]
    if n < n_splits:
        raise ValueError(f"need at least n_splits={n_splits} items; got {n}")
    order = np.random.RandomState(seed).permutation(n)
    p = p[torch.as_tensor(order)]
    scores = []
    for chunk in np.array_split(np.arange(n), n_splits):
        pc = p[torch.as_tensor(chunk)]
        py = pc.mean(dim=0, keepdim=True)
        kl = (pc * (torch.log(pc.clamp(min=eps)) - torch.log(py.clamp(min=eps)))).sum(dim=1)
        scores.append(float(torch.exp(kl.mean())))
    return MetricResult(
        name=name or inception_score_name(activation, n_splits, seed),
        value=float(np.mean(scores)),
        higher_is_better=True,
        details={
            "std": float(np.std(scores)),
            "split_scores": scores,
            "n": n,
            "activation": activation,
            "n_splits": n_splits,
            "seed": seed,
        },
    )


def kl_name(activation: str = "softmax", direction: str = "ref||gen", classifier: str | None = None) -> str:
    """Stable name, e.g. ``"kl/passt/softmax-gen-ref"`` (KL(gen‖ref))."""
    body = f"{activation}-{direction.replace('||', '-')}"
    return f"kl/{classifier}/{body}" if classifier else f"kl/{body}"


def kl_divergence(
    ref_logits: Mapping,
    gen_logits: Mapping,
    *,
    direction: str = "ref||gen",
    activation: str = "softmax",
    from_logits: bool = True,
    eps: float = 1e-6,
    name: str | None = None,
) -> MetricResult:
    """Mean paired KL divergence between classifier outputs of reference and generated items.

    Items are paired **by id**; ids present on one side only are listed in the warnings and
    in ``details``. Per item (with p the first and q the second distribution of ``direction``):

    * ``softmax``: KL = Σ_c p_c (log p_c − log(q_c + eps)) (audioldm_eval ``KL_softmax`` when
      ``direction="ref||gen"``).
    * ``sigmoid``: the same expression with per-class sigmoids (audioldm_eval ``KL_sigmoid``;
      not a proper divergence: the (1−p) terms are missing).
    * ``sigmoid-bernoulli``: Σ_c of the Bernoulli KL per class (p log p/q + (1−p) log (1−p)/(1−q)).

    Args:
        ref_logits: Mapping id → ``(C,)`` reference logits (or probabilities).
        gen_logits: Mapping id → ``(C,)`` generated logits (or probabilities).
        direction: ``"ref||gen"`` for KL(ref‖gen) or ``"gen||ref"`` for KL(gen‖ref).
        activation: ``"softmax"``, ``"sigmoid"`` or ``"sigmoid-bernoulli"``.
        from_logits: ``False`` when inputs are already probabilities.
        eps: Added to the second distribution inside its logarithm.
        name: Metric name; defaults to :func:`kl_name`.

    Returns:
        MetricResult with per-item values (lower is better).

    Raises:
        ValueError: if no id is present on both sides.

    Example:
        >>> import numpy as np
        >>> r = kl_divergence({"a": [0.5, 0.5]}, {"a": [0.5, 0.5]}, from_logits=False)
        >>> abs(r.value) < 1e-5
        True
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    pairing = pair_by_id(ref_logits, gen_logits)
    if not pairing.ids:
        raise ValueError("no item id is present in both ref_logits and gen_logits")
    _, r = _stack({i: ref_logits[i] for i in pairing.ids}, "ref_logits")
    _, g = _stack({i: gen_logits[i] for i in pairing.ids}, "gen_logits")
    if r.shape != g.shape:
        raise ValueError(
            f"ref_logits rows have shape {tuple(r.shape[1:])} but gen_logits {tuple(g.shape[1:])}"
        )
    pr, pg = _probs(r, activation, from_logits), _probs(g, activation, from_logits)
    p, q = (pr, pg) if direction == "ref||gen" else (pg, pr)
    kl = torch.special.xlogy(p, p) - p * torch.log(q + eps)
    if activation == "sigmoid-bernoulli":
        kl = kl + torch.special.xlogy(1 - p, 1 - p) - (1 - p) * torch.log(1 - q + eps)
    per = kl.sum(dim=1)
    per_item = {str(i): float(v) for i, v in zip(pairing.ids, per)}
    return MetricResult(
        name=name or kl_name(activation, direction),
        value=float(per.mean()),
        higher_is_better=False,
        per_item=per_item,
        warnings=pairing.warnings("ref_logits", "gen_logits"),
        details={
            "direction": direction,
            "activation": activation,
            "eps": eps,
            "n_pairs": len(pairing.ids),
            "unpaired_ref": [str(i) for i in pairing.only_first],
            "unpaired_gen": [str(i) for i in pairing.only_second],
        },
    )
