"""VGGish (Hershey et al. 2017) in the torchvggish state-dict layout, with its log-mel front end.

Front end (restated from Google's ``vggish_params`` / ``mel_features``): 16 kHz mono; 25 ms
periodic-Hann window (400 samples) in a 512-point FFT, 10 ms hop, no padding; magnitude
spectrogram; 64 HTK-mel triangles from 125 to 7500 Hz (DC bin zeroed); ``log(mel + 0.01)``;
patches of 96 frames x 64 bands (0.96 s). torchvggish hops 0.96 s; Google's FAD pipeline
steps 0.5 s (``hop_s=0.5`` gives that, under a different name).

Weights: torchvggish's ``vggish-10086976.pth`` (keys ``features.{0,3,6,8,11,13}.*``,
``embeddings.{0,2,4}.*``) and, for the PCA variant, ``vggish_pca_params-970ea276.pth``
(``pca_eigen_vectors`` (128, 128), ``pca_means`` (128,)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from metrics.embedders.base import Embedder, batched
from metrics.embedders.store import ModelStore, WeightFile, combined_checksum

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400
HOP_SAMPLES = 160
FFT_SIZE = 512
N_MELS = 64
FMIN_HZ = 125.0
FMAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96
EMBEDDING_DIM = 128

VGGISH_WEIGHTS = WeightFile(
    "vggish",
    "vggish-10086976.pth",
    "torchvggish (harritaylor/torchvggish GitHub release v0.1: "
    "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth), "
    "a port of Google's AudioSet VGGish checkpoint",
)
VGGISH_PCA = WeightFile(
    "vggish",
    "vggish_pca_params-970ea276.pth",
    "torchvggish GitHub release v0.1: "
    "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth",
)


def _hz_to_mel_htk(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix() -> np.ndarray:
    """The ``(257, 64)`` mel weight matrix of VGGish (triangles in HTK-mel space, DC row zeroed)."""
    n_bins = FFT_SIZE // 2 + 1
    bins_mel = _hz_to_mel_htk(np.linspace(0.0, SAMPLE_RATE / 2, n_bins))
    edges = np.linspace(_hz_to_mel_htk(FMIN_HZ), _hz_to_mel_htk(FMAX_HZ), N_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower[None]) / (center - lower)[None]
    falling = (upper[None] - bins_mel[:, None]) / (upper - center)[None]
    w = np.maximum(0.0, np.minimum(rising, falling))
    w[0, :] = 0.0
    return w


class VGGishFrontEnd(nn.Module):
    """Waveform ``(T,)`` → log-mel frames ``(F, 64)``, ``F = 1 + (T - 400) // 160``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "window", torch.hann_window(WINDOW_SAMPLES, periodic=True, dtype=torch.float64), persistent=False
        )
        self.register_buffer("mel", torch.from_numpy(vggish_mel_matrix()), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav.to(torch.float64)
        if x.shape[-1] < WINDOW_SAMPLES:
            return x.new_zeros((0, N_MELS))
        frames = x.unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES) * self.window
        mag = torch.fft.rfft(frames, n=FFT_SIZE).abs()
        return torch.log(mag @ self.mel + LOG_OFFSET)


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 1
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(v)
    return nn.Sequential(*layers)


