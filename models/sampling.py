"""Seeded top-k / top-p sampling of token logits."""

from __future__ import annotations

import torch
from torch import Tensor


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Mask (to -inf) tokens outside the top-k and outside the smallest top-p mass.

    Args:
        logits: (..., V).
        top_k: Keep the k largest logits (ties at the boundary are kept); None or ≥ V: all.
        top_p: Keep the most likely tokens whose cumulative probability reaches ``top_p``
            (the most likely token is always kept); None or ≥ 1: all.

    Returns:
        (..., V) filtered logits.
    """
    vocab = logits.shape[-1]
    if top_k is not None and 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs
        remove_sorted = before >= top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_tokens(
    logits: Tensor,
    *,
    generator: torch.Generator,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Draw one token per position.

    Args:
        logits: (N, S, V) unnormalised scores.
        generator: Source of randomness (same seed → same tokens on the same device).
        top_k: See :func:`filter_logits`.
        top_p: See :func:`filter_logits`.
        temperature: Divides the logits; must be > 0.

    Returns:
        (N, S) LongTensor of token ids.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n, s, vocab = logits.shape
    filtered = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    probs = filtered.softmax(dim=-1).reshape(n * s, vocab)
    return torch.multinomial(probs, 1, generator=generator).reshape(n, s)
