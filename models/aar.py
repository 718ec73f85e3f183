"""AAR-style next-scale-prediction generator over a bundled SAT tokenizer.

The sequence of one window is the concatenation of the K token maps (``L = sum(scales)``
positions). Position 0..s_0-1 holds the condition embedding (the start token); the inputs of
scale k ≥ 1 are ``word_embed`` of the cumulative quantized latent f̂ of scales < k,
area-downsampled to s_k. A block-causal mask lets every position see its own and all earlier
scales. Inference runs K steps with a KV cache, doubling the batch for classifier-free guidance
with strength ``t_k = cfg_scale * k / (K - 1)`` (a linear ramp): ``(1 + t) cond - t uncond``.

Our checkpoints bundle the tokenizer (keys ``tokenizer.*``, config in ``AARConfig.tokenizer``),
so a generator file is loadable on its own. The transformer's keys are AAR's (VAR layout), so a
released AAR training file (``{"model_state_dict": ...}``, e.g. ``AAR_d16_bs2048.pth``), which
holds the transformer only, loads once it is paired with its SAT file: ``models.load(aar_path,
tokenizer=sat_path)`` (see :func:`models.load`). AAR's deterministic persistent buffers
(``lvl_1L``, ``attn_bias_for_masking``, ``blocks.{i}.attn.zero_k_bias``) are dropped on load
and rebuilt here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from models.base import Generator
from models.quantizer import drop_ema_statistics
from models.sampling import sample_tokens
from models.sat import SATConfig, SATTokenizer
from models.transformer import AdaLNBeforeHead, AdaLNSelfAttnBlock, KVCache

# The official sampler's settings (qiuk2/AAR ``autoregressive_infer_cfg`` as its inference CLI calls it;
# its in-training evaluation uses top-k 900). FAD/IS/KL are only comparable with the paper's under these.
OFFICIAL_CFG_SCALE = 4.0
OFFICIAL_TOP_K = 200
OFFICIAL_TOP_P = 0.95


@dataclass(frozen=True)
class AARConfig:
    """Generator hyper-parameters (defaults: AAR d16 ≈ 307.6 M transformer parameters).

    Attributes:
        depth: Transformer blocks.
        embed_dim: Width C (None: 64 * depth).
        num_heads: Heads (None: depth).
        mlp_ratio: FFN expansion.
        cond_dim: Conditioning vector size (CLAP: 512).
        num_classes: > 0 makes the model class-conditional (cond = LongTensor ids).
        cond_drop_rate: Probability of replacing the condition by the unconditional one while
            training (classifier-free guidance dropout).
        init_std: Std of the learned positional embeddings at initialisation.
        cos_attn: Cosine attention with learned per-head scales (AAR's inference config);
            False: dot-product attention scaled by 1 / (4 sqrt(head_dim)) (``build_aar``'s default).
        tokenizer: The SAT tokenizer the tokens belong to.
    """

    depth: int = 16
    embed_dim: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    cond_dim: int = 512
    num_classes: int = 0
    cond_drop_rate: float = 0.1
    init_std: float = 0.02
    cos_attn: bool = True
    tokenizer: SATConfig = field(default_factory=SATConfig)

    @property
    def width(self) -> int:
        """Resolved embed_dim."""
        return self.embed_dim if self.embed_dim is not None else 64 * self.depth

    @property
    def heads(self) -> int:
        """Resolved num_heads."""
        return self.num_heads if self.num_heads is not None else self.depth

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"embed_dim {self.width} must be divisible by num_heads {self.heads}")


def _d16_dot_attention() -> AARConfig:
    return AARConfig(cos_attn=False)


def _tiny() -> AARConfig:
    return AARConfig(depth=2, embed_dim=64, num_heads=2, tokenizer=SATTokenizer.preset("tiny"))


def _tiny_class() -> AARConfig:
    return AARConfig(
        depth=2, embed_dim=64, num_heads=2, num_classes=10, tokenizer=SATTokenizer.preset("tiny")
    )


class ConditionMLP(nn.Module):
    """Linear(cond_dim, C) → GELU(tanh) → Linear(C, C), no biases (keys ``fc1``, ``fc2``)."""

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cond_dim, dim, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, cond: Tensor) -> Tensor:
        """(B, cond_dim) → (B, C)."""
        return self.fc2(self.act(self.fc1(cond)))


class AARGenerator(Generator):
    """Condition → multi-scale tokens → waveform.

    Example:
        >>> gen = AARGenerator(AARGenerator.preset("tiny")).eval()
        >>> gen.generate(torch.randn(2, 512), seed=0).shape
        torch.Size([2, 512])
    """

    family: ClassVar[str] = "aar"
    config_class: ClassVar[type] = AARConfig
    presets: ClassVar[dict[str, Any]] = {
        "aar-d16": AARConfig,  # AAR_d16_bs2048.pth over SAT_d128_lat128.pth
        "aar-d16-dotattn": _d16_dot_attention,  # the same trained without --cos_attn
        "d16": AARConfig,
        "tiny": _tiny,
        "tiny-class": _tiny_class,
    }
    #: AAR buffers that are a function of the config; their stored copies are dropped on load.
    derived_buffers: ClassVar[tuple[str, ...]] = ("lvl_1L", "attn_bias_for_masking")

    def __init__(self, config: AARConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = SATTokenizer(config.tokenizer)
        width = config.width
        scales = self.tokenizer.scales
        self.num_scales = len(scales)
        self.seq_len = sum(scales)
        if config.num_classes > 0:
            self.class_emb: nn.Module = nn.Embedding(config.num_classes + 1, width)
        else:
            self.class_emb = ConditionMLP(config.cond_dim, width)
            self.register_buffer("uncond_embedding", torch.randn(1, config.cond_dim))
        self.word_embed = nn.Linear(config.tokenizer.latent_dim, width)
        self.pos_start = nn.Parameter(torch.empty(1, scales[0], width))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.seq_len, width))
        self.lvl_embed = nn.Embedding(self.num_scales, width)
        nn.init.trunc_normal_(self.pos_start, std=config.init_std)
        nn.init.trunc_normal_(self.pos_1LC, std=config.init_std)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=config.init_std)
        self.blocks = nn.ModuleList(
            AdaLNSelfAttnBlock(width, config.heads, config.mlp_ratio, cos_attn=config.cos_attn)
            for _ in range(config.depth)
        )
        self.head_nm = AdaLNBeforeHead(width)
        self.head = nn.Linear(width, config.tokenizer.codebook_size)
        levels = torch.cat([torch.full((s,), k) for k, s in enumerate(scales)])
        self.register_buffer("lvl_1L", levels.view(1, -1), persistent=False)
        mask = torch.where(levels.view(-1, 1) >= levels.view(1, -1), 0.0, float("-inf"))
        self.register_buffer("attn_bias_for_masking", mask, persistent=False)

    @property
    def sample_rate(self) -> int:
        return self.tokenizer.sample_rate

    @property
    def scales(self) -> tuple[int, ...]:
        """Token-map length of each scale (of the bundled tokenizer)."""
        return self.tokenizer.scales

    @property
    def window_samples(self) -> int:
        """Samples per generated window."""
        return self.tokenizer.window_samples

    @classmethod
    def remap_state_dict(cls, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop AAR's derived buffers and the bundled SAT's EMA codebook statistics."""
        out = drop_ema_statistics(state_dict, "tokenizer.quantizer.")
        return {
            k: v
            for k, v in out.items()
            if k not in cls.derived_buffers
            and not (k.startswith("blocks.") and k.endswith(".attn.zero_k_bias"))
        }

    @classmethod
    def matches_state_dict(cls, keys: set[str]) -> bool:
        return "pos_1LC" in keys and any(k.startswith("blocks.0.attn.") for k in keys)

    @classmethod
    def has_tokenizer_weights(cls, keys: set[str]) -> bool:
        """Whether a (normalised) key set bundles the tokenizer (ours do, AAR's files do not)."""
        return any(k.startswith("tokenizer.") for k in keys)

    def transformer_parameters(self) -> int:
        """Parameters outside the bundled tokenizer."""
        tok = {id(p) for p in self.tokenizer.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in tok)

    # -- conditioning ---------------------------------------------------------------------

    def _check_cond(self, cond: Tensor) -> None:
        if not isinstance(cond, Tensor):
            raise ValueError(f"cond must be a torch.Tensor, got {type(cond).__name__}")
        if self.config.num_classes > 0:
            if cond.dim() != 1 or cond.is_floating_point():
                raise ValueError(
                    f"this generator is class-conditional: cond must be a LongTensor of shape (B,), "
                    f"got {cond.dtype} of shape {tuple(cond.shape)}"
                )
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.config.num_classes):
                raise ValueError(f"class ids must be in [0, {self.config.num_classes})")
        elif cond.dim() != 2 or cond.shape[1] != self.config.cond_dim or not cond.is_floating_point():
            raise ValueError(
                f"cond must be a float tensor of shape (B, {self.config.cond_dim}), got {cond.dtype} "
                f"of shape {tuple(cond.shape)}"
            )

    def _uncond(self, batch: int) -> Tensor:
        if self.config.num_classes > 0:
            return torch.full((batch,), self.config.num_classes, dtype=torch.long, device=self.device)
        return self.uncond_embedding.expand(batch, -1)

    def embed_condition(self, cond: Tensor) -> Tensor:
        """(B, cond_dim) vectors or (B,) class ids → (B, C) condition embeddings."""
        if self.config.num_classes > 0:
            return self.class_emb(cond.long())
        return self.class_emb(cond.to(self.pos_1LC.dtype))

    # -- training path ------------------------------------------------------------------------

    def teacher_forcing_inputs(self, tokens: list[Tensor]) -> Tensor:
        """Inputs of scales 1..K-1 from ground-truth token maps [(B, s_k)] → (B, L - s_0, C)."""
        quantizer = self.tokenizer.rvq
        f_hat = torch.zeros(tokens[0].shape[0], quantizer.dim, quantizer.num_frames, device=tokens[0].device)
        inputs = []
        for k in range(self.num_scales - 1):
            f_hat = f_hat + quantizer.embed_scale(k, tokens[k])
            inputs.append(quantizer.downsample(f_hat, self.scales[k + 1]).transpose(1, 2))
        return self.word_embed(torch.cat(inputs, dim=1))

    def forward(self, cond: Tensor, tokens: list[Tensor]) -> Tensor:
        """Teacher-forced logits with the block-causal mask (differentiable; training path).

        Args:
            cond: (B, cond_dim) vectors or (B,) class ids.
            tokens: K token maps of one window, scale k of shape (B, s_k).

        Returns:
            (B, L, codebook_size) logits, L = sum(scales).
        """
        self._check_cond(cond)
        batch = cond.shape[0]
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(batch, device=cond.device) < self.config.cond_drop_rate
            uncond = self._uncond(batch)
            cond = torch.where(drop.view(-1, *([1] * (cond.dim() - 1))), uncond, cond)
        cond_emb = self.embed_condition(cond)
        sos = cond_emb.unsqueeze(1) + self.pos_start
        x = torch.cat([sos.expand(batch, self.scales[0], -1), self.teacher_forcing_inputs(tokens)], dim=1)
        x = x + self.lvl_embed(self.lvl_1L) + self.pos_1LC
        for block in self.blocks:
            x = block(x, cond_emb, self.attn_bias_for_masking)
        return self.head(self.head_nm(x, cond_emb))

    # -- inference --------------------------------------------------------------------------

    def _num_windows(self, num_frames: int | None, duration_s: float | None) -> tuple[int, int]:
        if num_frames is not None and duration_s is not None:
            raise ValueError("give num_frames or duration_s, not both")
        hop = self.tokenizer.config.hop_length
        if duration_s is not None:
            if duration_s <= 0:
                raise ValueError(f"duration_s must be > 0, got {duration_s}")
            samples = int(round(duration_s * self.sample_rate))
        elif num_frames is not None:
            if num_frames <= 0:
                raise ValueError(f"num_frames must be > 0, got {num_frames}")
            samples = num_frames * hop
        else:
            samples = self.window_samples
        return max(1, math.ceil(samples / self.window_samples)), samples

    @torch.inference_mode()
    def generate_tokens(
        self,
        cond: Tensor,
        *,
        seed: int,
        cfg_scale: float = OFFICIAL_CFG_SCALE,
        top_k: int | None = OFFICIAL_TOP_K,
        top_p: float | None = OFFICIAL_TOP_P,
        temperature: float = 1.0,
        num_windows: int = 1,
    ) -> list[Tensor]:
        """Sample token maps (see :meth:`generate` for the arguments).

        Returns:
            K LongTensors, scale k of shape (B, num_windows, s_k); windows are sampled
            independently with the same condition.
        """
        self._check_cond(cond)
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        batch = cond.shape[0]
        cond = cond.to(self.device).repeat_interleave(num_windows, dim=0)
        n = cond.shape[0]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed))
        cond_emb = self.embed_condition(torch.cat([cond, self._uncond(n)], dim=0))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        x = (cond_emb.unsqueeze(1) + self.pos_start).expand(2 * n, self.scales[0], -1)
        caches = [KVCache() for _ in self.blocks]
        quantizer = self.tokenizer.rvq
        f_hat = torch.zeros(
            n, quantizer.dim, quantizer.num_frames, device=self.device, dtype=self.pos_1LC.dtype
        )
        tokens = []
        cursor = 0
        for k, size in enumerate(self.scales):
            x = x + lvl_pos[:, cursor : cursor + size]
            cursor += size
            for block, cache in zip(self.blocks, caches):
                x = block(x, cond_emb, None, cache)
            logits = self.head(self.head_nm(x, cond_emb))
            t = cfg_scale * k / max(self.num_scales - 1, 1)
            guided = (1 + t) * logits[:n] - t * logits[n:]
            idx = sample_tokens(
                guided, generator=generator, top_k=top_k, top_p=top_p, temperature=temperature
            )
            tokens.append(idx)
            if k + 1 < self.num_scales:
                f_hat = f_hat + quantizer.embed_scale(k, idx)
                nxt = self.word_embed(quantizer.downsample(f_hat, self.scales[k + 1]).transpose(1, 2))
                x = torch.cat([nxt, nxt], dim=0)
        return [t.reshape(batch, num_windows, t.shape[-1]) for t in tokens]

    @torch.inference_mode()
    def generate(
        self,
        cond: Tensor,
        *,
        seed: int,
        cfg_scale: float = OFFICIAL_CFG_SCALE,
        top_k: int | None = OFFICIAL_TOP_K,
        top_p: float | None = OFFICIAL_TOP_P,
        temperature: float = 1.0,
        num_frames: int | None = None,
        duration_s: float | None = None,
    ) -> Tensor:
        """Sample audio.

        Audio longer than one tokenizer window (SAT: 1 s) is made of independently sampled
        windows with the same condition, concatenated (as SAT processes 10-s clips); there is
        no continuity constraint across window boundaries. The defaults are the official sampler's
        (``cfg_scale=4.0, top_k=200, top_p=0.95``); ``top_k=None, top_p=None`` samples from the
        full distribution.

        Args:
            cond: (B, cond_dim) float conditioning (e.g. CLAP text/audio embeddings), or (B,)
                LongTensor class ids when ``config.num_classes > 0``.
            seed: Seed of a dedicated ``torch.Generator`` on the model's device.
            cfg_scale: Guidance strength reached at the last scale (linear ramp from 0).
            top_k: Top-k filtering (None: off; default the official 200).
            top_p: Nucleus filtering (None: off; default the official 0.95).
            temperature: Softmax temperature (> 0).
            num_frames: Output length in tokenizer frames (``hop_length`` samples each).
            duration_s: Output length in seconds (default: one window).

        Returns:
            (B, T) waveform at ``sample_rate``.
        """
        self._check_cond(cond)
        num_windows, samples = self._num_windows(num_frames, duration_s)
        tokens = self.generate_tokens(
            cond,
            seed=seed,
            cfg_scale=cfg_scale,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            num_windows=num_windows,
        )
        return self.tokenizer.decode(tokens)[:, :samples]