class VGGishNet(nn.Module):
    """VGGish: ``(B, 1, 96, 64)`` log-mel patches → ``(B, 128)`` (no final ReLU, as in Google's model).

    State-dict keys match torchvggish: ``features.{0,3,6,8,11,13}.{weight,bias}``,
    ``embeddings.{0,2,4}.{weight,bias}``; 72,141,184 parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _make_features()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.features(patches)  # (B, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # channels-last flatten, as the TF original
        return self.embeddings(x)


class VGGishEmbedder(Embedder):
    """VGGish per-patch embeddings (128-d).

    Args:
        store: Model store holding ``vggish/vggish-10086976.pth`` (and the PCA file for ``pca=True``).
        device: Torch device (default CUDA when available).
        hop_s: Patch hop in seconds: 0.96 (torchvggish, gudgud96, fadtk) or 0.5 (Google's FAD).
        pca: Apply the AudioSet PCA/whitening + 8-bit quantisation post-processing.
        batch_size: Patches per forward pass.

    Clips shorter than one patch (0.975 s) are zero-padded to one patch (fadtk does the same).

    Example:
        >>> emb = VGGishEmbedder(store=ModelStore("var/model-store"))  # doctest: +SKIP
        >>> [f.shape for f in emb.embed([np.zeros(32000, np.float32)])]  # doctest: +SKIP
        [(2, 128)]
    """

    sample_rate = SAMPLE_RATE
    dim = EMBEDDING_DIM

    def __init__(
        self,
        store: ModelStore | None = None,
        device=None,
        *,
        hop_s: float = 0.96,
        pca: bool = False,
        batch_size: int = 256,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if hop_s <= 0:
            raise ValueError(f"hop_s must be positive; got {hop_s}")
        self.hop_s = float(hop_s)
        self.pca = pca
        self.name = (
            "vggish-16k"
            + ("-pca8bit" if pca else "")
            + ("" if math.isclose(hop_s, 0.96) else f"-hop{hop_s:g}s")
        )
        store = store or ModelStore()
        weights, path = store.load_torch(VGGISH_WEIGHTS, embedder=self.name)
        paths = [path]
        self.net = VGGishNet()
        self.net.load_state_dict(_state_dict(weights), strict=True)
        if pca:
            # A dict of numpy arrays upstream; load_torch allows numeric arrays and nothing else.
            params, pca_path = store.load_torch(VGGISH_PCA, embedder=self.name)
            paths.append(pca_path)
            self.pca_matrix = torch.as_tensor(np.asarray(params["pca_eigen_vectors"]), dtype=torch.float32)
            self.pca_means = torch.as_tensor(np.asarray(params["pca_means"]), dtype=torch.float32).reshape(
                1, -1
            )
            if (
                self.pca_matrix.shape != (EMBEDDING_DIM, EMBEDDING_DIM)
                or self.pca_means.shape[1] != EMBEDDING_DIM
            ):
                raise ValueError(
                    f"{paths[1]}: PCA params must be (128, 128) and (128,); got "
                    f"{tuple(self.pca_matrix.shape)} and {tuple(self.pca_means.shape)}"
                )
            self.pca_matrix, self.pca_means = self.pca_matrix.to(self.device), self.pca_means.to(self.device)
        self._weights_checksum = combined_checksum(paths)
        self.front_end = VGGishFrontEnd().to(self.device)
        self.net.to(self.device).eval()

    def _spec_options(self) -> dict:
        return {
            "window": "hann-periodic-400/fft512",
            "hop_samples": HOP_SAMPLES,
            "mel": "htk-64-125-7500",
            "log": "log(mel+0.01)",
            "patch_frames": PATCH_FRAMES,
            "patch_hop_s": self.hop_s,
            "pad_short": "zero-to-one-patch",
            "final_relu": False,
            "postprocess": "pca-8bit" if self.pca else "none",
        }

    def patches(self, wav: np.ndarray) -> torch.Tensor:
        """Log-mel patches ``(P, 1, 96, 64)`` of one clip (float32, on the embedder's device)."""
        x = torch.as_tensor(wav, dtype=torch.float32, device=self.device)
        min_len = WINDOW_SAMPLES + (PATCH_FRAMES - 1) * HOP_SAMPLES
        if x.shape[0] < min_len:
            x = torch.nn.functional.pad(x, (0, min_len - x.shape[0]))
        mel = self.front_end(x).to(torch.float32)
        hop_frames = max(1, int(round(self.hop_s * SAMPLE_RATE / HOP_SAMPLES)))
        return mel.unfold(0, PATCH_FRAMES, hop_frames).transpose(1, 2).unsqueeze(1)

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-patch embeddings ``(patches_i, 128)`` for each clip (see :class:`Embedder`)."""
        waves = self._check_waves(waves)
        all_patches = [self.patches(w) for w in waves]
        counts = [p.shape[0] for p in all_patches]
        flat = torch.cat(all_patches) if all_patches else torch.zeros((0, 1, PATCH_FRAMES, N_MELS))
        outs = [self.net(chunk) for chunk in batched(flat, self.batch_size)] if len(flat) else []
        emb = torch.cat(outs) if outs else flat.new_zeros((0, EMBEDDING_DIM))
        if self.pca:
            emb = (emb - self.pca_means) @ self.pca_matrix.T
            emb = torch.round((emb.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))
        emb = emb.float().cpu().numpy()
        return list(np.split(emb, np.cumsum(counts)[:-1])) if waves else []


def _state_dict(sd) -> dict:
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd
