"""Generation jobs: a checkpoint's outputs for every item of its run's eval set.

Outputs are upserted by their natural key (checkpoint, item, params hash, seed), so a job that is
delivered again or resumed after its worker died skips what is already stored.
"""

import logging
import time
from typing import Any

from django.db import transaction

from evalsite.audio.decoding import AudioValidationError, decoded_from_array
from evalsite.audio.selectors import AudioCache, audio_asset_problem
from evalsite.audio.services import audio_asset_store
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import ProgressFn
from evalsite.runs.checkpoint_files import CheckpointPathRefused, OpenedCheckpoint, checkpoint_file_open
from evalsite.runs.families import MODEL_FAMILY_AUTO, model_plugins
from evalsite.runs.models import Checkpoint, EvalItem, Generation, Run
from evalsite.runs.params import generation_params
from evalsite.runs.services import RUN_HAS_NO_EVAL_SET

logger = logging.getLogger(__name__)

KIND_MISMATCH = "run {run!r} is a {run_kind} run but {uri} holds a {model_kind} (family {family})."
RATE_MISMATCH = (
    "eval set {eval_set!r} has reference audio at {rates} Hz but the model runs at {model_rate} Hz; "
    "use a matching eval set or evaluate with params resample=true."
)
NO_REFERENCE = "item {key!r} has no reference audio; a {kind} needs one."
BAD_REFERENCE = "item {key!r}: its reference audio {path} cannot be used: {problem}"
CHECKPOINT_MISSING = "cannot load checkpoint {uri}: checkpoint not found: {uri}"
CHECKPOINT_SHA256_CHANGED = (
    "the checkpoint file no longer has the sha256 it was registered with; it was not loaded."
)


def _checkpoint_file_verified(checkpoint) -> OpenedCheckpoint:
    """On the worker, right before loading: the checked, opened file, its sha256 recorded or verified.

    The path is checked against the roots again and opened without following symlinks, because the
    file may have been swapped since it was registered.
    """
    try:
        with checkpoint_file_open(uri=checkpoint.uri, owner=checkpoint.run.owner) as opened:
            digest = opened.sha256()
    except FileNotFoundError:
        raise ApplicationError(CHECKPOINT_MISSING.format(uri=checkpoint.uri)) from None
    if checkpoint.sha256 and digest != checkpoint.sha256:
        raise ApplicationError(CHECKPOINT_SHA256_CHANGED)
    if not checkpoint.sha256:
        Checkpoint.objects.filter(pk=checkpoint.pk).update(sha256=digest, size_bytes=opened.stat.st_size)
    return opened


def _store_generation(
    *, checkpoint, item, job, params, params_hash, seed, audio, sample_rate, seconds, device, info
):
    """Upsert one output by its natural key; NaN/Inf output becomes a failed row, not audio."""
    natural = {"checkpoint": checkpoint, "item": item, "params_hash": params_hash, "seed": seed}
    defaults: dict[str, Any] = {
        "params": params,
        "job": job,
        "wall_time_s": seconds,
        "device": device,
        "info": info,
    }
    try:
        decoded = decoded_from_array(audio, sample_rate, name=f"{checkpoint}:{item.key}")
    except AudioValidationError as exc:
        decoded = None
        defaults.update(
            status=Generation.Status.FAILED, error=f"model output rejected: {exc.detail}", asset=None
        )
    # The asset and the row naming it commit together: a worker killed between the two leaves no
    # asset that nothing uses, and the resumed job stores the item again.
    with transaction.atomic():
        if decoded is not None:
            asset, _ = audio_asset_store(decoded=decoded, original_name=f"{item.key}.wav")
            defaults.update(status=Generation.Status.DONE, error="", asset=asset)
        generation, _ = Generation.objects.update_or_create(**natural, defaults=defaults)
    return generation


def generation_job_work(job: Job, progress: ProgressFn) -> dict[str, Any]:
    """Generate the run's eval set with the job's checkpoint; resumable (done items are skipped)."""
    checkpoint = job.checkpoint
    result = _generate(job, checkpoint, progress)
    if result["failed"] and not result["done"]:
        first = Generation.objects.filter(checkpoint=checkpoint, status="failed").first()
        raise ApplicationError(f"every item failed; first: {first.item.key}: {first.error}", extra=result)
    return result


