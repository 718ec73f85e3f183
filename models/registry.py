"""Model families: the built-in ones and plug-ins.

A family name resolves, in this order, to

1. a built-in class: ``"hifigan"``, ``"evagan"``, ``"sat"``, ``"aar"``;
2. an entry point named so in the group ``evalsite.models`` (``pyproject.toml``:
   ``[project.entry-points."evalsite.models"] mymodel = "mypkg.models:MyVocoder"``);
3. a dotted path ``"package.module:attribute"`` that the caller lists in ``plugins`` (the module
   must already be importable).

Naming a family chooses which code runs, so a dotted path is honoured only when it is in the
caller's ``plugins`` allow-list: on the platform that is the operator's ``EVALSITE_MODEL_PLUGINS``
setting, never a value from the API or from a checkpoint file. A checkpoint file may name only a
registered family (built-in or entry point; see :func:`is_registered_family`). Installing a package
with an entry point is an operator's act, so entry points need no listing.

The object a plug-in points at is either a subclass of :class:`models.base.AudioModel`
(constructed as ``cls.from_config(kwargs)``, presets usable by ``init_checkpoint``) or a factory
callable ``factory(**kwargs) -> AudioModel``. The model must expose a dataclass ``config`` whose
fields are the factory's kwargs, so :func:`models.save_checkpoint` can store them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Collection
from typing import Any

from models.aar import AARGenerator
from models.base import AudioModel
from models.errors import ModelLoadError
from models.evagan import EVAGANVocoder
from models.hifigan import HiFiGANVocoder
from models.sat import SATTokenizer

ENTRY_POINT_GROUP = "evalsite.models"

FAMILY_NOT_ALLOWED = (
    "model family {name!r} is a dotted path that is not on the plug-in allow-list, so its code is not "
    "imported; a dotted-path plug-in loads only when the operator lists it (EVALSITE_MODEL_PLUGINS on the "
    "platform, plugins=[...] when calling the library). Available families: {available}"
)

BUILTIN_FAMILIES: dict[str, type[AudioModel]] = {
    "hifigan": HiFiGANVocoder,
    "evagan": EVAGANVocoder,
    "sat": SATTokenizer,
    "aar": AARGenerator,
}

Builder = type[AudioModel] | Callable[..., AudioModel]


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_families(plugins: Collection[str] = ()) -> list[str]:
    """Built-in family names, then installed entry-point names, then the allowed dotted-path ``plugins``."""
    names = list(BUILTIN_FAMILIES) + sorted(set(_entry_points()) - set(BUILTIN_FAMILIES))
    return names + [p for p in dict.fromkeys(plugins) if p not in names]


def is_registered_family(name: str) -> bool:
    """Whether ``name`` is a built-in family or an installed entry point (never a dotted path).

    Only such names may come from a checkpoint file: they choose among code the operator installed.
    """
    return name in BUILTIN_FAMILIES or (":" not in name and name in _entry_points())


def _import_dotted(path: str) -> Any:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ModelLoadError(f"family {path!r} is not of the form 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import module {module_name!r} of family {path!r}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"module {module_name!r} has no attribute {attr_path!r} (family {path!r})")
        obj = getattr(obj, part)
    return obj


def resolve_family(name: str, *, plugins: Collection[str] = ()) -> Builder:
    """Return the class or factory registered under ``name``.

    Args:
        name: Built-in name, entry-point name, or a dotted path ``"package.module:attribute"``.
        plugins: Dotted paths the caller allows; a dotted ``name`` not listed here is refused
            before anything is imported.

    Raises:
        ModelLoadError: if no built-in, entry point or allowed importable dotted path matches; the
            message lists the available families.
    """
    if name in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[name]
    entry_points = _entry_points()
    if name in entry_points:
        try:
            obj = entry_points[name].load()
        except Exception as exc:  # a broken plug-in must not look like a missing one
            raise ModelLoadError(
                f"entry point {name!r} ({entry_points[name].value}) failed to load: {exc}"
            ) from exc
    elif ":" in name:
        if name not in plugins:
            raise ModelLoadError(FAMILY_NOT_ALLOWED.format(name=name, available=available_families(plugins)))
        obj = _import_dotted(name)
    else:
        raise ModelLoadError(
            f"unknown model family {name!r}; available: {available_families(plugins)} (a dotted-path "
            f"plug-in 'package.module:factory' must be on the allow-list)"
        )
    if not callable(obj):
        raise ModelLoadError(f"family {name!r} resolves to {obj!r}, which is neither a class nor a factory")
    return obj


def build_model(name: str, kwargs: dict[str, Any] | Any, *, plugins: Collection[str] = ()) -> AudioModel:
    """Construct a randomly initialised model of family ``name``.

    Args:
        name: Family name (see :func:`resolve_family`).
        kwargs: Constructor kwargs (a dict, as stored in checkpoints) or a config dataclass.
        plugins: Dotted-path families the caller allows (see :func:`resolve_family`).

    Raises:
        ModelLoadError: if the family is unknown, the kwargs do not fit, or a plug-in factory
            returns something that is not an :class:`~models.base.AudioModel`, or a dotted path
            not in ``plugins``.
    """
    builder = resolve_family(name, plugins=plugins)
    try:
        if isinstance(builder, type) and issubclass(builder, AudioModel):
            model = builder.from_config(kwargs)
        elif isinstance(kwargs, dict):
            model = builder(**kwargs)
        else:
            model = builder(kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot build a {name!r} model from config {kwargs!r}: {exc}", family=name
        ) from exc
    if not isinstance(model, AudioModel):
        raise ModelLoadError(
            f"family {name!r} built a {type(model).__name__}, not a models.base.AudioModel subclass",
            family=name,
        )
    if name not in BUILTIN_FAMILIES:
        model.family = name  # type: ignore[misc]  # record the name that resolves back to this plug-in
    return model


def detect_family(keys: set[str]) -> str | None:
    """Guess a built-in family from normalised state-dict keys (None if nothing matches)."""
    for name, cls in BUILTIN_FAMILIES.items():
        if cls.matches_state_dict(keys) or cls.matches_state_dict(
            set(cls.remap_state_dict(dict.fromkeys(keys)))
        ):
            return name
    return None
