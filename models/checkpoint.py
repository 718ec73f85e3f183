"""Saving and loading checkpoints: our own format and third-party layouts.

Our format (written by :func:`save_checkpoint`) is a ``torch.save``-d dict::

    {"evalsite_checkpoint": 1, "family": str, "kind": str,
     "kwargs": <config dataclass as plain containers>, "state_dict": {...}, "metadata": {...}}

:func:`load` also reads jik876/BigVGAN-style ``g_XXXXXXXX`` files (``{"generator": sd}`` next to a
``config.json``), Lightning ``.ckpt`` files (``state_dict`` with ``generator.`` prefixes), SAT/AAR
training files (``generator_state_dict`` / ``model_state_dict``), plain state dicts and
``.safetensors`` files. Keys are normalised (``module.``, ``_orig_mod.``, ``generator.``, legacy
``weight_g/weight_v`` ↔ ``parametrizations.weight.original0/1``, folded ``weight``), loaded
strictly, then weight norm is folded and the model is put in ``eval()`` mode.

The released SAT / AAR files (qiuk2/AAR) load directly: a SAT file is detected from its
``quantizer.vq.layers.*`` keys and matched to the ``sat-d1024-lat64`` / ``sat-d128-lat128``
preset; an AAR file holds only the transformer, so it is paired with its SAT file, given as
``tokenizer=`` or found next to it (the single ``SAT*`` checkpoint in the same directory).

A checkpoint file is data: it is read with ``weights_only=True`` unless the caller trusts it, and
the family it names is honoured only when it is a registered one (built-in or entry point), never
a dotted path, so a file cannot choose which code runs (see :mod:`models.registry`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from models._config import config_from_kwargs, config_to_kwargs
from models.aar import AARConfig, AARGenerator
from models.base import AudioModel
from models.errors import CheckpointNotFoundError, ModelLoadError
from models.hifigan import HiFiGANConfig
from models.registry import (
    BUILTIN_FAMILIES,
    available_families,
    build_model,
    detect_family,
    is_registered_family,
    resolve_family,
)

FORMAT_KEY = "evalsite_checkpoint"
FORMAT_VERSION = 1
CONTAINER_KEYS = ("generator", "state_dict", "generator_state_dict", "model_state_dict", "model")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
_G_FILE = re.compile(r"^g_(\d+)$")
# torch's weights-only unpickler names the first global it refused in this form.
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# A model may hold a little more than its file (weight norm folded one way or the other), never
# several times more; above this the config is refused before anything is allocated.
_SIZE_FACTOR, _SIZE_SLACK = 2, 1_000_000
_LEGACY_WN = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}

CHECKPOINT_FAMILY_NOT_REGISTERED = (
    "the checkpoint names model family {name!r}, which is not a registered family; a checkpoint file "
    "never chooses which code runs, so only a built-in family or an installed entry point is taken from "
    "it (registered: {registered}). To load a plug-in given by a dotted path, name the family explicitly "
    "(the run's model family, or family=... with plugins=[...] in the library)"
)


def save_checkpoint(
    model: AudioModel, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` in our format (atomically: a temporary file is renamed into place).

    Args:
        model: Any :class:`~models.base.AudioModel` (weight norm folded or not).
        path: Destination file; parent directories are created.
        metadata: Extra JSON-like values stored under ``"metadata"``.

    Returns:
        The written path.
    """
    if not isinstance(model, AudioModel):
        raise TypeError(f"expected a models.base.AudioModel, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        FORMAT_KEY: FORMAT_VERSION,
        "family": model.family,
        "kind": model.kind,
        "kwargs": config_to_kwargs(model.config),
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "metadata": {
            "torch_version": str(torch.__version__),
            "sample_rate": int(model.sample_rate),
            **(metadata or {}),
        },
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _pick_file(directory: Path) -> Path:
    g_files = [p for p in directory.iterdir() if p.is_file() and _G_FILE.match(p.name)]
    if g_files:
        return max(g_files, key=lambda p: int(_G_FILE.match(p.name).group(1)))  # type: ignore[union-attr]
    candidates = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CheckpointNotFoundError(
            f"no checkpoint in directory {directory} (looked for g_XXXXXXXX and *{'/*'.join(CHECKPOINT_SUFFIXES)})",
            path=str(directory),
        )
    raise ModelLoadError(
        f"directory {directory} holds several checkpoints ({[p.name for p in candidates]}); pass the file",
        path=str(directory),
    )


def _read(path: Path, trust_pickle: bool) -> Any:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors ships with the project's stack
            raise ModelLoadError(
                "reading .safetensors needs the 'safetensors' package", path=str(path)
            ) from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelLoadError(f"cannot read safetensors file: {exc}", path=str(path)) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            refused = _REFUSED_GLOBAL.search(text)
            what = f" (first refused global: {refused.group(1)})" if refused else ""
            raise ModelLoadError(
                f"the checkpoint contains Python objects other than tensors and plain containers{what}, "
                "which are not unpickled by default because unpickling them can run arbitrary code; "
                "if you trust the file, pass trust_pickle=True",
                path=str(path),
            ) from None
        raise ModelLoadError(
            f"cannot read checkpoint (corrupt, truncated or not a torch file): {type(exc).__name__}: {text[:300]}",
            path=str(path),
        ) from exc


def normalize_state_dict_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip DataParallel ``module.`` prefixes and ``torch.compile``'s ``_orig_mod.`` levels."""
    out = {}
    for key, value in state_dict.items():
        new = key.replace("_orig_mod.", "")
        while new.startswith("module."):
            new = new[len("module.") :]
        out[new] = value
    return out


def extract_state_dict(raw: Any, *, path: str | None = None) -> dict[str, Tensor]:
    """Find the generator's tensors inside a checkpoint container.

    Looks at ``generator``, ``state_dict``, ``generator_state_dict``, ``model_state_dict``,
    ``model``, then treats the dict itself as a state dict.

    Raises:
        ModelLoadError: if ``raw`` is not a dict or holds no tensor state dict.
    """
    if not isinstance(raw, dict):
        raise ModelLoadError(
            f"expected a checkpoint dict (a state dict or a container of one), found {type(raw).__name__}",
            path=path,
        )
    state = raw
    for key in CONTAINER_KEYS:
        if isinstance(raw.get(key), dict):
            state = raw[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise ModelLoadError(
            f"no tensors found in the checkpoint; top-level keys: {sorted(map(str, raw))[:20]}", path=path
        )
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if others:
        raise ModelLoadError(f"the state dict holds non-tensor entries {others[:20]}", path=path)
    return tensors


def _strip_generator_prefix(state_dict: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    if any(k.startswith("generator.") for k in expected):
        return state_dict
    if not any(k.startswith("generator.") for k in state_dict):
        return state_dict
    return {k[len("generator.") :]: v for k, v in state_dict.items() if k.startswith("generator.")}


def _fold(g: Tensor, v: Tensor) -> Tensor:
    return torch._weight_norm(v, g, 0)


def _align_weight_norm(model: AudioModel, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename / fold weight-norm tensors so they match how ``model`` stores them.

    Modules the model keeps parametrised but the checkpoint stores folded are folded in the model.
    """
    expected = set(model.state_dict())
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        base, _, leaf = key.rpartition(".")
        if leaf in _LEGACY_WN and f"{base}.{_LEGACY_WN[leaf]}" in expected:
            out[f"{base}.{_LEGACY_WN[leaf]}"] = value
        else:
            out[key] = value
    for key in [k for k in out if k.endswith(("weight_g", "parametrizations.weight.original0"))]:
        base = (
            key[: -len(".weight_g")]
            if key.endswith("weight_g")
            else key[: -len(".parametrizations.weight.original0")]
        )
        v_key = (
            f"{base}.weight_v" if key.endswith("weight_g") else f"{base}.parametrizations.weight.original1"
        )
        if key not in expected and f"{base}.weight" in expected and v_key in out:
            out[f"{base}.weight"] = _fold(out.pop(key), out.pop(v_key))
    for key in list(expected):
        if key.endswith(".parametrizations.weight.original0"):
            base = key[: -len(".parametrizations.weight.original0")]
            if key not in out and f"{base}.weight" in out:
                parametrize.remove_parametrizations(
                    model.get_submodule(base), "weight", leave_parametrized=True
                )
    return out


def load_state_dict_strict(
    model: AudioModel, state_dict: dict[str, Tensor], *, path: str | None = None
) -> None:
    """Normalise ``state_dict`` to ``model``'s layout and load it strictly.

    Raises:
        ModelLoadError: listing missing keys, unexpected keys and shape mismatches.
    """
    state_dict = normalize_state_dict_keys(state_dict)
    state_dict = _strip_generator_prefix(state_dict, set(model.state_dict()))
    state_dict = type(model).remap_state_dict(state_dict)
    state_dict = _align_weight_norm(model, state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        raise ModelLoadError(
            "checkpoint does not match the model architecture/config",
            path=path,
            family=model.family,
            missing_keys=missing,
            unexpected_keys=unexpected,
            shape_mismatches=mismatched,
        )
    model.load_state_dict(state_dict, strict=True)


def _shape_signature(keys_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    out = {}
    for key, shape in keys_shapes.items():
        if key.endswith((".weight_g", ".parametrizations.weight.original0")):
            continue
        if key.endswith(".weight_v"):
            key = key[: -len("_v")]
        elif key.endswith(".parametrizations.weight.original1"):
            key = key[: -len(".parametrizations.weight.original1")] + ".weight"
        out[key] = shape
    return out


def _match_preset(
    cls: type[AudioModel], state_dict: dict[str, Tensor], adjust: Callable[[Any], Any] | None = None
) -> Any | None:
    sd = normalize_state_dict_keys(state_dict)
    sd = cls.remap_state_dict(sd)
    wanted = _shape_signature({k: tuple(v.shape) for k, v in sd.items()})
    for name in cls.presets:
        config = cls.preset(name) if adjust is None else adjust(cls.preset(name))
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                model = cls.from_config(config)
        except (NotImplementedError, RuntimeError):
            model = cls.from_config(config)
        have = _shape_signature({k: tuple(v.shape) for k, v in model.state_dict().items()})
        if have == wanted:
            return model.config
    return None


def _build_fitting(
    family: str, config: Any, state_dict: dict[str, Tensor], *, path: str, plugins: Collection[str] = ()
) -> AudioModel:
    """Build the model, first refusing a config that describes a far bigger model than the file holds.

    The size is measured on the meta device, so a config of absurd width is refused without
    allocating it (building it for real could exhaust the worker's memory before the strict load
    gets to list the mismatched shapes).
    """
    try:
        with torch.device("meta"):
            skeleton = build_model(family, config, plugins=plugins)
    except (NotImplementedError, RuntimeError):
        skeleton = None  # a plug-in that needs real storage to build; the strict load still checks shapes
    if skeleton is not None:
        wanted = sum(t.numel() for t in skeleton.state_dict().values())
        held = sum(t.numel() for t in state_dict.values())
        if wanted > _SIZE_FACTOR * held + _SIZE_SLACK:
            raise ModelLoadError(
                f"the checkpoint's config describes a model of {wanted:,} parameters but the file holds "
                f"{held:,} values: its config does not match its weights",
                path=path,
                family=family,
            )
    try:
        return build_model(family, config, plugins=plugins)
    except RuntimeError as exc:  # e.g. an allocation the machine cannot satisfy
        raise ModelLoadError(
            f"cannot build a {family!r} model from this config: {exc}", path=path, family=family
        ) from exc


def _hifigan_json(path: Path) -> dict[str, Any] | None:
    cfg_path = path.parent / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot parse {cfg_path}: {exc}", path=str(path)) from exc
    return data if isinstance(data, dict) and "upsample_rates" in data else None


def _companion_tokenizer(path: Path, tokenizer: Any, trust_pickle: bool) -> AudioModel:
    """The SAT tokenizer of a transformer-only AAR file: ``tokenizer`` or the sibling ``SAT*`` file."""
    if isinstance(tokenizer, AudioModel):
        model = tokenizer
    else:
        if tokenizer is None:
            siblings = sorted(
                p
                for p in path.parent.iterdir()
                if p.is_file()
                and p != path
                and p.name.lower().startswith("sat")
                and p.suffix in CHECKPOINT_SUFFIXES
            )
            if len(siblings) != 1:
                found = f"found {[p.name for p in siblings]}" if siblings else "found none"
                raise ModelLoadError(
                    "this AAR checkpoint holds only the transformer (no 'tokenizer.*' keys), as the released "
                    "AAR files do; pass tokenizer='path/to/SAT_d128_lat128.pth' to models.load, or put exactly "
                    f"one SAT*{'/*'.join(CHECKPOINT_SUFFIXES)} file next to it in {path.parent} ({found})",
                    path=str(path),
                    family="aar",
                )
            tokenizer = siblings[0]
        model = load(tokenizer, family="sat", trust_pickle=trust_pickle)
    if model.family != "sat":
        raise ModelLoadError(
            f"the tokenizer of an AAR checkpoint must be a 'sat' model, got family {model.family!r}",
            path=str(path),
        )
    return model


def _with_tokenizer_config(tokenizer_config: Any) -> Callable[[Any], Any]:
    def adjust(config: Any) -> Any:
        return dataclasses.replace(config, tokenizer=tokenizer_config)

    return adjust


def _resolve_config(family: str, config: Any, plugins: Collection[str] = ()) -> Any:
    builder = resolve_family(family, plugins=plugins)
    if isinstance(config, str) and isinstance(builder, type) and issubclass(builder, AudioModel):
        try:
            return builder.preset(config)
        except ValueError as exc:
            raise ModelLoadError(str(exc), family=family) from exc
    return config


def load(
    path_or_dir: str | os.PathLike[str],
    family: str | None = None,
    device: str | torch.device = "cpu",
    *,
    config: Any = None,
    trust_pickle: bool = False,
    tokenizer: str | os.PathLike[str] | AudioModel | None = None,
    plugins: Collection[str] = (),
) -> AudioModel:
    """Load a checkpoint into an inference-ready model.

    The family comes from ``family`` if given, else our checkpoint metadata (only a registered
    family: built-in or entry point, never a dotted path), else a HiFi-GAN
    ``config.json`` next to the file, else the state-dict key patterns. The config comes from
    ``config`` (a dataclass, kwargs dict or preset name such as ``"v1"``), else the checkpoint's
    kwargs, else ``config.json``, else the preset whose tensor shapes match the checkpoint.

    Args:
        path_or_dir: A checkpoint file, or a directory (the highest ``g_XXXXXXXX``, or its single
            ``*.pt/*.pth/*.ckpt/*.bin/*.safetensors`` file).
        family: Built-in name, entry-point name or ``"package.module:factory"`` (listed in
            ``plugins``).
        device: Where to put the model.
        config: Overrides the checkpoint's config.
        trust_pickle: Allow arbitrary pickled objects (``weights_only=False``); only for files
            you trust.
        tokenizer: For an AAR file that holds only the transformer (the released
            ``AAR_d16_bs2048.pth``): its SAT checkpoint (path or loaded model). Default: the
            single ``SAT*`` checkpoint in the same directory. Ignored for other files.
        plugins: Dotted-path families the caller allows for ``family`` (the platform passes the
            operator's ``EVALSITE_MODEL_PLUGINS``); the file itself can never name one.

    Returns:
        The model in ``eval()`` mode with weight norm folded, on ``device``.

    Raises:
        CheckpointNotFoundError: the path (or a needed file) does not exist.
        ModelLoadError: unreadable file, unknown or unregistered family, or weights that do not
            fit; key mismatches are listed.

    Example:
        >>> vocoder = load("runs/hifigan/g_00100000")  # doctest: +SKIP
        >>> wav = vocoder.copy_synthesis(reference)  # doctest: +SKIP
        >>> sat = load("ckpt/SAT_d128_lat128.pth")  # detected as sat-d128-lat128  # doctest: +SKIP
        >>> aar = load("ckpt/AAR_d16_bs2048.pth", tokenizer="ckpt/SAT_d128_lat128.pth")  # doctest: +SKIP
    """
    path = Path(path_or_dir)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}", path=str(path))
    if path.is_dir():
        path = _pick_file(path)
    raw = _read(path, trust_pickle)
    where = str(path)

    if isinstance(raw, dict) and FORMAT_KEY in raw:
        missing = [k for k in ("family", "kwargs", "state_dict") if k not in raw]
        if missing or not isinstance(raw.get("state_dict"), dict):
            raise ModelLoadError(f"evalsite checkpoint lacks {missing or ['a state_dict dict']}", path=where)
        if not family:
            family = _family_from_file(raw["family"], path=where)
        kwargs = _resolve_config(family, config, plugins) if config is not None else raw["kwargs"]
        state_dict = extract_state_dict(raw["state_dict"], path=where)
        model = _build_fitting(family, kwargs, state_dict, path=where, plugins=plugins)
    else:
        state_dict = extract_state_dict(raw, path=where)
        jik876 = _hifigan_json(path)
        if family is None:
            keys = set(_strip_generator_prefix(normalize_state_dict_keys(state_dict), set()))
            family = "hifigan" if jik876 is not None else detect_family(keys)
        if family is None:
            raise ModelLoadError(
                "cannot tell the model family from this checkpoint; pass family=... "
                f"(one of {sorted(BUILTIN_FAMILIES)} or a plug-in)",
                path=where,
            )
        adjust = None
        if family == "aar":
            keys = set(_strip_generator_prefix(normalize_state_dict_keys(state_dict), set()))
            if not AARGenerator.has_tokenizer_weights(keys):
                sat = _companion_tokenizer(path, tokenizer, trust_pickle)
                state_dict = {**state_dict, **{f"tokenizer.{k}": v for k, v in sat.state_dict().items()}}
                adjust = _with_tokenizer_config(sat.config)
        if config is not None:
            config = _resolve_config(family, config, plugins)
            if adjust is not None:  # the tokenizer's weights, hence its config, come from the SAT file
                config = adjust(config_from_kwargs(AARConfig, config) if isinstance(config, dict) else config)
        elif family == "hifigan" and jik876 is not None:
            try:
                config = HiFiGANConfig.from_jik876(jik876)
            except ValueError as exc:
                raise ModelLoadError(
                    f"{path.parent / 'config.json'}: {exc}", path=where, family=family
                ) from exc
        else:
            builder = resolve_family(family, plugins=plugins)
            if isinstance(builder, type) and issubclass(builder, AudioModel) and builder.presets:
                config = _match_preset(builder, _strip_generator_prefix(state_dict, set()), adjust)
            if config is None:
                raise ModelLoadError(
                    "the checkpoint carries no config and matches no preset; pass config=... "
                    "(a preset name, kwargs dict or config dataclass)",
                    path=where,
                    family=family,
                )
        model = _build_fitting(family, config, state_dict, path=where, plugins=plugins)
    load_state_dict_strict(model, state_dict, path=where)
    model.fold_weight_norm()
    return model.eval().to(device)


def _family_from_file(value: Any, *, path: str) -> str:
    """The family a checkpoint names, if it is a registered one (a file never names code to import)."""
    if not isinstance(value, str) or not is_registered_family(value):
        named = value[:200] if isinstance(value, str) else type(value).__name__
        raise ModelLoadError(
            CHECKPOINT_FAMILY_NOT_REGISTERED.format(name=named, registered=available_families()), path=path
        )
    return value


def config_from_checkpoint(path: str | os.PathLike[str]) -> tuple[str, Any]:
    """Read (family, config dataclass) from one of our checkpoints without building the model.

    Raises:
        ModelLoadError: not our format, or the file names a family that is not registered.
    """
    raw = _read(Path(path), trust_pickle=False)
    if not isinstance(raw, dict) or FORMAT_KEY not in raw:
        raise ModelLoadError("not an evalsite checkpoint", path=str(path))
    family = _family_from_file(raw["family"], path=str(path))
    builder = resolve_family(family)
    if isinstance(builder, type) and issubclass(builder, AudioModel):
        return family, config_from_kwargs(builder.config_class, raw["kwargs"])
    return family, raw["kwargs"]
