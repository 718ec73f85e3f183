"""LAION-CLAP audio and text embeddings (512-d), laion_clap's own model class, weights from the store.

laion_clap's ``CLAP_Module`` cannot be used offline: its constructor calls
``RobertaModel.from_pretrained('roberta-base')`` and ``RobertaTokenizer.from_pretrained``, and
with ``HF_HUB_OFFLINE=1`` transformers 5 silently returns a 5-token tokenizer instead of
failing. So this module builds the model with ``clap_module.factory.create_model`` while the
``RobertaModel`` name inside ``clap_module.model`` is temporarily bound to a shim that builds
an *untrained* roberta-base (config from ``<store>/clap/roberta-base/config.json`` when
present, else the published roberta-base hyperparameters); every text-branch weight is then
overwritten by the CLAP checkpoint (strict load). The tokenizer is loaded only from
``<store>/clap/roberta-base/{vocab.json,merges.txt}`` and is needed only for :meth:`embed_text`.

Audio (deterministic, unlike laion_clap's random crop for clips > 10 s): 48 kHz mono, int16
round trip (as ``get_audio_embedding_from_data``), split into 10 s windows every ``hop_s``
seconds; a window shorter than 10 s is filled as laion_clap's ``repeatpad`` (repeat the audio,
then zero-pad). Frames = windows; the clip embedding is their mean.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metrics.embedders.base import Embedder, set_offline_hub_env
from metrics.embedders.store import MissingWeightsError, ModelStore, WeightFile, combined_checksum

SAMPLE_RATE = 48000
WINDOW_SAMPLES = 480000
HF_LAION = "Hugging Face repo lukewys/laion_clap (https://huggingface.co/lukewys/laion_clap/blob/main/{})"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_SOURCE = (
    "the Hugging Face repo FacebookAI/roberta-base (https://huggingface.co/FacebookAI/roberta-base)"
)
ROBERTA_BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=514,
    type_vocab_size=1,
    initializer_range=0.02,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


@dataclass(frozen=True)
class ClapVariant:
    """A released non-fusion LAION-CLAP checkpoint."""

    key: str
    audio_model: str
    weights: WeightFile

    @property
    def name(self) -> str:
        return f"clap-laion-{self.key}-48k"


def _variant(key: str, audio_model: str, filename: str) -> ClapVariant:
    return ClapVariant(key, audio_model, WeightFile("clap", filename, HF_LAION.format(filename)))


CLAP_VARIANTS = {
    v.key: v
    for v in (
        _variant("630k-audioset", "HTSAT-tiny", "630k-audioset-best.pt"),
        _variant("630k", "HTSAT-tiny", "630k-best.pt"),
        _variant("music-speech-audioset", "HTSAT-base", "music_speech_audioset_epoch_15_esc_89.98.pt"),
        _variant("music-audioset", "HTSAT-base", "music_audioset_epoch_15_esc_90.14.pt"),
    )
}

_build_lock = threading.Lock()


@contextlib.contextmanager
def _offline_roberta(config_path):
    """Bind ``clap_module.model.RobertaModel`` to a builder of an untrained roberta-base."""
    import clap_module.model as clap_model
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig.from_json_file(str(config_path)) if config_path else RobertaConfig(**ROBERTA_BASE)

    class _Shim:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            return RobertaModel(config, add_pooling_layer=True)

    original = clap_model.RobertaModel
    clap_model.RobertaModel = _Shim
    try:
        yield
    finally:
        clap_model.RobertaModel = original


def build_clap_model(audio_model: str = "HTSAT-tiny", roberta_config=None) -> torch.nn.Module:
    """laion_clap's CLAP model (non-fusion, RoBERTa text branch) with untrained weights, offline."""
    set_offline_hub_env()
    import laion_clap  # noqa: F401  (puts clap_module on sys.path)
    from clap_module.factory import create_model

    with _build_lock, _offline_roberta(roberta_config):
        model, _cfg = create_model(
            audio_model, "roberta", precision="fp32", device="cpu", enable_fusion=False
        )
    return model


def clap_state_dict(checkpoint) -> dict:
    """The model state dict of a LAION-CLAP checkpoint (``{"state_dict": {"module.…": …}}``),
    without ``module.`` prefixes and without ``text_branch.embeddings.position_ids``."""
    sd = (
        checkpoint["state_dict"]
        if isinstance(checkpoint, dict) and "state_dict" in checkpoint
        else checkpoint
    )
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    sd.pop("text_branch.embeddings.position_ids", None)
    return sd


