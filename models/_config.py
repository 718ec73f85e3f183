"""Helpers that turn typed config dataclasses into plain kwargs and back."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")


def config_to_kwargs(config: Any) -> dict[str, Any]:
    """Return the constructor kwargs of a config dataclass as plain Python containers.

    Tuples become lists so the result survives JSON and ``torch.load(weights_only=True)``.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {type(config).__name__}")

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_kwargs(tp, value)
    if origin is typing.Union or origin is types.UnionType:
        if value is None:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError):
                continue
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        return [_coerce(args[0], v) if args else v for v in value]
    return value


def config_from_kwargs(cls: type[C], kwargs: dict[str, Any]) -> C:
    """Build the dataclass ``cls`` from kwargs, rebuilding nested dataclasses and tuples.

    Raises:
        TypeError: if ``kwargs`` names a field ``cls`` does not have.
    """
    if not isinstance(kwargs, dict):
        raise TypeError(f"config kwargs must be a dict, got {type(kwargs).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    values = {k: _coerce(hints.get(k, Any), v) for k, v in kwargs.items()}
    return cls(**values)
