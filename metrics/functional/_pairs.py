"""Pairing and length checks for paired (generated, reference) waveform metrics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from metrics._common import ArrayLike, pair_by_id
from metrics._lengths import DEFAULT_LENGTH_TOLERANCE


@dataclass
class PairedWaveforms:
    """Paired mono waveforms, cropped to equal length per item."""

    ids: list[str]
    gen: list[torch.Tensor]
    ref: list[torch.Tensor]
    cropped: dict[str, tuple[int, int]]
    warnings: tuple[str, ...]

    def batches(self, batch_size: int = 16) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
        """Yield ``(ids, gen (B, T), ref (B, T))`` groups of equal-length items."""
        by_len: dict[int, list[int]] = defaultdict(list)
        for k, g in enumerate(self.gen):
            by_len[g.shape[-1]].append(k)
        for _, idx in sorted(by_len.items()):
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                yield (
                    [self.ids[k] for k in chunk],
                    torch.stack([self.gen[k] for k in chunk]),
                    torch.stack([self.ref[k] for k in chunk]),
                )


def _mono(x: ArrayLike, what: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 2 and 1 in t.shape:
        t = t.reshape(-1)
    if t.ndim != 1:
        raise ValueError(
            f"{what} must be a mono waveform of shape (T,); got shape {tuple(t.shape)} "
            "(downmix or select a channel first, e.g. with metrics.preprocess.PreprocessSpec)"
        )
    return t.to(device=device, dtype=dtype)


def pair_waveforms(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    *,
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> PairedWaveforms:
    """Pair generated and reference waveforms and reconcile their lengths.

    Args:
        gen: Mapping id → ``(T,)`` waveform, or an array ``(T,)`` / ``(B, T)``.
        ref: Same structure as ``gen``.
        length_tolerance: Largest allowed length difference in samples.
        dtype: Compute dtype.
        device: Compute device.

    Raises:
        ValueError: when an item's lengths differ by more than ``length_tolerance`` (the message
            names both lengths), or when no id is shared.
    """
    device = torch.device(device)
    if isinstance(gen, Mapping) or isinstance(ref, Mapping):
        pairing = pair_by_id(gen, ref)
        if not pairing.ids:
            raise ValueError("no item id is present in both gen and ref")
        ids = [str(i) for i in pairing.ids]
        g_list = [_mono(gen[i], f"gen[{i!r}]", dtype, device) for i in pairing.ids]
        r_list = [_mono(ref[i], f"ref[{i!r}]", dtype, device) for i in pairing.ids]
        warnings = pairing.warnings("gen", "ref")
    else:
        g = gen.detach() if isinstance(gen, torch.Tensor) else torch.as_tensor(np.asarray(gen))
        r = ref.detach() if isinstance(ref, torch.Tensor) else torch.as_tensor(np.asarray(ref))
        if g.ndim == 1:
            g = g[None]
        if r.ndim == 1:
            r = r[None]
        if g.ndim != 2 or r.ndim != 2 or g.shape[0] != r.shape[0]:
            raise ValueError(
                f"gen and ref must be (T,) or (B, T) with the same B; got shapes {tuple(g.shape)} and {tuple(r.shape)}"
            )
        ids = [str(i) for i in range(g.shape[0])]
        g_list = list(g.to(device=device, dtype=dtype))
        r_list = list(r.to(device=device, dtype=dtype))
        warnings = ()
    cropped = {}
    for k, item in enumerate(ids):
        lg, lr = g_list[k].shape[0], r_list[k].shape[0]
        if lg != lr:
            if abs(lg - lr) > length_tolerance:
                raise ValueError(
                    f"item {item!r}: generated length {lg} samples and reference length {lr} samples "
                    f"differ by {abs(lg - lr)} > length_tolerance={length_tolerance}"
                )
            n = min(lg, lr)
            g_list[k], r_list[k] = g_list[k][:n], r_list[k][:n]
            cropped[item] = (lg, lr)
    return PairedWaveforms(ids, g_list, r_list, cropped, tuple(warnings))


def finish_paired(
    name: str, per_item: dict[str, float], pairs: PairedWaveforms, higher_is_better: bool, details: dict
):
    """Build the MetricResult of a per-item paired metric (mean over finite items)."""
    from metrics._common import MetricResult

    values = np.array([v for v in per_item.values() if np.isfinite(v)], dtype=np.float64)
    warnings = list(pairs.warnings)
    if pairs.cropped:
        warnings.append(f"{len(pairs.cropped)} item(s) cropped to the shorter length (within tolerance)")
    n_bad = len(per_item) - values.size
    if n_bad:
        warnings.append(f"{n_bad} item(s) have no finite value and are excluded from the mean")
    details = dict(details)
    details["cropped"] = {k: list(v) for k, v in pairs.cropped.items()}
    details["n_items"] = len(per_item)
    return MetricResult(
        name=name,
        value=float(values.mean()) if values.size else float("nan"),
        higher_is_better=higher_is_better,
        per_item=dict(per_item),
        warnings=tuple(warnings),
        details=details,
    )
