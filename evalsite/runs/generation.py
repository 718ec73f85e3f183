"""Worker-side generation: one model instance per process (small LRU cache), length-bucketed
batches, CUDA when present, and a smaller batch after a CUDA out-of-memory error.

Kept apart from ``services`` because it is the only place in ``evalsite`` that runs PyTorch; it
is imported by the generation task body only, never at Django start-up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cachetools import LRUCache

import models

logger = logging.getLogger(__name__)

MODEL_CACHE_SIZE = int(os.environ.get("EVALSITE_MODEL_CACHE_SIZE", "2"))


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given (and not "auto"), else CUDA when present, else CPU."""
    if requested and requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelCache:
    """A few loaded models per worker process, keyed by file identity so a rewritten file reloads.

    The least recently used model is dropped first (cachetools' LRUCache); loading happens outside the
    lock, so one slow load does not hold up a hit for another model."""

    def __init__(self, size: int = MODEL_CACHE_SIZE) -> None:
        self.size = size
        self._models: LRUCache[tuple, models.AudioModel] = LRUCache(maxsize=size)
        self._lock = threading.Lock()
        self.loads = 0

    @staticmethod
    def _key(uri: str, family: str | None, device: str, plugins: tuple[str, ...] = ()) -> tuple:
        path = Path(uri)
        try:
            stat = path.stat()
            identity = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            identity = (None, None)  # models.load reports the missing file with its name
        return (str(path.resolve()), identity, family, device, plugins)

    def get(
        self, uri: str, *, family: str | None, device: str, plugins: tuple[str, ...] = ()
    ) -> models.AudioModel:
        """The loaded model; ``plugins`` are the dotted-path families the operator allowed."""
        key = self._key(uri, family, device, plugins)
        with self._lock:
            model = self._models.get(key)
        if model is not None:
            return model
        model = models.load(uri, family=family, device=device, plugins=plugins)
        self.loads += 1
        with self._lock:
            self._models[key] = model
        return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self.loads = 0


model_cache = ModelCache()


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped so each batch holds clips of similar length (less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def item_seed(base_seed: int, key: str) -> int:
    """Seed of one item: stable across runs and independent of the other items in the set."""
    return (base_seed * 1_000_003 + zlib.crc32(key.encode())) % (2**31)


@dataclass
class BatchOutput:
    index: int
    audio: np.ndarray
    seconds: float


def autocast(device: str, dtype: str):
    if dtype == "bf16":
        return torch.autocast(
            device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16
        )
    return torch.autocast(device_type="cpu", enabled=False)


def run_waveform_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    waves: Sequence[np.ndarray],
    *,
    batch_size: int,
    device: str,
    dtype: str = "fp32",
) -> Iterator[BatchOutput]:
    """Apply ``fn`` ((B, T) → (B, T)) to mono clips in length-bucketed, zero-padded batches.

    Yields one output per clip, trimmed to its input length, with its share of the batch time.
    After a CUDA out-of-memory error the same clips are retried in halves down to batch size 1.
    """
    pending = length_buckets([len(w) for w in waves], batch_size)
    while pending:
        bucket = pending.pop(0)
        longest = max(len(waves[i]) for i in bucket)
        batch = np.zeros((len(bucket), longest), dtype=np.float32)
        for row, i in enumerate(bucket):
            batch[row, : len(waves[i])] = waves[i]
        started = time.perf_counter()
        try:
            with torch.inference_mode(), autocast(device, dtype):
                out = fn(torch.from_numpy(batch).to(device)).float()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(bucket) == 1:
                raise
            half = len(bucket) // 2
            logger.warning(
                "CUDA out of memory at batch %d; retrying as %d + %d", len(bucket), half, len(bucket) - half
            )
            pending[:0] = [bucket[:half], bucket[half:]]
            continue
        elapsed = time.perf_counter() - started
        out_np = out.cpu().numpy()
        total = sum(len(waves[i]) for i in bucket)
        for row, i in enumerate(bucket):
            n = len(waves[i])
            yield BatchOutput(index=i, audio=out_np[row, :n].copy(), seconds=elapsed * n / total)
