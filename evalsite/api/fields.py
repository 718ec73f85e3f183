"""Serializer fields for free-form JSON objects that PostgreSQL will store.

``config`` and ``params`` are free-form, so DRF checks nothing inside them. PostgreSQL's ``jsonb``
refuses ``\\u0000`` and unpaired surrogates (and SQLite's encoder fails on the latter), a float
like ``1e999`` arrives as infinity, which is not JSON, and integers past 64 bits overflow wherever a
value ends up in a ``BigIntegerField`` (a generation seed) or a float. Each is a 400 naming the
path inside the object here, instead of a 500 at save time or a failed job later.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rest_framework import serializers

MAX_DEPTH = 32
INT64 = (-(2**63), 2**63 - 1)
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")

NUL_OR_SURROGATE = "contains a NUL character or an unpaired surrogate, which cannot be stored"
NOT_FINITE = "must be a finite number"
INT_TOO_LARGE = "integers must lie within ±2**63"
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def printable(text: str) -> str:
    """``text`` with what cannot be encoded (unpaired surrogates) written as escapes, for messages."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _problems(value: Any, path: str, depth: int, out: dict[str, list[str]]) -> None:
    if depth > MAX_DEPTH:
        out[path or "."] = [TOO_DEEP]
    elif isinstance(value, str):
        if _BAD_TEXT.search(value):
            out[path] = [NUL_OR_SURROGATE]
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            out[path] = [INT_TOO_LARGE]
    elif isinstance(value, float):
        if not math.isfinite(value):
            out[path] = [NOT_FINITE]
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{printable(key)}" if path else printable(key)
            if _BAD_TEXT.search(key):
                out[name] = [f"the key {NUL_OR_SURROGATE}"]
            else:
                _problems(item, name, depth + 1, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _problems(item, f"{path}[{index}]", depth + 1, out)


def storable_json(value: Any) -> None:
    """Raise a ValidationError listing, by path, every value PostgreSQL's jsonb would refuse."""
    out: dict[str, list[str]] = {}
    _problems(value, "", 1, out)
    if out:
        raise serializers.ValidationError(out)


class JSONObjectField(serializers.DictField):
    """A free-form JSON object whose contents can be stored (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(storable_json)
