"""Which model families a run may name: what the operator installed or listed, never what a request asks for.

A family chooses which code a worker imports and runs. Built-in families and installed
``evalsite.models`` entry points are the operator's; a dotted path ``package.module:attribute`` is
honoured only when the operator lists it in ``EVALSITE_MODEL_PLUGINS``. ``auto`` lets the checkpoint
file name its family, and the loader then accepts only a registered name from the file.
"""

from __future__ import annotations

import importlib.metadata

from django.conf import settings
from django.core.exceptions import ValidationError

MODEL_FAMILY_AUTO = "auto"
# The names of models.BUILTIN_FAMILIES and models.registry.ENTRY_POINT_GROUP, written out so that
# validating a run in a web process needs no torch (a unit test keeps them equal to the library's).
BUILTIN_FAMILY_NAMES = ("hifigan", "evagan", "sat", "aar")
ENTRY_POINT_GROUP = "evalsite.models"
MODEL_FAMILY_NOT_ALLOWED = (
    "model_family {family!r} is not allowed; use one of {allowed}. A dotted path 'package.module:attribute' "
    "is accepted only when the operator lists it in EVALSITE_MODEL_PLUGINS."
)


def model_plugins() -> tuple[str, ...]:
    """The dotted-path plug-ins the operator allowed (``EVALSITE_MODEL_PLUGINS``)."""
    return tuple(settings.EVALSITE_MODEL_PLUGINS)


def model_families_allowed() -> list[str]:
    """``auto``, the built-in families, installed entry points, then the operator's plug-ins."""
    installed = sorted(
        {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        - set(BUILTIN_FAMILY_NAMES)
    )
    names = [MODEL_FAMILY_AUTO, *BUILTIN_FAMILY_NAMES, *installed]
    return names + [p for p in dict.fromkeys(model_plugins()) if p not in names]


def model_family_validate(family: str) -> None:
    """Refuse a family that is neither registered nor on the operator's allow-list (names the field)."""
    allowed = model_families_allowed()
    if family not in allowed:
        raise ValidationError(
            {
                "model_family": [
                    MODEL_FAMILY_NOT_ALLOWED.format(family=family[:200], allowed=", ".join(allowed))
                ]
            }
        )
