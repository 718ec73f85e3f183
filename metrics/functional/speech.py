"""Speech metrics: PESQ (wide band), STOI, SI-SDR, CREPE pitch metrics (CARGAN protocol), DNSMOS.

Optional packages are imported inside the functions that need them; a missing package raises
an ImportError naming the package to install.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torch

from metrics._common import ArrayLike, MetricResult, pair_by_id, resolve_device
from metrics.functional._pairs import DEFAULT_LENGTH_TOLERANCE, finish_paired, pair_waveforms


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"this metric needs the '{package}' package: pip install {package}") from exc


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int, *, resampler: str = "torchaudio") -> torch.Tensor:
    """Resample ``(..., T)`` audio.

    Args:
        wav: Waveform(s).
        orig_sr: Input rate.
        new_sr: Output rate.
        resampler: ``"torchaudio"`` (``torchaudio.functional.resample`` defaults: sinc, Hann,
            width 6, rolloff 0.99 — what BigVGAN/CARGAN evaluation uses) or ``"soxr-hq"``.

    Example:
        >>> resample(torch.zeros(24000), 24000, 16000).shape
        torch.Size([16000])
    """
    if orig_sr == new_sr:
        return wav
    if resampler == "torchaudio":
        import torchaudio

        return torchaudio.functional.resample(wav, orig_sr, new_sr)
    if resampler == "soxr-hq":
        soxr = _require("soxr", "soxr")
        out = soxr.resample(wav.detach().cpu().double().numpy().T, orig_sr, new_sr, quality="HQ")
        return torch.as_tensor(np.ascontiguousarray(out.T), dtype=wav.dtype, device=wav.device)
    raise ValueError(f"resampler must be 'torchaudio' or 'soxr-hq'; got {resampler!r}")


# ---------------------------------------------------------------------------------------
# SI-SDR
# ---------------------------------------------------------------------------------------
def si_sdr(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    *,
    zero_mean: bool = True,
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
) -> MetricResult:
    """Scale-invariant SDR in dB per item (Le Roux et al. 2019), computed in float64.

    SI-SDR = 10 log10(‖α s‖² / ‖α s − ŝ‖²), α = ⟨ŝ, s⟩ / ‖s‖², with s the reference and ŝ the
    generated signal (both mean-removed when ``zero_mean``).

    Args:
        gen: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)`` of generated audio.
        ref: Reference audio, same structure.
        zero_mean: Remove the mean of both signals first.
        length_tolerance: Allowed |len(gen) − len(ref)| in samples.

    Returns:
        MetricResult with per-item values in dB (higher is better); a perfect match is +inf
        and is excluded from the mean with a warning.

    Example:
        >>> s = torch.tensor([1.0, -1.0, 1.0, -1.0])
        >>> n = torch.tensor([1.0, 1.0, -1.0, -1.0])
        >>> round(si_sdr(s + 0.1 * n, s).value, 4)
        20.0
    """
    pairs = pair_waveforms(gen, ref, length_tolerance=length_tolerance, dtype=torch.float64)
    per_item = {}
    for i, g, r in zip(pairs.ids, pairs.gen, pairs.ref):
        if zero_mean:
            g, r = g - g.mean(), r - r.mean()
        alpha = (g @ r) / (r @ r)
        target = alpha * r
        noise = target - g
        num, den = float(target @ target), float(noise @ noise)
        per_item[i] = math.inf if den == 0 else (-math.inf if num == 0 else 10.0 * math.log10(num / den))
    return finish_paired(
        "si_sdr" + ("" if zero_mean else "/no-zero-mean"),
        per_item,
        pairs,
        True,
        {"zero_mean": zero_mean, "dtype": "float64"},
    )


# ---------------------------------------------------------------------------------------
# PESQ / STOI
# ---------------------------------------------------------------------------------------
def pesq_wb(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    sample_rate: int,
    *,
    resampler: str = "torchaudio",
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
) -> MetricResult:
    """Wide-band PESQ (ITU-T P.862.2) per item via the ``pesq`` package, at 16 kHz.

    Both signals are resampled to 16 kHz (``resampler``) and passed to
    ``pesq.pesq(16000, ref, gen, "wb")``. An item PESQ cannot score (e.g. "no utterances
    detected") gets NaN, is listed in ``details["errors"]`` and is excluded from the mean — the
    package's −1 error value is never averaged in.

    Args:
        gen: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)`` of generated speech.
        ref: Reference speech, same structure.
        sample_rate: Input rate in Hz.
        resampler: ``"torchaudio"`` (BigVGAN protocol) or ``"soxr-hq"``.
        length_tolerance: Allowed |len(gen) − len(ref)| in samples at ``sample_rate``.

    Returns:
        MetricResult (MOS-LQO, about 1.04–4.64, higher is better).

    Example:
        >>> t = np.arange(3 * 16000) / 16000
        >>> x = 0.1 * (np.sin(2 * np.pi * 2 * t) > 0) * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 30))
        >>> round(pesq_wb({"a": x}, {"a": x}, 16000).value, 2)  # identical signals: the scale's top
        4.64
        >>> round(pesq_wb({"a": 0.1 * np.sin(2 * np.pi * 440 * t)}, {"a": x}, 16000).value, 1)  # a tone instead
        1.0
    """
    pesq_mod = _require("pesq", "pesq")
    pairs = pair_waveforms(gen, ref, length_tolerance=length_tolerance)
    per_item, errors = {}, {}
    for i, g, r in zip(pairs.ids, pairs.gen, pairs.ref):
        g16 = resample(g, sample_rate, 16000, resampler=resampler).cpu().numpy()
        r16 = resample(r, sample_rate, 16000, resampler=resampler).cpu().numpy()
        try:
            per_item[i] = float(pesq_mod.pesq(16000, r16, g16, "wb"))
        except Exception as exc:  # pesq raises its own exception types per error code
            per_item[i] = float("nan")
            errors[i] = f"{type(exc).__name__}: {exc}"
    res = finish_paired(
        f"pesq/wb-16k-{resampler}",
        per_item,
        pairs,
        True,
        {
            "mode": "wb",
            "rate": 16000,
            "resampler": resampler,
            "input_rate": sample_rate,
            "errors": errors,
            "package": "pesq",
        },
    )
    return res


def stoi(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    sample_rate: int,
    *,
    extended: bool = False,
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
) -> MetricResult:
    """STOI (or ESTOI with ``extended=True``) per item via ``pystoi`` (resamples to 10 kHz itself).

    Args:
        gen: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)`` of generated speech.
        ref: Reference speech, same structure.
        sample_rate: Rate of both signals in Hz.
        extended: Compute ESTOI.
        length_tolerance: Allowed |len(gen) − len(ref)| in samples.

    Returns:
        MetricResult (0–1, higher is better).

    Example:
        >>> t = np.arange(3 * 16000) / 16000
        >>> x = 0.1 * (np.sin(2 * np.pi * 2 * t) > 0) * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 30))
        >>> noisy = x + 0.05 * np.random.default_rng(0).standard_normal(t.size)
        >>> round(stoi({"a": x}, {"a": x}, 16000).value, 3), round(stoi({"a": noisy}, {"a": x}, 16000).value, 2)
        (1.0, 0.59)
    """
    pystoi = _require("pystoi", "pystoi")
    pairs = pair_waveforms(gen, ref, length_tolerance=length_tolerance, dtype=torch.float64)
    per_item = {
        i: float(pystoi.stoi(r.cpu().numpy(), g.cpu().numpy(), sample_rate, extended=extended))
        for i, g, r in zip(pairs.ids, pairs.gen, pairs.ref)
    }
    return finish_paired(
        "estoi" if extended else "stoi",
        per_item,
        pairs,
        True,
        {"extended": extended, "input_rate": sample_rate, "package": "pystoi"},
    )


# ---------------------------------------------------------------------------------------
# CREPE pitch metrics (CARGAN / BigVGAN / BigVSAN evaluation protocol)
# ---------------------------------------------------------------------------------------
CARGAN_SAMPLE_RATE = 22050
CARGAN_HOPSIZE = 256
CARGAN_NUM_FFT = 1024
CARGAN_FMIN = 50.0
CARGAN_FMAX = 550.0


def crepe_pitch(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    model: str = "full",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pitch (Hz) and periodicity of a mono waveform, as CARGAN's ``preprocess/pitch.py``.

    Audio is resampled to 22.05 kHz (if needed), then to 16 kHz; hop = int(256·16000/22050)
    = 185, reflect padding (1024 − 185)//2, torchcrepe (fmin 50, fmax 550, viterbi,
    ``pad=False``), ``threshold.Silence()`` (−60 dB) on periodicity, and linear
    interpolation (pitch in log2) to len/256 frames.

    torchcrepe dithers the decoded pitch with triangular noise of up to ±20 cents (one CREPE bin) drawn from
    numpy's *global* RNG, so unseeded results change from run to run. With ``seed`` (default 0)
    that RNG is seeded for the call and its previous state restored afterwards.

    Args:
        wav: ``(T,)`` waveform.
        sample_rate: Its rate.
        model: ``"full"`` (protocol) or ``"tiny"``.
        batch_size: CREPE frames per batch.
        device: Torch device for CREPE.
        seed: Seed for torchcrepe's pitch dither; ``None`` leaves numpy's global RNG alone.

    Returns:
        ``(pitch, periodicity)``, each ``(1, frames)``.

    Example:
        >>> t = torch.arange(16000) / 16000
        >>> pitch, periodicity = crepe_pitch(0.3 * torch.sin(2 * torch.pi * 220 * t), 16000, model="tiny")
        >>> pitch.shape == periodicity.shape, round(float(pitch.median()), -1)
        (True, 220.0)
    """
    torchcrepe = _require("torchcrepe", "torchcrepe")
    dev = resolve_device(device, wav)
    audio = wav.to(dev, torch.float32).reshape(1, -1)
    if sample_rate != CARGAN_SAMPLE_RATE:
        audio = resample(audio, sample_rate, CARGAN_SAMPLE_RATE)
    target_length = audio.shape[1] // CARGAN_HOPSIZE
    audio = resample(audio, CARGAN_SAMPLE_RATE, torchcrepe.SAMPLE_RATE)
    hop = int(CARGAN_HOPSIZE * (torchcrepe.SAMPLE_RATE / CARGAN_SAMPLE_RATE))
    padding = int((CARGAN_NUM_FFT - hop) // 2)
    audio = torch.nn.functional.pad(audio[None], (padding, padding), mode="reflect").squeeze(0)
    saved = np.random.get_state() if seed is not None else None
    if seed is not None:
        np.random.seed(seed)
    try:
        pitch, periodicity = torchcrepe.predict(
            audio,
            sample_rate=torchcrepe.SAMPLE_RATE,
            hop_length=hop,
            fmin=CARGAN_FMIN,
            fmax=CARGAN_FMAX,
            model=model,
            return_periodicity=True,
            batch_size=batch_size,
            device=str(dev),
            pad=False,
        )
    finally:
        if saved is not None:
            np.random.set_state(saved)
    periodicity = torchcrepe.threshold.Silence()(
        periodicity, audio, torchcrepe.SAMPLE_RATE, hop_length=hop, pad=False
    )
    if pitch.shape[1] != target_length:
        interp = functools.partial(
            torch.nn.functional.interpolate, size=target_length, mode="linear", align_corners=False
        )
        pitch = 2 ** interp(torch.log2(pitch)[None]).squeeze(0)
        periodicity = interp(periodicity[None]).squeeze(0)
    return pitch, periodicity


def crepe_pitch_metrics(
    gen: ArrayLike | Mapping,
    ref: ArrayLike | Mapping,
    sample_rate: int,
    *,
    model: str = "full",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    length_tolerance: int = DEFAULT_LENGTH_TOLERANCE,
) -> dict[str, MetricResult]:
    """F0 RMSE (cents), periodicity RMSE and V/UV F1 (CARGAN ``evaluate/objective/metrics.py``).

    Voicing is torchcrepe ``threshold.Hysteresis()`` (0.19/0.31) on each signal. Corpus values
    are pooled over all frames of all items exactly as CARGAN/BigVSAN do (not a mean of
    per-item values); per-item values are also returned (NaN where undefined, e.g. no frame
    voiced in both).

    Args:
        gen: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)`` of generated speech.
        ref: Reference speech, same structure.
        sample_rate: Input rate in Hz.
        model: CREPE capacity, ``"full"`` as in the protocol.
        batch_size: CREPE frames per batch.
        device: Torch device for CREPE.
        seed: Seed of torchcrepe's pitch dither (see :func:`crepe_pitch`).
        length_tolerance: Allowed |len(gen) − len(ref)| in samples.

    Returns:
        ``{"f0_rmse_cents": ..., "periodicity_rmse": ..., "vuv_f1": ...}`` MetricResults named
        ``"<metric>/cargan-crepe-<model>"``.

    Example:
        >>> t = np.arange(16000) / 16000
        >>> x = 0.3 * np.sin(2 * np.pi * 150 * t) * (t < 0.5)  # voiced, then silent
        >>> m = crepe_pitch_metrics({"a": x}, {"a": x}, 16000, model="tiny")
        >>> m["vuv_f1"].value, m["f0_rmse_cents"].value
        (1.0, 0.0)
    """
    torchcrepe = _require("torchcrepe", "torchcrepe")
    pairs = pair_waveforms(gen, ref, length_tolerance=length_tolerance)
    hyst = torchcrepe.threshold.Hysteresis()
    tot = dict(count=0, voiced=0, pitch_sq=0.0, per_sq=0.0, tp=0, fp=0, fn=0)
    items: dict[str, dict[str, float]] = {"f0_rmse_cents": {}, "periodicity_rmse": {}, "vuv_f1": {}}
    for i, g, r in zip(pairs.ids, pairs.gen, pairs.ref):
        tp_, tper = crepe_pitch(r, sample_rate, model=model, batch_size=batch_size, device=device, seed=seed)
        pp_, pper = crepe_pitch(g, sample_rate, model=model, batch_size=batch_size, device=device, seed=seed)
        n = min(tp_.shape[1], pp_.shape[1])
        tp_, tper, pp_, pper = tp_[:, :n].cpu(), tper[:, :n].cpu(), pp_[:, :n].cpu(), pper[:, :n].cpu()
        tv = ~torch.isnan(hyst(tp_, tper)).reshape(-1)
        pv = ~torch.isnan(hyst(pp_, pper)).reshape(-1)
        per_sq = float((tper.double() - pper.double()).pow(2).sum())
        both = tv & pv
        cents = 1200.0 * (
            torch.log2(tp_.reshape(-1)[both].double()) - torch.log2(pp_.reshape(-1)[both].double())
        )
        pitch_sq = float(cents.pow(2).sum())
        tp, fp, fn = int(both.sum()), int((~tv & pv).sum()), int((tv & ~pv).sum())
        for k, v in (
            ("count", n),
            ("voiced", tp),
            ("pitch_sq", pitch_sq),
            ("per_sq", per_sq),
            ("tp", tp),
            ("fp", fp),
            ("fn", fn),
        ):
            tot[k] += v
        items["f0_rmse_cents"][i] = math.sqrt(pitch_sq / tp) if tp else float("nan")
        items["periodicity_rmse"][i] = math.sqrt(per_sq / n) if n else float("nan")
        items["vuv_f1"][i] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")

    def f1(tp: int, fp: int, fn: int) -> float:
        return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")

    pooled = {
        "f0_rmse_cents": math.sqrt(tot["pitch_sq"] / tot["voiced"]) if tot["voiced"] else float("nan"),
        "periodicity_rmse": math.sqrt(tot["per_sq"] / tot["count"]) if tot["count"] else float("nan"),
        "vuv_f1": f1(tot["tp"], tot["fp"], tot["fn"]),
    }
    details = {
        "protocol": "cargan",
        "model": model,
        "fmin": CARGAN_FMIN,
        "fmax": CARGAN_FMAX,
        "hop_22k": CARGAN_HOPSIZE,
        "voicing": "torchcrepe Hysteresis(0.19, 0.31)",
        "silence": "torchcrepe Silence(-60 dB)",
        "pooling": "corpus",
        "dither_seed": seed,
        "frames": tot["count"],
        "tp": tot["tp"],
        "fp": tot["fp"],
        "fn": tot["fn"],
        "input_rate": sample_rate,
    }
    out = {}
    for key, hib in (("f0_rmse_cents", False), ("periodicity_rmse", False), ("vuv_f1", True)):
        res = finish_paired(f"{key}/cargan-crepe-{model}", items[key], pairs, hib, details)
        out[key] = MetricResult(
            name=res.name,
            value=pooled[key],
            higher_is_better=hib,
            per_item=res.per_item,
            warnings=res.warnings,
            details=dict(res.details),
        )
    return out


# ---------------------------------------------------------------------------------------
# DNSMOS (non-intrusive, speechmos ONNX models shipped in the wheel)
# ---------------------------------------------------------------------------------------
def dnsmos(
    audio: Mapping | ArrayLike,
    sample_rate: int,
    *,
    personalized: bool = False,
    resampler: str = "torchaudio",
) -> dict[str, MetricResult]:
    """DNSMOS P.835 (SIG/BAK/OVRL) and P.808 MOS per item via ``speechmos`` (offline ONNX).

    Audio is resampled to 16 kHz and must lie in [-1, 1]. Clips shorter than 9.01 s are tiled
    by speechmos (its own convention).

    Args:
        audio: Mapping id → ``(T,)`` or array ``(T,)`` / ``(B, T)``.
        sample_rate: Input rate.
        personalized: Use the personalised (pDNSMOS) primary model.
        resampler: ``"torchaudio"`` or ``"soxr-hq"``.

    Returns:
        ``{"ovrl", "sig", "bak", "p808"}`` → MetricResult named ``"dnsmos/<kind>"``
        (``"pdnsmos/<kind>"`` when personalised).

    Example:
        >>> t = np.arange(3 * 16000) / 16000
        >>> x = 0.1 * (np.sin(2 * np.pi * 2 * t) > 0) * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 30))
        >>> scores = dnsmos({"a": x}, 16000)
        >>> sorted(scores), 1.0 <= scores["ovrl"].value <= 5.0
        (['bak', 'ovrl', 'p808', 'sig'], True)
    """
    _require("onnxruntime", "onnxruntime")
    speechmos_dnsmos = _require("speechmos.dnsmos", "speechmos")
    if not isinstance(audio, Mapping):
        arr = np.asarray(audio.detach().cpu() if isinstance(audio, torch.Tensor) else audio)
        arr = arr[None] if arr.ndim == 1 else arr
        audio = {str(k): arr[k] for k in range(arr.shape[0])}
    keys = {"ovrl": "ovrl_mos", "sig": "sig_mos", "bak": "bak_mos", "p808": "p808_mos"}
    per: dict[str, dict[str, float]] = {k: {} for k in keys}
    for i in sorted(audio, key=str):
        w = torch.as_tensor(np.asarray(audio[i]), dtype=torch.float32).reshape(-1)
        w16 = resample(w, sample_rate, 16000, resampler=resampler).clamp(-1.0, 1.0).numpy().astype(np.float64)
        out = speechmos_dnsmos.run(w16, 16000, model_type="dnsmos_personalized" if personalized else "dnsmos")
        for k, src in keys.items():
            per[k][str(i)] = float(out[src])
    prefix = "pdnsmos" if personalized else "dnsmos"
    return {
        k: MetricResult(
            name=f"{prefix}/{k}",
            value=float(np.mean(list(v.values()))),
            higher_is_better=True,
            per_item=v,
            details={"package": "speechmos", "resampler": resampler, "input_rate": sample_rate},
        )
        for k, v in per.items()
    }


__all__ = [
    "si_sdr",
    "pesq_wb",
    "stoi",
    "crepe_pitch",
    "crepe_pitch_metrics",
    "dnsmos",
    "resample",
    "pair_by_id",
]
