"""A small, honest CPU training loop for mel vocoders (the tiny HiFi-GAN in particular).

This is *not* HiFi-GAN training: there is no discriminator, no adversarial or feature-matching
loss. The generator is fitted with two reconstruction losses only,

* mel L1: plain L1 between the log-mel of the output and the log-mel the vocoder was given,
  both from the model's own front end (:attr:`mel_frontend`; HiFi-GAN's ×45 weight is dropped,
  it only balances the adversarial terms that are not here), and
* multi-resolution STFT loss (``auraloss.freq.MultiResolutionSTFTLoss``, spectral convergence +
  log magnitude at FFT sizes 1024 / 2048 / 512),

which is enough to turn a randomly initialised tiny vocoder into one whose copy-synthesis
metrics improve checkpoint after checkpoint within a few CPU minutes: a realistic checkpoint
series for exercising the platform, not a paper-quality vocoder (the output stays buzzy). How
much a run improves varies a lot with the seed; an optional geometric learning-rate decay
(``lr_final``) makes later checkpoints more reliably better than earlier ones.

The model is used exactly as the platform uses it: input features come from the same front end
that :meth:`~models.base.Vocoder.copy_synthesis` calls, on segments whose length is a whole
number of hops, and checkpoints are written with :func:`models.save_checkpoint` under names the
platform's checkpoint-directory watcher recognises (``checkpoint_step_{step}.pt``).

Example:
    >>> import models
    >>> from models.training import train_vocoder
    >>> vocoder = models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny"))
    >>> history = train_vocoder(vocoder, clips, 22050, steps=360, batch_size=8, segment_s=0.35, lr=5e-3,
    ...                         lr_final=5e-4, checkpoint_every=120, checkpoint_dir="ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.base import Vocoder
from models.checkpoint import save_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_step_{step}.pt"

CheckpointCallback = Callable[[int, Path, float], None]


def checkpoint_path(checkpoint_dir: str | os.PathLike[str], step: int) -> Path:
    """Where :func:`train_vocoder` writes the checkpoint of ``step``: ``checkpoint_step_{step}.pt``."""
    return Path(checkpoint_dir) / CHECKPOINT_NAME.format(step=step)


def mel_l1(model: Vocoder, generated: Tensor, reference: Tensor) -> Tensor:
    """Mean absolute difference of the model's log-mels of two waveforms (differentiable).

    Args:
        model: A vocoder with a ``mel_frontend`` module (HiFi-GAN, EVA-GAN).
        generated: (B, T) waveform.
        reference: (B, T) waveform of the same shape.

    Returns:
        Scalar tensor.

    Example:
        >>> voc = HiFiGANVocoder(HiFiGANVocoder.preset("tiny"))  # doctest: +SKIP
        >>> mel_l1(voc, torch.zeros(1, 2560), torch.zeros(1, 2560))  # doctest: +SKIP
        tensor(0.)
    """
    if generated.shape != reference.shape:
        raise ValueError(
            f"generated {tuple(generated.shape)} and reference {tuple(reference.shape)} differ in shape"
        )
    return (model.mel_frontend(generated) - model.mel_frontend(reference)).abs().mean()


@torch.no_grad()
def evaluate_mel_l1(model: Vocoder, clips: Sequence[np.ndarray]) -> float:
    """Mean copy-synthesis mel L1 of ``model`` over whole clips, as the platform generates them.

    Every clip is resynthesised with :meth:`~models.base.Vocoder.copy_synthesis` (the call the
    platform's generation task makes), then compared with the model's own log-mel front end.
    The model's train/eval mode is left as it was.

    Args:
        model: A vocoder with a ``mel_frontend`` module.
        clips: Mono float waveforms at ``model.sample_rate``, each longer than the mel padding.

    Returns:
        The mean over clips of the per-clip mean absolute log-mel difference.
    """
    if not clips:
        raise ValueError("clips must not be empty")
    values = []
    for clip in clips:
        wav = torch.as_tensor(np.asarray(clip, dtype=np.float32)).unsqueeze(0).to(model.device)
        out = model.copy_synthesis(wav)
        values.append(float(mel_l1(model, out, wav)))
    return float(np.mean(values))


def _segment_batch(
    clips: Sequence[np.ndarray], weights: np.ndarray, length: int, batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """``batch_size`` random ``length``-sample segments; clips drawn in proportion to their length."""
    batch = np.zeros((batch_size, length), dtype=np.float32)
    for row in range(batch_size):
        clip = clips[int(rng.choice(len(clips), p=weights))]
        if len(clip) <= length:
            batch[row, : len(clip)] = clip
        else:
            start = int(rng.integers(0, len(clip) - length + 1))
            batch[row] = clip[start : start + length]
    return batch


def _save_atomically(model: Vocoder, path: Path, metadata: dict) -> Path:
    """:func:`models.save_checkpoint` to a hidden temporary name, then ``os.replace`` into ``path``.

    The temporary name (``.checkpoint_step_N.pt.partial``) does not match the watcher's pattern,
    so a directory watcher never sees a half-written file under the final name.
    """
    tmp = path.with_name(f".{path.name}.partial")
    try:
        save_checkpoint(model, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def train_vocoder(
    model: Vocoder,
    clips: Sequence[np.ndarray],
    sample_rate: int,
    *,
    steps: int,
    batch_size: int,
    segment_s: float,
    lr: float,
    lr_final: float | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    checkpoint_every: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    log_every: int = 50,
    start_step: int = 0,
) -> list[float]:
    """Fit a mel vocoder to ``clips`` with mel L1 + multi-resolution STFT loss (no discriminator).

    Each step draws ``batch_size`` random segments of ``segment_s`` seconds (rounded down to
    whole hops; clips chosen in proportion to their length, shorter clips zero-padded), computes
    their log-mel with the model's own front end, vocodes it with ``model.train_forward`` and
    takes an Adam (β = 0.8, 0.99, as HiFi-GAN) step on ``mel_l1 + mrstft``. See the module
    docstring for what this is good for and what it is not.

    Every ``checkpoint_every`` steps (and after the last step, if it is not a multiple) the model
    is written with :func:`models.save_checkpoint` as ``checkpoint_dir/checkpoint_step_{step}.pt``
    (atomically: a hidden temporary name, then ``os.replace``) and ``on_checkpoint(step, path,
    loss)`` is called with the mean training loss since the previous checkpoint. The model is in
    train mode while training and is put back in ``eval()`` mode at the end.

    With equal ``seed``, clips, model weights and arguments, two runs give the same loss history
    on the same machine (segment sampling uses its own ``numpy`` generator; the global RNGs are
    not touched). Float reductions on CPU can differ between thread counts.

    Args:
        model: A vocoder with ``mel_frontend`` and ``train_forward`` (HiFi-GAN, EVA-GAN), on the
            device to train on.
        clips: Mono float waveforms in [-1, 1] at ``sample_rate``.
        sample_rate: Must equal ``model.sample_rate`` (resample first).
        steps: Optimiser steps (≥ 1).
        batch_size: Segments per step.
        segment_s: Segment length in seconds (at least one hop and longer than the mel padding).
        lr: Adam learning rate (at the first step).
        lr_final: If given, the learning rate decays geometrically from ``lr`` to this at the
            last step of this call (smaller late updates: later checkpoints are more reliably
            better); ``None`` keeps it constant.
        on_checkpoint: Called as ``on_checkpoint(step, path, mean_loss)`` after each checkpoint.
        checkpoint_every: Steps between checkpoints; ``None`` writes none.
        checkpoint_dir: Directory of the checkpoints (created); required with ``checkpoint_every``.
        seed: Seed of the segment sampler.
        log_every: Log the mean loss every this many steps (``logging`` INFO); 0 disables.
        start_step: Steps already done (continuing from a checkpoint): this call runs steps
            ``start_step + 1`` … ``start_step + steps`` and names checkpoints by those numbers.
            The optimiser state starts afresh.

    Returns:
        The total loss (mel L1 + MR-STFT) of every step, ``steps`` floats.

    Raises:
        ValueError: for a sample-rate mismatch, no clips, a bad step count or segment length,
            ``checkpoint_every`` without ``checkpoint_dir``.
        TypeError: if the model has no ``mel_frontend`` / ``train_forward``.
        FloatingPointError: if the loss becomes NaN or infinite (lower ``lr``).
    """
    from auraloss.freq import MultiResolutionSTFTLoss

    if not hasattr(model, "mel_frontend") or not hasattr(model, "train_forward"):
        raise TypeError(
            f"{type(model).__name__} has no mel_frontend/train_forward; train_vocoder needs a mel vocoder"
        )
    if sample_rate != model.sample_rate:
        raise ValueError(
            f"clips are at {sample_rate} Hz but the model runs at {model.sample_rate} Hz; resample first"
        )
    if not clips:
        raise ValueError("clips must not be empty")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")
    if lr <= 0 or (lr_final is not None and lr_final <= 0):
        raise ValueError(f"lr and lr_final must be > 0, got {lr} and {lr_final}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if checkpoint_every is not None and (checkpoint_every < 1 or checkpoint_dir is None):
        raise ValueError("checkpoint_every must be >= 1 and needs checkpoint_dir")
    hop = model.hop_length
    length = int(segment_s * sample_rate) // hop * hop
    min_length = max(*model.mel_frontend.config.pad, hop) + 1
    if length < min_length:
        raise ValueError(
            f"segment_s={segment_s} gives {length} samples; need at least {min_length} "
            f"(whole hops of {hop} longer than the mel padding)"
        )
    waves = [np.asarray(c, dtype=np.float32).reshape(-1) for c in clips]
    sizes = np.array([max(len(w), 1) for w in waves], dtype=np.float64)
    weights = sizes / sizes.sum()
    rng = np.random.default_rng([seed, start_step])
    device = model.device
    out_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    stft_loss = MultiResolutionSTFTLoss().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.8, 0.99))
    decay = 1.0 if lr_final is None or steps == 1 else (lr_final / lr) ** (1.0 / (steps - 1))
    history: list[float] = []
    since_checkpoint: list[float] = []
    model.train()
    started = time.perf_counter()
    try:
        for step in range(start_step + 1, start_step + steps + 1):
            real = torch.from_numpy(_segment_batch(waves, weights, length, batch_size, rng)).to(device)
            with torch.no_grad():
                mel = model.mel_frontend(real)
            fake = model.train_forward(mel).squeeze(1)
            loss_mel = (model.mel_frontend(fake) - mel).abs().mean()
            loss_stft = stft_loss(fake.unsqueeze(1), real.unsqueeze(1))
            loss = loss_mel + loss_stft
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] *= decay
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss is {value} at step {step}; lower lr (now {lr})")
            history.append(value)
            since_checkpoint.append(value)
            if log_every and (step - start_step) % log_every == 0:
                logger.info(
                    "step %d/%d: loss %.4f (mel L1 %.4f, MR-STFT %.4f), %.1f s",
                    step,
                    start_step + steps,
                    float(np.mean(history[-log_every:])),
                    float(loss_mel.detach()),
                    float(loss_stft.detach()),
                    time.perf_counter() - started,
                )
            last = step == start_step + steps
            if (
                out_dir is not None
                and checkpoint_every is not None
                and (step % checkpoint_every == 0 or last)
            ):
                mean_loss = float(np.mean(since_checkpoint))
                since_checkpoint = []
                metadata = {"step": step, "train_loss": mean_loss, "seed": seed, "trainer": "models.training"}
                path = _save_atomically(model, checkpoint_path(out_dir, step), metadata)
                logger.debug("step %d: wrote %s (mean loss %.4f)", step, path, mean_loss)
                if on_checkpoint is not None:
                    on_checkpoint(step, path, mean_loss)
    finally:
        model.eval()
    return history


__all__ = ["CHECKPOINT_NAME", "checkpoint_path", "evaluate_mel_l1", "mel_l1", "train_vocoder"]
