"""EnCodec 24 kHz encoder latents (128-d at 75 Hz, before quantisation), via the ``encodec`` package.

The model is built with ``EncodecModel.encodec_model_24khz(pretrained=False)`` and loaded from
``<store>/encodec/encodec_24khz-d7cc33bc.th`` (a plain state dict). A clip gives
``ceil(T / 320)`` frames. Only clips of equal length share a batch: EnCodec pads the end to
whole frames itself, and extra padding would change the last frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from metrics.embedders.base import Embedder, length_buckets
from metrics.embedders.store import ModelStore, WeightFile, combined_checksum

SAMPLE_RATE = 24000
HOP = 320
ENCODEC_24K = WeightFile(
    "encodec",
    "encodec_24khz-d7cc33bc.th",
    "Meta's EnCodec release (facebookresearch/encodec): https://dl.fbaipublicfiles.com/encodec/v0/encodec_24khz-d7cc33bc.th",
)


def build_encodec_24k() -> torch.nn.Module:
    """The untrained 24 kHz EnCodec model (raises ImportError with the package name)."""
    try:
        from encodec import EncodecModel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the encodec-24k embedder needs the 'encodec' package: pip install encodec"
        ) from exc
    return EncodecModel.encodec_model_24khz(pretrained=False)


class EncodecEmbedder(Embedder):
    """EnCodec 24 kHz encoder output per 13.3 ms frame (128-d).

    Args:
        store: Model store with ``encodec/encodec_24khz-d7cc33bc.th``.
        device: Torch device (default CUDA when available).
        batch_size: Clips per forward pass.

    Example:
        >>> emb = EncodecEmbedder()  # doctest: +SKIP
        >>> emb.embed([np.zeros(24000, np.float32)])[0].shape  # doctest: +SKIP
        (75, 128)
    """

    sample_rate = SAMPLE_RATE
    dim = 128
    name = "encodec-24k"

    def __init__(self, store: ModelStore | None = None, device=None, *, batch_size: int = 8) -> None:
        super().__init__(device=device, batch_size=batch_size)
        state, path = (store or ModelStore()).load_torch(ENCODEC_24K, embedder=self.name)
        self.model = build_encodec_24k()
        self.model.load_state_dict(state, strict=True)
        self.model.to(self.device).eval()
        self._weights_checksum = combined_checksum([path])

    def _spec_options(self) -> dict:
        return {
            "layer": "encoder-output-pre-quantisation",
            "frame_rate_hz": 75,
            "normalize": False,
            "channels": 1,
        }

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame ``(ceil(T_i / 320), 128)`` latents."""
        waves = self._check_waves(waves)
        out: list[np.ndarray | None] = [None] * len(waves)
        for idx in length_buckets([len(w) for w in waves], self.batch_size):
            x = torch.as_tensor(np.stack([waves[i] for i in idx]), device=self.device)[:, None]
            z = self.model.encoder(x).transpose(1, 2).float().cpu().numpy()  # (B, frames, 128)
            for j, i in enumerate(idx):
                out[i] = z[j, : math.ceil(len(waves[i]) / HOP)]
        return out  # type: ignore[return-value]