class ClapEmbedder(Embedder):
    """LAION-CLAP (non-fusion) audio embeddings per 10 s window, and text embeddings.

    Args:
        store: Model store with ``clap/<checkpoint>``; ``clap/roberta-base/{vocab.json,merges.txt}``
            for :meth:`embed_text`.
        device: Torch device (default CUDA when available).
        variant: One of :data:`CLAP_VARIANTS` (``"630k-audioset"`` default).
        hop_s: Window hop in seconds (10 = non-overlapping; fadtk uses 1).
        int16_roundtrip: Quantise audio to 16 bit first, as laion_clap does.
        batch_size: Windows per forward pass.

    Example:
        >>> emb = ClapEmbedder(variant="630k-audioset")  # doctest: +SKIP
        >>> emb.embed_text(["a dog barks"]).shape  # doctest: +SKIP
        (1, 512)
    """

    sample_rate = SAMPLE_RATE
    dim = 512

    def __init__(
        self,
        store: ModelStore | None = None,
        device=None,
        *,
        variant: str = "630k-audioset",
        hop_s: float = 10.0,
        int16_roundtrip: bool = True,
        batch_size: int = 8,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if variant not in CLAP_VARIANTS:
            raise ValueError(f"CLAP variant must be one of {sorted(CLAP_VARIANTS)}; got {variant!r}")
        if hop_s <= 0:
            raise ValueError(f"hop_s must be positive; got {hop_s}")
        self.variant = CLAP_VARIANTS[variant]
        self.hop_s, self.int16_roundtrip = float(hop_s), bool(int16_roundtrip)
        self.name = (
            self.variant.name
            + ("" if hop_s == 10.0 else f"-hop{hop_s:g}s")
            + ("" if int16_roundtrip else "-float")
        )
        self.store = store or ModelStore()
        ckpt, path = self.store.load_torch(self.variant.weights, embedder=self.name)
        tok_dir = self.store.root / "clap" / "roberta-base"
        config = tok_dir / "config.json"
        self.model = build_clap_model(self.variant.audio_model, config if config.is_file() else None)
        self.model.load_state_dict(clap_state_dict(ckpt), strict=True)
        self.model.to(self.device).eval()
        self._weights_checksum = combined_checksum([path])
        self._tokenizer = None

    def _spec_options(self) -> dict:
        return {
            "window_s": 10.0,
            "hop_s": self.hop_s,
            "fill": "repeatpad",
            "int16_roundtrip": self.int16_roundtrip,
            "fusion": False,
            "audio_model": self.variant.audio_model,
            "clip": "mean(windows)",
        }

    def windows(self, wav: np.ndarray) -> np.ndarray:
        """``(W, 480000)`` windows of one clip, short ones repeat-padded."""
        if self.int16_roundtrip:
            wav = (np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
        hop = int(round(self.hop_s * SAMPLE_RATE))
        starts = [0] if len(wav) <= WINDOW_SAMPLES else list(range(0, len(wav) - WINDOW_SAMPLES + hop, hop))
        out = []
        for s in starts:
            w = wav[s : s + WINDOW_SAMPLES]
            if len(w) < WINDOW_SAMPLES:
                w = np.tile(w, WINDOW_SAMPLES // len(w))
                w = np.pad(w, (0, WINDOW_SAMPLES - len(w)))
            out.append(w)
        return np.stack(out).astype(np.float32)

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-window ``(windows_i, 512)`` L2-normalised audio embeddings."""
        waves = self._check_waves(waves)
        if not waves:
            return []
        wins = [self.windows(w) for w in waves]
        counts = [w.shape[0] for w in wins]
        flat = np.concatenate(wins)
        outs = []
        for i in range(0, len(flat), self.batch_size):
            x = torch.from_numpy(flat[i : i + self.batch_size]).to(self.device)
            outs.append(self.model.get_audio_embedding([{"waveform": row} for row in x]))
        emb = torch.cat(outs).float().cpu().numpy()
        return list(np.split(emb, np.cumsum(counts)[:-1]))

    def tokenizer(self):
        """The RoBERTa tokenizer from ``<store>/clap/roberta-base`` (raises when absent)."""
        if self._tokenizer is None:
            from metrics.embedders.fetch import FETCH_COMMAND, TOKENIZER_TARGET

            tok_dir = self.store.root / "clap" / "roberta-base"
            missing = [f for f in TOKENIZER_FILES if not (tok_dir / f).is_file()]
            if missing:
                raise MissingWeightsError(
                    f"{self.name}: text embedding needs the roberta-base tokenizer files {missing} in {tok_dir} "
                    f"(model store {self.store.root}); they come from {TOKENIZER_SOURCE}. Fetch them with "
                    f"`{FETCH_COMMAND} {TOKENIZER_TARGET}`. Nothing is downloaded at run time."
                )
            set_offline_hub_env()
            from transformers import RobertaTokenizer

            self._tokenizer = RobertaTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        return self._tokenizer

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings ``(N, 512)`` (RoBERTa, max 77 tokens, as laion_clap)."""
        if isinstance(texts, str):
            raise TypeError("embed_text takes a list of strings")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tok = self.tokenizer()(
            list(texts), padding="max_length", truncation=True, max_length=77, return_tensors="pt"
        )
        data = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}
        return self.model.get_text_embedding(data).float().cpu().numpy()