def _generate(job: Job, checkpoint, progress: ProgressFn) -> dict[str, Any]:
    # torch and the models load only in the worker that generates, not in the web tier.
    # torch and the model stack load only in the generation worker, never in the web tier.
    import torch

    import models
    from evalsite.runs import generation as gen

    run = checkpoint.run
    if run.eval_set_id is None:
        raise ApplicationError(RUN_HAS_NO_EVAL_SET.format(run=run.name))
    params, params_hash = generation_params(job.params)
    device = gen.pick_device(job.params.get("device"))
    torch.backends.cuda.matmul.allow_tf32 = bool(params["tf32"])
    torch.backends.cudnn.allow_tf32 = bool(params["tf32"])

    checked = _checkpoint_file_verified(checkpoint)
    family = None if run.model_family in ("", MODEL_FAMILY_AUTO) else run.model_family
    try:
        model = gen.model_cache.get(checked.path, family=family, device=device, plugins=model_plugins())
    except (models.ModelLoadError, models.CheckpointNotFoundError) as exc:
        raise ApplicationError(f"cannot load checkpoint {checkpoint.uri}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a malformed file breaks in loading, the job names the file
        logger.exception("loading checkpoint %s failed unexpectedly", checkpoint.uri)
        raise ApplicationError(
            f"cannot load checkpoint {checkpoint.uri}: {type(exc).__name__}: {exc}"
        ) from None
    if not checked.still_at_path():  # swapped (for a symlink, another file) while it was loading
        raise CheckpointPathRefused()
    if model.kind != run.kind:
        raise ApplicationError(
            KIND_MISMATCH.format(
                run=run.name,
                run_kind=run.kind,
                uri=checkpoint.uri,
                model_kind=model.kind,
                family=model.family,
            )
        )

    items = list(run.eval_set.items.select_related("reference").order_by("key"))
    done_keys = set(
        Generation.objects.filter(checkpoint=checkpoint, params_hash=params_hash).values_list(
            "item_id", flat=True
        )
    )
    todo = [item for item in items if item.pk not in done_keys]
    batch_size = params["batch_size"] or (16 if device.startswith("cuda") else 4)
    info: dict[str, Any] = {"family": model.family, "sample_rate": model.sample_rate}
    counts = {"done": 0, "failed": 0}
    store = dict(checkpoint=checkpoint, job=job, params=params, params_hash=params_hash, device=device)

    def record(generation) -> None:
        counts[generation.status] += 1
        progress(len(done_keys) + counts["done"] + counts["failed"], len(items), generation.item.key)

    if model.kind in ("vocoder", "tokenizer"):
        if model.kind == "tokenizer":
            info.update(
                tokens_per_second=float(model.tokens_per_second), bits_per_second=float(model.bits_per_second)
            )
        missing = [item for item in todo if item.reference is None]
        for item in missing:
            record(
                Generation.objects.update_or_create(
                    checkpoint=checkpoint,
                    item=item,
                    params_hash=params_hash,
                    seed=params["seed"],
                    defaults={
                        "params": params,
                        "job": job,
                        "status": Generation.Status.FAILED,
                        "error": NO_REFERENCE.format(key=item.key, kind=model.kind),
                    },
                )[0]
            )
        todo = [item for item in todo if item.reference is not None]
        rates = sorted({item.reference.sample_rate for item in todo})
        if not params["resample"] and any(rate != model.sample_rate for rate in rates):
            raise ApplicationError(
                RATE_MISMATCH.format(
                    eval_set=run.eval_set.name, rates=", ".join(map(str, rates)), model_rate=model.sample_rate
                )
            )
        # Rates differ here only when resampling was asked for (checked above).
        audio = AudioCache()
        # A reference damaged on disk since its import fails its own item, not the whole job.
        usable = []
        for item in todo:
            problem = audio_asset_problem(audio, item.reference)
            if problem is None:
                usable.append(item)
                continue
            record(
                Generation.objects.update_or_create(
                    checkpoint=checkpoint,
                    item=item,
                    params_hash=params_hash,
                    seed=params["seed"],
                    defaults={
                        "params": params,
                        "job": job,
                        "status": Generation.Status.FAILED,
                        "error": BAD_REFERENCE.format(
                            key=item.key, path=item.reference.file.name, problem=problem
                        ),
                    },
                )[0]
            )
        todo = usable
        waves = [audio.mono(item.reference, model.sample_rate) for item in todo]
        fn = model.copy_synthesis if model.kind == "vocoder" else model.reconstruct
        for out in gen.run_waveform_batches(
            fn, waves, batch_size=batch_size, device=device, dtype=params["dtype"]
        ):
            item = todo[out.index]
            record(
                _store_generation(
                    item=item,
                    seed=params["seed"],
                    audio=out.audio,
                    sample_rate=model.sample_rate,
                    seconds=out.seconds,
                    info=info,
                    **store,
                )
            )
    else:
        text_embedders: dict = {}
        for item in todo:
            seed = gen.item_seed(params["seed"], item.key)
            try:
                cond = _generator_condition(model, run, item, text_embedders)
            except ApplicationError as exc:
                record(
                    Generation.objects.update_or_create(
                        checkpoint=checkpoint,
                        item=item,
                        params_hash=params_hash,
                        seed=seed,
                        defaults={
                            "params": params,
                            "job": job,
                            "status": Generation.Status.FAILED,
                            "error": exc.message,
                        },
                    )[0]
                )
                continue
            duration = params["duration_s"] or (item.reference.duration_s if item.reference else 4.0)
            started = time.perf_counter()
            with torch.inference_mode(), gen.autocast(device, params["dtype"]):
                audio = model.generate(
                    cond.to(device),
                    seed=seed,
                    cfg_scale=params["cfg_scale"],
                    top_k=params["top_k"],
                    top_p=params["top_p"],
                    temperature=params["temperature"],
                    duration_s=duration,
                )
            audio_np = audio.float().cpu().numpy()[0]
            record(
                _store_generation(
                    item=item,
                    seed=seed,
                    audio=audio_np,
                    sample_rate=model.sample_rate,
                    seconds=time.perf_counter() - started,
                    info=info,
                    **store,
                )
            )
    produced = Generation.objects.filter(checkpoint=checkpoint, params_hash=params_hash)
    seconds = sum(g.wall_time_s or 0.0 for g in produced.filter(status="done"))
    audio_s = sum(g.asset.duration_s for g in produced.filter(status="done").select_related("asset"))
    return {
        **info,
        "device": device,
        "params_hash": params_hash,
        "items": len(items),
        "skipped_already_done": len(done_keys),
        "done": produced.filter(status="done").count(),
        "failed": produced.filter(status="failed").count(),
        "realtime_factor": audio_s / seconds if seconds else None,
    }


CLASS_LABEL_UNKNOWN = "item {key!r}: class label {label!r} is not in the run's config class_names {names}."
NO_CONDITION = (
    "item {key!r}: a text-conditioned generator needs a {dim}-d condition vector; give the item a "
    "text (embedded with the run's condition_embedder, default {embedder}) or a metadata "
    "'condition' list of {dim} floats."
)
CONDITION_DIM_MISMATCH = (
    "item {key!r}: {embedder} gives {got}-d text embeddings but the generator expects {dim}-d."
)
DEFAULT_CONDITION_EMBEDDER = "clap-laion-630k-audioset-48k"


def _generator_condition(model, run: Run, item: EvalItem, text_embedders: dict | None = None):
    """The generator's input for one item: a class id, a stored condition vector, or the CLAP
    text embedding of the item's text (the embedder is loaded once per job via ``text_embedders``)."""
    import torch  # the worker's, like every torch import here

    if getattr(model.config, "num_classes", 0) > 0:
        names = run.config.get("class_names")
        label = item.class_label
        if names:
            if label not in names:
                raise ApplicationError(CLASS_LABEL_UNKNOWN.format(key=item.key, label=label, names=names))
            class_id = names.index(label)
        elif label.isdigit() and int(label) < model.config.num_classes:
            class_id = int(label)
        else:
            raise ApplicationError(CLASS_LABEL_UNKNOWN.format(key=item.key, label=label, names=names or []))
        return torch.tensor([class_id], dtype=torch.long)
    dim = model.config.cond_dim
    vector = item.metadata.get("condition")
    if isinstance(vector, list) and len(vector) == dim:
        return torch.tensor([vector], dtype=torch.float32)
    embedder_name = run.config.get("condition_embedder", DEFAULT_CONDITION_EMBEDDER)
    if not item.text:
        raise ApplicationError(NO_CONDITION.format(key=item.key, dim=dim, embedder=embedder_name))
    # CLAP loads only when an item needs its text embedded (slow to import, see ARCHITECTURE.md).
    from metrics.embedders import MissingWeightsError, WeightIntegrityError, get_embedder

    cache = text_embedders if text_embedders is not None else {}
    try:
        if embedder_name not in cache:
            cache[embedder_name] = get_embedder(embedder_name)
        embedding = cache[embedder_name].embed_text([item.text])[0]
    except (MissingWeightsError, WeightIntegrityError) as exc:
        raise ApplicationError(f"item {item.key!r}: cannot embed its text: {exc}") from None
    if embedding.shape[-1] != dim:
        raise ApplicationError(
            CONDITION_DIM_MISMATCH.format(
                key=item.key, embedder=embedder_name, got=embedding.shape[-1], dim=dim
            )
        )
    return torch.as_tensor(embedding, dtype=torch.float32).reshape(1, dim)
