"""Metric jobs: score a checkpoint's generated audio with every metric its run asks for.

Each clip is decoded once and resampled once per rate that some metric needs; embeddings are
cached by content hash + embedder + weights checksum + preprocessing, and a reference set's
Gaussian statistics are kept in a registry, so a new checkpoint embeds only its own clips. One
failing metric is stored as failed with its reason while the others complete.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from django.db import IntegrityError, transaction

from evalsite.audio.models import AudioAsset
from evalsite.audio.selectors import AudioCache, audio_asset_problem, audio_samples_problem
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import ProgressFn
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
from evalsite.scoring.models import CachedEmbedding, MetricResult, ReferenceStatistics

logger = logging.getLogger(__name__)

NO_GENERATIONS = "checkpoint {checkpoint} has no generated audio to score (params {params_hash:.12})."
UNKNOWN_METRIC = "unknown metric {name!r} in run {run!r} config; registered: {known}"
NO_REFERENCE_AUDIO = "no generated item has reference audio; {name} compares with a reference."
NO_SCORABLE_CLIP = "no output of checkpoint {checkpoint} can be scored; first: {first}"
CLIP_LEFT_OUT = "item {key!r} left out: {role} audio {path}: {problem}"

# What a run is scored with when its config names no metrics. Embedding metrics whose weights
# are not in the model store are stored as failed with the file to put there.
DEFAULT_METRICS: dict[str, list[str]] = {
    "vocoder": [
        "mrstft/auraloss-default",
        "lsd/log10pow-n2048-h512",
        "si_sdr",
        "stoi",
        "pesq/wb-16k-torchaudio",
        "speaker_cos/resemblyzer-16k",
    ],
    "tokenizer": [
        "mrstft/auraloss-default",
        "lsd/log10pow-n2048-h512",
        "si_sdr",
        "stoi",
        "pesq/wb-16k-torchaudio",
        "speaker_cos/resemblyzer-16k",
    ],
    "generator": [
        "fad/vggish-16k",
        "kad/vggish-16k/rbf-median-ref-x100",
        "is/panns-cnn14-16k/softmax-s10-seed2020",
        "kl/panns-cnn14-16k/softmax-ref-gen",
        "clap_score/clap-laion-630k-48k/cos",
    ],
}
# KAD builds full kernel matrices; above this many frames per side a seeded subsample is used.
KAD_MAX_FRAMES = 8000
# The interval of a per-item metric: percentile bootstrap of the mean over items, seeded so that
# re-scoring the same outputs stores the same interval.
CI_LEVEL = 0.95
CI_RESAMPLES = 2000
CI_SEED = 0
CI_METHOD = "percentile bootstrap of the mean over items"


def run_metric_names(run: Run, model_rate: int | None) -> list[str]:
    """The metrics a run is scored with: its config's ``metrics`` list, else the kind's defaults."""
    from metrics import registry  # metrics loads torch: only where scoring runs, not in the web tier

    names = list(run.config.get("metrics") or DEFAULT_METRICS.get(run.kind, []))
    if not run.config.get("metrics") and run.kind in ("vocoder", "tokenizer") and model_rate:
        from metrics.functional.spectral import (
            mel_distance_name,  # metrics loads torch: only where scoring runs, not in the web tier
        )

        mel = mel_distance_name(model_rate, n_mels=80 if model_rate == 22050 else 100)
        if mel in registry.names():
            names.insert(0, mel)
    for name in names:
        try:
            registry.get(name)
        except KeyError:
            raise ApplicationError(
                UNKNOWN_METRIC.format(name=name, run=run.name, known=", ".join(registry.names()))
            ) from None
    return names


def spec_key(**parts: Any) -> str:
    """Hash of everything that must match for two stored values of a metric to be comparable."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Embedding cache and reference statistics


def _to_blob(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def _from_blob(data: bytes, frames: int, dim: int) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype="<f4").reshape(frames, dim).copy()  # writable, for torch


