"""PANNs Cnn14 (Kong et al. 2020) in the layout of the released checkpoints, 16 kHz and 32 kHz.

Front end (from the PANNs configs): Hann window, centred STFT with reflect padding, power
spectrogram, 64 Slaney mel bands (librosa ``filters.mel``), ``10*log10(max(mel, 1e-10))``:

==========  ======  ====  ======  ============
variant     window  hop   fmin    fmax
==========  ======  ====  ======  ============
16 kHz      512     160   50 Hz   8000 Hz
32 kHz      1024    320   50 Hz   14000 Hz (not 16000: gudgud96's config differs from training)
==========  ======  ====  ======  ============

Body: BatchNorm over mel bands, six conv blocks (two 3x3 conv + BN + ReLU, 2x2 average pool
except the last), mean over frequency, max + mean over time, ``fc1`` (2048-d embedding after
ReLU) and ``fc_audioset`` (527 AudioSet logits). Checkpoints are ``{"model": state_dict, ...}``
with keys ``spectrogram_extractor.stft.conv_{real,imag}.weight``, ``logmel_extractor.melW``,
``bn0.*``, ``conv_block{1..6}.{conv1,conv2,bn1,bn2}.*``, ``fc1.*``, ``fc_audioset.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.embedders.base import Embedder, length_buckets
from metrics.embedders.store import ModelStore, WeightFile, combined_checksum

N_CLASSES = 527
N_MELS = 64
EMBEDDING_DIM = 2048
ZENODO = "PANNs release on Zenodo (https://zenodo.org/record/3987831, qiuqiangkong/audioset_tagging_cnn)"


@dataclass(frozen=True)
class Cnn14Config:
    """Front-end parameters of one released Cnn14 checkpoint."""

    sample_rate: int
    window_size: int
    hop_size: int
    fmin: float
    fmax: float
    weights: WeightFile


CNN14_CONFIGS = {
    16000: Cnn14Config(
        16000,
        512,
        160,
        50.0,
        8000.0,
        WeightFile("panns", "Cnn14_16k_mAP=0.438.pth", f"{ZENODO}: file Cnn14_16k_mAP=0.438.pth"),
    ),
    32000: Cnn14Config(
        32000,
        1024,
        320,
        50.0,
        14000.0,
        WeightFile("panns", "Cnn14_mAP=0.431.pth", f"{ZENODO}: file Cnn14_mAP=0.431.pth"),
    ),
}


class _ConvSTFT(nn.Module):
    """Centred STFT as two 1-D convolutions (the DFT rows times a periodic Hann window)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        n_bins = n_fft // 2 + 1
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_bins, dtype=torch.float64)[:, None]
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        angle = 2 * torch.pi * k * n / n_fft
        self.conv_real = nn.Conv1d(1, n_bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_bins, n_fft, stride=hop, bias=False)
        self.conv_real.weight = nn.Parameter(
            (torch.cos(angle) * window)[:, None].float(), requires_grad=False
        )
        self.conv_imag.weight = nn.Parameter(
            (-torch.sin(angle) * window)[:, None].float(), requires_grad=False
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = F.pad(wav[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real, imag = self.conv_real(x), self.conv_imag(x)  # (B, F, T)
        return (real**2 + imag**2).transpose(1, 2)[:, None]  # power (B, 1, T, F)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.stft = _ConvSTFT(n_fft, hop)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.stft(wav)


class _LogMel(nn.Module):
    def __init__(self, sample_rate: int, n_fft: int, fmin: float, fmax: float) -> None:
        super().__init__()
        import librosa

        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=N_MELS, fmin=fmin, fmax=fmax)
        self.melW = nn.Parameter(torch.from_numpy(mel.T.astype(np.float32)), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))


class _ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14(nn.Module):
    """Cnn14 for inference: ``(B, T)`` waveform → ``(embedding (B, 2048), logits (B, 527))``.

    Example:
        >>> net = Cnn14(CNN14_CONFIGS[16000]).eval()
        >>> emb, logits = net(torch.zeros(2, 16000))
        >>> tuple(emb.shape), tuple(logits.shape)
        ((2, 2048), (2, 527))
    """

    def __init__(self, config: Cnn14Config, classes: int = N_CLASSES) -> None:
        super().__init__()
        self.spectrogram_extractor = _Spectrogram(config.window_size, config.hop_size)
        self.logmel_extractor = _LogMel(config.sample_rate, config.window_size, config.fmin, config.fmax)
        self.bn0 = nn.BatchNorm2d(N_MELS)
        chans = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", _ConvBlock(chans[i], chans[i + 1]))
        self.fc1 = nn.Linear(2048, EMBEDDING_DIM)
        self.fc_audioset = nn.Linear(2048, classes)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.logmel_extractor(self.spectrogram_extractor(wav))  # (B, 1, T, 64)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, 2 if i < 6 else 1)
        x = x.mean(dim=3)
        x = x.max(dim=2).values + x.mean(dim=2)
        emb = F.relu(self.fc1(x))
        return emb, self.fc_audioset(emb)


class PannsCnn14Embedder(Embedder):
    """PANNs Cnn14 clip embedding (2048-d, ReLU(fc1)) and AudioSet logits (527).

    One row per clip (``frame_level = False``): Cnn14 pools over time itself. Clips are batched
    only with clips of identical length, because padding would change the max/mean pooling.
    Clips shorter than ``min_seconds`` are zero-padded (Cnn14 needs ≥ 32 frames for its pools).

    Args:
        store: Model store with ``panns/Cnn14_16k_mAP=0.438.pth`` or ``panns/Cnn14_mAP=0.431.pth``.
        device: Torch device (default CUDA when available).
        sample_rate: 16000 or 32000.
        batch_size: Clips per forward pass.

    Example:
        >>> emb = PannsCnn14Embedder(sample_rate=32000)  # doctest: +SKIP
        >>> emb.classify([np.zeros(32000, np.float32)]).shape  # doctest: +SKIP
        (1, 527)
    """

    dim = EMBEDDING_DIM
    frame_level = False
    min_seconds = 1.0

    def __init__(
        self, store: ModelStore | None = None, device=None, *, sample_rate: int = 16000, batch_size: int = 16
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if sample_rate not in CNN14_CONFIGS:
            raise ValueError(
                f"Cnn14 checkpoints exist for sample rates {sorted(CNN14_CONFIGS)}; got {sample_rate}"
            )
        self.config = CNN14_CONFIGS[sample_rate]
        self.sample_rate = sample_rate
        self.name = f"panns-cnn14-{sample_rate // 1000}k"
        ckpt, path = (store or ModelStore()).load_torch(self.config.weights, embedder=self.name)
        state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
        self.net = Cnn14(self.config)
        self.net.load_state_dict(state, strict=True)
        self.net.to(self.device).eval()
        self._weights_checksum = combined_checksum([path])

    def _spec_options(self) -> dict:
        c = self.config
        return {
            "stft": f"hann-{c.window_size}-hop{c.hop_size}-center-reflect-power",
            "mel": f"slaney-{N_MELS}-{c.fmin:g}-{c.fmax:g}",
            "log": "10log10(max(mel,1e-10))",
            "pooling": "clip(max+mean over time)",
            "pad_short": f"zero-to-{self.min_seconds:g}s",
            "output": "relu(fc1)",
        }

    @torch.inference_mode()
    def _forward_all(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        waves = self._check_waves(waves)
        min_len = int(self.min_seconds * self.sample_rate)
        waves = [np.pad(w, (0, min_len - len(w))) if len(w) < min_len else w for w in waves]
        emb = np.zeros((len(waves), EMBEDDING_DIM), np.float32)
        logits = np.zeros((len(waves), N_CLASSES), np.float32)
        for idx in length_buckets([len(w) for w in waves], self.batch_size):
            x = torch.as_tensor(np.stack([waves[i] for i in idx]), device=self.device)
            e, lg = self.net(x)
            emb[idx], logits[idx] = e.float().cpu().numpy(), lg.float().cpu().numpy()
        return emb, logits

    def embed(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One ``(1, 2048)`` row per clip (see :class:`Embedder`)."""
        emb, _ = self._forward_all(waves)
        return [row[None] for row in emb]

    def embed_clip(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, 2048)`` clip embeddings."""
        return self._forward_all(waves)[0]

    def classify(self, waves: Sequence[np.ndarray], *, activation: str = "logits") -> np.ndarray:
        """AudioSet class scores ``(N, 527)``.

        Args:
            waves: Mono float32 clips at :attr:`sample_rate`.
            activation: ``"logits"`` (pre-sigmoid, what IS/KL code applies softmax to) or
                ``"sigmoid"`` (PANNs' ``clipwise_output``).
        """
        if activation not in ("logits", "sigmoid"):
            raise ValueError(f"activation must be 'logits' or 'sigmoid'; got {activation!r}")
        logits = self._forward_all(waves)[1]
        return logits if activation == "logits" else (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def embed_and_classify(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 2048)`` embeddings and ``(N, 527)`` logits from one forward pass."""
        return self._forward_all(waves)
