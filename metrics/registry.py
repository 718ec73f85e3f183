"""Registry: metric name → callable + metadata.

Concrete names (``"mrstft/auraloss-default"``) are registered directly. Embedding-based
metrics are registered as templates with one ``{embedder}`` slot (``"fad/{embedder}"``);
:func:`get` resolves ``"fad/vggish-16k"`` to that template with ``embedder="vggish-16k"``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from metrics.functional import clap_score, classifier, embedding_cosine, frechet, kad, spectral, speech


@dataclass(frozen=True)
class MetricSpec:
    """Metadata of a registered metric.

    Attributes:
        name: Full metric name (template names contain ``{embedder}``).
        fn: The callable computing it (returns a MetricResult, or a dict of them for
            ``multi_output`` metrics).
        version: Implementation version; bump when values change.
        higher_is_better: Direction.
        per_item: Whether per-item values are produced.
        sample_rate: Required input rate in Hz, or ``None`` (any rate / embeddings).
        kind: ``"paired-audio"``, ``"audio"`` (non-intrusive), ``"distribution"`` (embeddings),
            ``"paired-embedding"`` (clip embeddings of generated vs reference, paired by id),
            ``"classifier"`` (logits) or ``"text-audio"``.
        description: One line.
        params: Keyword arguments bound when calling ``fn`` (via :meth:`bind`).
        embedder: Resolved embedder id for template metrics.
        output_key: For metrics whose ``fn`` returns several results, which one this name is.
    """

    name: str
    fn: Callable[..., Any]
    version: str
    higher_is_better: bool
    per_item: bool
    sample_rate: int | None
    kind: str
    description: str = ""
    params: dict = field(default_factory=dict)
    embedder: str | None = None
    output_key: str | None = None

    def bind(self) -> Callable[..., Any]:
        """``fn`` with ``params`` (and ``name`` for template metrics) pre-bound."""
        kwargs = dict(self.params)
        if self.embedder is not None:
            kwargs["name"] = self.name
        return functools.partial(self.fn, **kwargs)


_REGISTRY: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Add a spec; names must be unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"metric {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    """All registered names (templates included), sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> MetricSpec:
    """Look up a metric by name; template names are matched with the ``{embedder}`` slot.

    Example:
        >>> get("fad/vggish-16k").embedder
        'vggish-16k'
        >>> get("mrstft/auraloss-default").higher_is_better
        False
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    for template, spec in _REGISTRY.items():
        if "{embedder}" not in template:
            continue
        pattern = (
            "^"
            + re.escape(template).replace(
                re.escape("{embedder}"), r"(?P<embedder>[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)?)"
            )
            + "$"
        )
        m = re.match(pattern, name)
        if m:
            return replace(spec, name=name, embedder=m.group("embedder"))
    raise KeyError(f"unknown metric {name!r}; registered: {', '.join(names())}")


def _reg(name, fn, *, hib, per_item, sr=None, kind, desc, version="1", params=None, output_key=None) -> None:
    register(
        MetricSpec(
            name=name,
            fn=fn,
            version=version,
            higher_is_better=hib,
            per_item=per_item,
            sample_rate=sr,
            kind=kind,
            description=desc,
            params=params or {},
            output_key=output_key,
        )
    )


# -- distribution metrics over embeddings (template names) ---------------------------------
_reg(
    "fad/{embedder}",
    frechet.frechet_distance_from_samples,
    hib=False,
    per_item=False,
    kind="distribution",
    desc="Fréchet distance, float64 Cholesky/eigh + eigvalsh (low-rank path when n < d)",
)
_reg(
    "fad_inf/{embedder}",
    frechet.frechet_distance_inf,
    hib=False,
    per_item=False,
    kind="distribution",
    desc="FAD-inf (fadtk): intercept of FD vs 1/n, 25 sizes from 500, seeded; bootstrap CI",
)
_reg(
    "kad/{embedder}/rbf-median-ref-x100",
    kad.kernel_audio_distance,
    hib=False,
    per_item=False,
    kind="distribution",
    desc="KAD: 100 x unbiased MMD^2, RBF, sigma = median pairwise distance of the reference",
    params={"bandwidth_from": "reference", "scale": 100.0},
)
_reg(
    "kad/{embedder}/rbf-median-gen-x100",
    kad.kernel_audio_distance,
    hib=False,
    per_item=False,
    kind="distribution",
    desc="KAD as kadtk's code: sigma from the generated set (kadtk issue #9)",
    params={"bandwidth_from": "generated", "scale": 100.0},
)
# -- classifier metrics --------------------------------------------------------------------
_reg(
    "is/{embedder}/softmax-s10-seed2020",
    classifier.inception_score,
    hib=True,
    per_item=False,
    kind="classifier",
    desc="Inception Score, softmax, 10 splits, RandomState(2020) shuffle",
)
for _act in ("softmax", "sigmoid", "sigmoid-bernoulli"):
    for _dir in ("ref||gen", "gen||ref"):
        _reg(
            f"kl/{{embedder}}/{classifier.kl_name(_act, _dir)[3:]}",
            classifier.kl_divergence,
            hib=False,
            per_item=True,
            kind="classifier",
            desc=f"paired KL({_dir.replace('||', '‖')}), {_act}",
            params={"activation": _act, "direction": _dir},
        )
_reg(
    "clap_score/{embedder}/cos",
    clap_score.clap_score,
    hib=True,
    per_item=True,
    kind="text-audio",
    desc="mean cosine of text and audio embeddings paired by id",
)
_reg(
    "speaker_cos/{embedder}",
    embedding_cosine.embedding_cosine,
    hib=True,
    per_item=True,
    kind="paired-embedding",
    desc="cosine of generated and reference clip embeddings paired by id (speaker similarity with a speaker encoder)",
)
# -- paired spectral metrics ---------------------------------------------------------------
for _sr, _mels, _tag in ((22050, 80, "HiFi-GAN V1"), (24000, 100, "BigVGAN 24 kHz 100-band")):
    _reg(
        spectral.mel_distance_name(_sr, n_mels=_mels),
        spectral.mel_distance,
        hib=False,
        per_item=True,
        sr=_sr,
        kind="paired-audio",
        desc=f"L1 log-mel distance, {_tag} parameters",
        params={"sample_rate": _sr, "n_mels": _mels},
    )
_reg(
    spectral.mrstft_distance_name(),
    spectral.mrstft_distance,
    hib=False,
    per_item=True,
    kind="paired-audio",
    desc="auraloss MultiResolutionSTFTLoss() defaults per item (BigVGAN M-STFT)",
)
_reg(
    spectral.log_spectral_distance_name(),
    spectral.log_spectral_distance,
    hib=False,
    per_item=True,
    kind="paired-audio",
    desc="log-spectral distance, log10 power, n_fft 2048, hop 512",
)
# -- speech --------------------------------------------------------------------------------
_reg(
    "pesq/wb-16k-torchaudio",
    speech.pesq_wb,
    hib=True,
    per_item=True,
    kind="paired-audio",
    desc="wide-band PESQ (pesq package) after torchaudio resampling to 16 kHz",
    params={"resampler": "torchaudio"},
)
_reg("stoi", speech.stoi, hib=True, per_item=True, kind="paired-audio", desc="STOI (pystoi)")
_reg(
    "estoi",
    speech.stoi,
    hib=True,
    per_item=True,
    kind="paired-audio",
    desc="extended STOI (pystoi)",
    params={"extended": True},
)
_reg("si_sdr", speech.si_sdr, hib=True, per_item=True, kind="paired-audio", desc="scale-invariant SDR (dB)")
for _key, _hib in (("f0_rmse_cents", False), ("periodicity_rmse", False), ("vuv_f1", True)):
    _reg(
        f"{_key}/cargan-crepe-full",
        speech.crepe_pitch_metrics,
        hib=_hib,
        per_item=True,
        kind="paired-audio",
        sr=None,
        desc=f"{_key} (CARGAN/BigVSAN protocol, torchcrepe full, corpus-pooled)",
        params={"model": "full"},
        output_key=_key,
    )
for _key in ("ovrl", "sig", "bak", "p808"):
    _reg(
        f"dnsmos/{_key}",
        speech.dnsmos,
        hib=True,
        per_item=True,
        kind="audio",
        desc=f"DNSMOS {_key} (speechmos ONNX, offline)",
        output_key=_key,
    )