def embedder_preprocess_key(embedder) -> str:
    spec = embedder.preprocess_spec()
    key = getattr(spec, "key", None)
    return key() if callable(key) else spec_key(spec=spec)


def embeddings_for_assets(
    embedder, assets: list[AudioAsset], audio: AudioCache, *, kind: str = "embed"
) -> dict[int, np.ndarray]:
    """Per-frame embeddings (frames, dim) of each asset, computing only what the cache lacks."""
    label = embedder.name if kind == "embed" else f"{embedder.name}#{kind}"
    pp_key = embedder_preprocess_key(embedder)
    hashes = {a.pk: a.content_hash for a in assets}
    cached = {
        row.content_hash: _from_blob(row.data, row.frames, row.dim)
        for row in CachedEmbedding.objects.filter(
            content_hash__in=set(hashes.values()),
            embedder=label,
            weights_checksum=embedder.weights_checksum,
            preprocess_key=pp_key,
        )
    }
    missing = [a for a in assets if a.content_hash not in cached]
    if missing:
        for asset in missing:
            # A bad clip must fail this metric by name, and its embedding must never enter the cache.
            problem = audio_samples_problem(audio.mono(asset))
            if problem is not None:
                raise ApplicationError(
                    f"audio {asset.file.name} cannot be embedded by {embedder.name}: {problem}"
                )
        waves = [audio.mono(a, embedder.sample_rate) for a in missing]
        if kind == "embed":
            outputs = embedder.embed(waves)
        else:
            outputs = [np.atleast_2d(row) for row in np.asarray(embedder.classify(waves))]
        for asset, emb in zip(missing, outputs):
            emb = np.atleast_2d(np.asarray(emb, dtype=np.float32))
            if not np.isfinite(emb).all():
                raise ApplicationError(
                    f"{embedder.name} gave a NaN/Inf embedding for audio {asset.file.name}"
                )
            cached[asset.content_hash] = emb
            try:
                with transaction.atomic():
                    CachedEmbedding.objects.create(
                        content_hash=asset.content_hash,
                        embedder=label,
                        weights_checksum=embedder.weights_checksum,
                        preprocess_key=pp_key,
                        frames=emb.shape[0],
                        dim=emb.shape[1],
                        data=_to_blob(emb),
                    )
            except IntegrityError:
                pass  # another worker stored the same embedding first
    return {pk: cached[h] for pk, h in hashes.items()}


def reference_fingerprint(assets: list[AudioAsset]) -> str:
    return hashlib.sha256("\n".join(sorted(a.content_hash for a in assets)).encode()).hexdigest()


def reference_statistics_get_or_build(
    *, eval_set: EvalSet, embedder, assets: list[AudioAsset], audio: AudioCache
) -> tuple[Any, ReferenceStatistics]:
    """The reference set's GaussianStatistics for this embedder, built once and then reused."""
    from metrics.gaussian import (
        GaussianStatistics,  # metrics loads torch: only where scoring runs, not in the web tier
    )

    pp_key = embedder_preprocess_key(embedder)
    fingerprint = reference_fingerprint(assets)
    natural = dict(
        eval_set=eval_set,
        embedder=embedder.name,
        weights_checksum=embedder.weights_checksum,
        preprocess_key=pp_key,
        fingerprint=fingerprint,
    )
    row = ReferenceStatistics.objects.filter(**natural).first()
    if row is not None:
        return GaussianStatistics.from_bytes(bytes(row.data)), row
    embeddings = embeddings_for_assets(embedder, assets, audio)
    stats = GaussianStatistics()
    for emb in embeddings.values():
        stats.update(emb)
    try:
        with transaction.atomic():
            row = ReferenceStatistics.objects.create(
                **natural,
                n=stats.n,
                n_clips=len(assets),
                dim=int(next(iter(embeddings.values())).shape[1]),
                data=stats.to_bytes(),
            )
    except IntegrityError:
        row = ReferenceStatistics.objects.get(**natural)
    return stats, row


# ---------------------------------------------------------------------------------------------
# Computing one metric


