"""Resemblyzer's GE2E speaker encoder (256-d), weights shipped in the ``resemblyzer`` wheel.

Frames are resemblyzer's *partial utterances*: 1.6 s windows (160 mel frames of 40 bands,
25 ms / 10 ms) at ``rate`` partials per second, each embedded and L2-normalised; the clip
embedding is the L2-normalised mean of its partials (``VoiceEncoder.embed_utterance``). By
default each clip first goes through resemblyzer's ``preprocess_wav`` steps: volume raised to
-30 dBFS (never lowered) and long silences trimmed with webrtcvad.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metrics.embedders.base import Embedder, batched
from metrics.embedders.store import combined_checksum

SAMPLE_RATE = 16000


class ResemblyzerEmbedder(Embedder):
    """Speaker embeddings from resemblyzer's ``VoiceEncoder``.

    Args:
        device: Torch device (default CUDA when available).
        rate: Partial utterances per second (resemblyzer default 1.3).
        min_coverage: Keep a last, zero-padded partial when it covers at least this fraction.
        preprocess: Apply resemblyzer's volume normalisation and silence trimming.
        batch_size: Partials per forward pass.

    Example:
        >>> emb = ResemblyzerEmbedder(device="cpu")
        >>> emb.embed_clip([np.random.default_rng(0).normal(0, .1, 32000).astype(np.float32)]).shape
        (1, 256)
    """

    sample_rate = SAMPLE_RATE
    dim = 256

    def __init__(
        self,
        device=None,
        *,
        rate: float = 1.3,
        min_coverage: float = 0.75,
        preprocess: bool = True,
        batch_size: int = 64,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        import resemblyzer
        from resemblyzer import VoiceEncoder

        self.rate, self.min_coverage, self.preprocess = float(rate), float(min_coverage), bool(preprocess)
        self.name = (
            "resemblyzer-16k" + ("" if preprocess else "-raw") + ("" if rate == 1.3 else f"-rate{rate:g}")
        )
        path = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
        self.encoder = VoiceEncoder(device=self.device, verbose=False, weights_fpath=path).eval()
        self._weights_checksum = combined_checksum([path])

    def _spec_options(self) -> dict:
        return {
            "volume": "-30dBFS-increase-only" if self.preprocess else "none",
            "vad_trim": "webrtcvad-resemblyzer" if self.preprocess else "none",
            "partial": "1.6s-160x40mel",
            "rate": self.rate,
            "min_coverage": self.min_coverage,
            "clip": "l2norm(mean(partials))",
        }

    def _partials(self, wav: np.ndarray) -> np.ndarray:
        from resemblyzer import audio

        if self.preprocess:
            wav = audio.normalize_volume(wav, -30, increase_only=True)
            trimmed = audio.trim_long_silences(wav)
            wav = trimmed if len(trimmed) else wav
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), self.rate, self.min_coverage)
        need = wav_slices[-1].stop
        if need >= len(wav):
            wav = np.pad(wav, (0, need - len(wav)))
        mel = audio.wav_to_mel_spectrogram(wav)
        return np.stack([mel[s] for s in mel_slices]).astype(np.float32)

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Partial-utterance embeddings ``(partials_i, 256)``, each L2-normalised."""
        waves = self._check_waves(waves)
        if not waves:
            return []
        parts = [self._partials(w) for w in waves]
        counts = [p.shape[0] for p in parts]
        flat = np.concatenate(parts)
        outs = [
            self.encoder(torch.from_numpy(chunk).to(self.device)) for chunk in batched(flat, self.batch_size)
        ]
        emb = torch.cat(outs).float().cpu().numpy()
        return list(np.split(emb, np.cumsum(counts)[:-1]))

    def embed_clip(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Utterance embeddings ``(N, 256)``: L2-normalised mean of the partials (resemblyzer's own)."""
        mean = super().embed_clip(waves)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