class _Context:
    """Everything a metric needs about the checkpoint's outputs, loaded lazily and shared."""

    def __init__(self, checkpoint: Checkpoint, generations: list[Generation], device: str | None) -> None:
        self.checkpoint = checkpoint
        self.run = checkpoint.run
        self.generations = generations
        self.device = device
        self.audio = AudioCache()
        self.model_rate = generations[0].asset.sample_rate
        self.paired = [g for g in generations if g.item.reference_id is not None]
        self._embedders: dict[str, Any] = {}
        self._multi: dict[tuple, dict] = {}
        self.left_out: dict[str, str] = {}

    def screen(self, *, references: bool) -> None:
        """Leave out, each with its reason, the items whose audio cannot be scored.

        Generated clips are checked always: every metric decodes them anyway. References only when
        ``references`` (a waveform-paired metric will decode them all anyway); elsewhere a bad
        reference fails the one metric that reads it, by name, in ``embeddings_for_assets``.
        """
        kept = []
        for g in self.generations:
            role, asset = "generated", g.asset
            problem = audio_asset_problem(self.audio, asset)
            if problem is None and references and g.item.reference is not None:
                role, asset = "reference", g.item.reference
                problem = audio_asset_problem(self.audio, asset)
            if problem is None:
                kept.append(g)
            else:
                self.left_out[g.item.key] = CLIP_LEFT_OUT.format(
                    key=g.item.key, role=role, path=asset.file.name, problem=problem
                )
        self.generations = kept
        self.paired = [g for g in kept if g.item.reference_id is not None]

    def embedder(self, name: str):
        if name not in self._embedders:
            from metrics.embedders import (
                get_embedder,  # metrics loads torch: only where scoring runs, not in the web tier
            )

            self._embedders[name] = get_embedder(name, device=self.device)
        return self._embedders[name]

    def waves(self, rate: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if not self.paired:
            raise ApplicationError(NO_REFERENCE_AUDIO.format(name="this metric"))
        gen = {g.item.key: self.audio.mono(g.asset, rate) for g in self.paired}
        ref = {g.item.key: self.audio.mono(g.item.reference, rate) for g in self.paired}
        return gen, ref

    def reference_assets(self) -> list[AudioAsset]:
        items = EvalItem.objects.filter(eval_set=self.run.eval_set, reference__isnull=False).select_related(
            "reference"
        )
        return [item.reference for item in items]


def _wants_rate(fn: Callable) -> bool:
    target = getattr(fn, "func", fn)
    bound = getattr(fn, "keywords", {}) or {}
    return "sample_rate" in inspect.signature(target).parameters and "sample_rate" not in bound


def _compute(spec, ctx: _Context) -> tuple[Any, dict[str, Any]]:
    """Return the library result and the provenance fields of the stored row."""
    fn = spec.bind()
    rate = spec.sample_rate or ctx.model_rate
    provenance: dict[str, Any] = {"sample_rate": rate}
    if spec.kind in ("paired-audio", "audio"):
        gen, ref = (
            ctx.waves(rate)
            if spec.kind == "paired-audio"
            else ({g.item.key: ctx.audio.mono(g.asset, rate) for g in ctx.generations}, None)
        )
        args = (gen, ref) if ref is not None else (gen,)
        kwargs = {"sample_rate": rate} if _wants_rate(fn) else {}
        if spec.kind == "paired-audio" and "device" in inspect.signature(getattr(fn, "func", fn)).parameters:
            kwargs["device"] = ctx.device
        if spec.output_key:
            cache_key = (spec.fn, json.dumps(spec.params, sort_keys=True, default=str), rate)
            if cache_key not in ctx._multi:
                ctx._multi[cache_key] = fn(*args, **kwargs)
            return ctx._multi[cache_key][spec.output_key], provenance
        return fn(*args, **kwargs), provenance

    embedder = ctx.embedder(spec.embedder)
    provenance.update(
        embedder=embedder.name,
        weights_checksum=embedder.weights_checksum,
        preprocess=_spec_dict(embedder.preprocess_spec()),
        sample_rate=embedder.sample_rate,
    )
    assets = [g.asset for g in ctx.generations]
    if spec.kind == "distribution":
        gen_emb = embeddings_for_assets(embedder, assets, ctx.audio)
        x_gen = np.concatenate(list(gen_emb.values()))
        ref_assets = ctx.reference_assets()
        if not ref_assets:
            raise ApplicationError(NO_REFERENCE_AUDIO.format(name=spec.name))
        provenance.update(
            reference_set=ctx.run.eval_set, reference_fingerprint=reference_fingerprint(ref_assets)
        )
        if spec.name.startswith(("fad/", "fad_inf/")):
            stats, _ = reference_statistics_get_or_build(
                eval_set=ctx.run.eval_set, embedder=embedder, assets=ref_assets, audio=ctx.audio
            )
            if spec.name.startswith("fad/"):
                from metrics.functional.frechet import (
                    frechet_distance_to_reference,  # metrics loads torch: only where scoring runs, not in the web tier
                )

                return frechet_distance_to_reference(
                    x_gen, stats, name=spec.name, device=ctx.device
                ), provenance
            return fn(x_gen, stats, device=ctx.device), provenance
        ref_emb = embeddings_for_assets(embedder, ref_assets, ctx.audio)
        x_ref = np.concatenate(list(ref_emb.values()))
        rng = np.random.default_rng(0)
        subsampled = {
            label: len(x)
            for label, x in (("reference", x_ref), ("generated", x_gen))
            if len(x) > KAD_MAX_FRAMES
        }
        if "reference" in subsampled:
            x_ref = x_ref[rng.choice(len(x_ref), KAD_MAX_FRAMES, replace=False)]
        if "generated" in subsampled:
            x_gen = x_gen[rng.choice(len(x_gen), KAD_MAX_FRAMES, replace=False)]
        result = fn(x_ref, x_gen, device=ctx.device)
        if subsampled:
            provenance["subsampled_from"] = subsampled
        return result, provenance
    if spec.kind == "paired-embedding":
        if not ctx.paired:
            raise ApplicationError(NO_REFERENCE_AUDIO.format(name=spec.name))
        gen_emb = embeddings_for_assets(embedder, [g.asset for g in ctx.paired], ctx.audio)
        ref_emb = embeddings_for_assets(embedder, [g.item.reference for g in ctx.paired], ctx.audio)
        gen = {g.item.key: gen_emb[g.asset.pk].mean(axis=0) for g in ctx.paired}
        ref = {g.item.key: ref_emb[g.item.reference.pk].mean(axis=0) for g in ctx.paired}
        return fn(gen, ref, first_label="generated", second_label="reference"), provenance
    if spec.kind == "classifier":
        gen_logits = embeddings_for_assets(embedder, assets, ctx.audio, kind="logits")
        gen = {g.item.key: gen_logits[g.asset.pk][0] for g in ctx.generations}
        if spec.name.startswith("is/"):
            return fn(gen), provenance
        if not ctx.paired:
            raise ApplicationError(NO_REFERENCE_AUDIO.format(name=spec.name))
        ref_logits = embeddings_for_assets(
            embedder, [g.item.reference for g in ctx.paired], ctx.audio, kind="logits"
        )
        ref = {g.item.key: ref_logits[g.item.reference.pk][0] for g in ctx.paired}
        return fn(ref, gen), provenance
    if spec.kind == "text-audio":
        texts = {g.item.key: g.item.text for g in ctx.generations if g.item.text}
        if not texts:
            raise ApplicationError(
                f"no generated item has a text/caption; {spec.name} compares text and audio."
            )
        text_emb = dict(zip(texts, embedder.embed_text(list(texts.values()))))
        audio_emb = embeddings_for_assets(
            embedder, [g.asset for g in ctx.generations if g.item.key in texts], ctx.audio
        )
        audio = {
            g.item.key: audio_emb[g.asset.pk].mean(axis=0) for g in ctx.generations if g.item.key in texts
        }
        return fn(text_emb, audio), provenance
    raise ApplicationError(f"metric {spec.name!r} has kind {spec.kind!r}, which the platform cannot schedule")


def _spec_dict(spec: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(spec):
        return {**dataclasses.asdict(spec), **({"key": spec.key()} if hasattr(spec, "key") else {})}
    return dict(spec) if isinstance(spec, Mapping) else {"spec": str(spec)}


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def per_item_interval(
    *, value: float | None, per_item: Mapping[str, Any] | None
) -> tuple[float, float] | None:
    """The ``CI_LEVEL`` percentile bootstrap interval of the mean of the finite per-item values.

    None for a set-level metric (FAD, KAD, IS: no per-item values, the value is a statistic of the whole
    set, so resampling items means recomputing the metric, which their own ``ci`` does where they have
    one), with fewer than two finite items, or where the value is not the per-item mean (CREPE's pooled
    frame-level errors): an interval of the mean placed around another statistic would mislead.
    """
    if value is None or not per_item:
        return None
    values = np.array([v for v in per_item.values() if isinstance(v, (int, float))], dtype=np.float64)
    values = values[np.isfinite(values)]
    # rtol admits a mean a metric computed in float32; a pooled statistic differs far more.
    if values.size < 2 or not np.isclose(values.mean(), value, rtol=1e-6, atol=1e-12):
        return None
    # Resampled as scipy.stats.bootstrap does (one (resamples, n) draw of indices), with numpy alone: the
    # web tier imports this module and metrics._common.percentile_ci would pull torch in.
    rng = np.random.default_rng(CI_SEED)
    means = values[rng.integers(0, values.size, (CI_RESAMPLES, values.size))].mean(axis=1)
    alpha = (1.0 - CI_LEVEL) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _store(checkpoint: Checkpoint, params_hash: str, name: str, **fields: Any) -> MetricResult:
    row, _ = MetricResult.objects.update_or_create(
        checkpoint=checkpoint, params_hash=params_hash, name=name, defaults=fields
    )
    return row


def metric_compute_and_store(*, spec, ctx: _Context, params_hash: str) -> MetricResult:
    """Compute one metric and upsert its row; any failure becomes a failed row with the reason."""
    started = time.perf_counter()
    provenance: dict[str, Any] = {}
    try:
        result, provenance = _compute(spec, ctx)
        payload = result.to_dict()
    except Exception as exc:  # noqa: BLE001 - one metric's failure must not stop the others
        if not isinstance(exc, (ApplicationError, ValueError, FileNotFoundError)):
            logger.exception("metric %s failed on %s", spec.name, ctx.checkpoint)
        message = exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}"
        return _store(
            ctx.checkpoint,
            params_hash,
            spec.name,
            status=MetricResult.Status.FAILED,
            error=message,
            value=None,
            ci_low=None,
            ci_high=None,
            per_item=None,
            warnings=list(ctx.left_out.values()),
            details={},
            duration_s=time.perf_counter() - started,
            metric_version=spec.version,
            higher_is_better=spec.higher_is_better,
            n=0,
            spec_key="",
        )
    value = _finite(payload["value"])
    per_item = payload.get("per_item")
    ci = payload.get("ci")
    ci_details: dict[str, Any] = {}
    if ci is None:
        ci = per_item_interval(value=value, per_item=per_item)
        if ci is not None:
            ci_details = {
                "ci": {"method": CI_METHOD, "level": CI_LEVEL, "resamples": CI_RESAMPLES, "seed": CI_SEED}
            }
    ci = ci or (None, None)
    reference_set = provenance.get("reference_set") or ctx.run.eval_set
    warnings = [*ctx.left_out.values(), *payload.get("warnings", [])]
    # to_dict() turned NaN/Inf per-item values into None; name those items (silent or constant audio
    # makes SI-SDR and the like infinite), so a missing value is never unexplained.
    no_value = sorted(key for key, v in (per_item or {}).items() if v is None)
    if no_value:
        warnings.append(
            f"no finite value for item(s) {', '.join(map(repr, no_value))} (silent or constant audio?)"
        )
    error = ""
    if value is None:
        error = "the metric produced no finite value"
        if per_item and len(no_value) == len(per_item):
            error += f" (every item gave NaN/Inf: {', '.join(map(repr, no_value))})"
    fields = dict(
        value=value,
        status=MetricResult.Status.DONE if value is not None else MetricResult.Status.FAILED,
        error=error,
        ci_low=ci[0],
        ci_high=ci[1],
        higher_is_better=spec.higher_is_better,
        n=len(per_item)
        if per_item
        else int(payload["details"].get("n_gen") or payload["details"].get("n2") or len(ctx.generations)),
        reference_set=reference_set,
        reference_fingerprint=provenance.get("reference_fingerprint", ""),
        embedder=provenance.get("embedder", ""),
        weights_checksum=provenance.get("weights_checksum", ""),
        preprocess=provenance.get("preprocess", {"sample_rate": provenance.get("sample_rate")}),
        metric_version=spec.version,
        duration_s=time.perf_counter() - started,
        per_item=per_item,
        warnings=warnings,
        details={
            **payload.get("details", {}),
            **ci_details,
            **({"subsampled_from": provenance["subsampled_from"]} if "subsampled_from" in provenance else {}),
        },
    )
    fields["spec_key"] = spec_key(
        name=spec.name,
        version=spec.version,
        embedder=fields["embedder"],
        weights=fields["weights_checksum"],
        preprocess=fields["preprocess"],
        reference_set=reference_set.pk if reference_set else None,
        reference_fingerprint=fields["reference_fingerprint"],
    )
    return _store(ctx.checkpoint, params_hash, spec.name, **fields)


# ---------------------------------------------------------------------------------------------
# The job


def metrics_job_work(job: Job, progress: ProgressFn) -> dict[str, Any]:
    """Score the job's checkpoint (params ``params_hash``, optional ``metrics``, ``device``).

    The result names the params hash scored, which the next stage (the detectors) goes on with.
    """
    from metrics import registry  # loads torch: only in the worker that scores, not in the web tier

    checkpoint = job.checkpoint
    params_hash = job.params.get("params_hash") or ""
    generations = list(
        Generation.objects.filter(
            checkpoint=checkpoint,
            status=Generation.Status.DONE,
            **({"params_hash": params_hash} if params_hash else {}),
        )
        .select_related("asset", "item__reference", "checkpoint__run__eval_set")
        .order_by("item__key")
    )
    if not generations:
        raise ApplicationError(NO_GENERATIONS.format(checkpoint=checkpoint, params_hash=params_hash or "any"))
    params_hash = params_hash or generations[0].params_hash
    ctx = _Context(checkpoint, generations, job.params.get("device"))
    names = job.params.get("metrics") or run_metric_names(checkpoint.run, ctx.model_rate)
    ctx.screen(references=any(registry.get(name).kind == "paired-audio" for name in names))
    if not ctx.generations:
        raise ApplicationError(
            NO_SCORABLE_CLIP.format(checkpoint=checkpoint, first=next(iter(ctx.left_out.values()))),
            extra={"left_out": ctx.left_out},
        )
    rows = []
    for index, name in enumerate(names, start=1):
        rows.append(metric_compute_and_store(spec=registry.get(name), ctx=ctx, params_hash=params_hash))
        progress(index, len(names), name)
    failed = {r.name: r.error for r in rows if r.status == MetricResult.Status.FAILED}
    result = {
        "metrics": len(rows),
        "done": len(rows) - len(failed),
        "failed": failed,
        "clips": len(ctx.generations),
        "decodes": ctx.audio.decodes,
        "left_out": ctx.left_out,
        "params_hash": params_hash,
    }
    if rows and len(failed) == len(rows):
        raise ApplicationError(f"every metric failed; first: {rows[0].name}: {rows[0].error}", extra=result)
    return result
