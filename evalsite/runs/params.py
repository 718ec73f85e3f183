"""The one schema of generation params, checked wherever they enter: the API (evaluate), checkpoint registration
(management commands, the demo) and the worker before it loads a model (params stored by other means).

A run token chooses these values, and the worker acts on them: an unchecked ``duration_s=1e9`` or
``batch_size=1e9`` would have a GPU worker allocate without bound, ``device="cuda:7"`` would fail on every
worker with fewer GPUs. Types are exact (``true`` is not a number, ``"4"`` is not an integer) and every number has a
range; unknown keys are refused so a typo is not silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings

from evalsite.core.exceptions import ApplicationError

DURATION_RANGE_S = (0.1, 30.0)  # generators' clips: eval items are a few seconds; 30 s covers music excerpts
BATCH_SIZE_RANGE = (1, 256)
DTYPES = ("fp32", "bf16")  # what evalsite.runs.generation.autocast implements
SEED_RANGE = (0, 2**31 - 1)
CFG_SCALE_RANGE = (0.0, 20.0)
TOP_K_RANGE = (1, 65536)
TEMPERATURE_RANGE = (0.01, 10.0)
CUDA_DEVICE = re.compile(r"cuda:(\d{1,3})")

PARAMS_NOT_AN_OBJECT = "params must be a JSON object of generation params; got {kind}."
PARAM_UNKNOWN = "params.{key} is not a generation param; known: {known}."
PARAM_INVALID = "params.{key} must be {rule}; got {value}."
DEVICE_RULE = '"auto", "cpu", "cuda" or "cuda:N" with N below {n} (EVALSITE_GENERATION_CUDA_DEVICES)'


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _between(
    low: float, high: float, *, integer: bool = False, optional: bool = False
) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if value is None:
            return optional
        return (_integer(value) if integer else _number(value)) and low <= value <= high

    return check


def _device(value: Any) -> bool:
    if value in (None, "", "auto", "cpu", "cuda"):
        return True
    match = CUDA_DEVICE.fullmatch(value) if isinstance(value, str) else None
    return match is not None and int(match.group(1)) < settings.EVALSITE_GENERATION_CUDA_DEVICES


def _optional(rule: str) -> str:
    return f"{rule}, or null"


# key → (check, what the message says it must be). The defaults live in GENERATION_DEFAULTS.
GENERATION_PARAM_RULES: dict[str, tuple[Callable[[Any], bool], Callable[[], str]]] = {
    "seed": (
        _between(*SEED_RANGE, integer=True),
        lambda: f"an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}",
    ),
    "batch_size": (
        _between(*BATCH_SIZE_RANGE, integer=True, optional=True),
        lambda: _optional(f"an integer from {BATCH_SIZE_RANGE[0]} to {BATCH_SIZE_RANGE[1]}"),
    ),
    "dtype": (lambda v: v in DTYPES, lambda: "one of " + ", ".join(f'"{d}"' for d in DTYPES)),
    "tf32": (lambda v: isinstance(v, bool), lambda: "true or false"),
    "resample": (lambda v: isinstance(v, bool), lambda: "true or false"),
    "cfg_scale": (
        _between(*CFG_SCALE_RANGE),
        lambda: f"a number from {CFG_SCALE_RANGE[0]:g} to {CFG_SCALE_RANGE[1]:g}",
    ),
    "top_k": (
        _between(*TOP_K_RANGE, integer=True, optional=True),
        lambda: _optional(f"an integer from {TOP_K_RANGE[0]} to {TOP_K_RANGE[1]}"),
    ),
    "top_p": (
        lambda v: v is None or (_number(v) and 0 < v <= 1),
        lambda: _optional("a number above 0 and at most 1"),
    ),
    "temperature": (
        _between(*TEMPERATURE_RANGE),
        lambda: f"a number from {TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g}",
    ),
    "duration_s": (
        _between(*DURATION_RANGE_S, optional=True),
        lambda: _optional(f"seconds from {DURATION_RANGE_S[0]:g} to {DURATION_RANGE_S[1]:g}"),
    ),
    "device": (_device, lambda: DEVICE_RULE.format(n=settings.EVALSITE_GENERATION_CUDA_DEVICES)),
}


def generation_params_check(params: Any) -> dict[str, Any]:
    """``params`` itself if every key is known and every value of the right type and range; else an
    ``ApplicationError`` whose ``extra.fields`` names ``params.<key>``."""
    if not isinstance(params, dict):
        message = PARAMS_NOT_AN_OBJECT.format(kind=type(params).__name__)
        raise ApplicationError(message, extra={"fields": {"params": [message]}})
    for key, value in params.items():
        if key not in GENERATION_PARAM_RULES:
            message = PARAM_UNKNOWN.format(
                key=str(key)[:100], known=", ".join(sorted(GENERATION_PARAM_RULES))
            )
            raise ApplicationError(message, extra={"fields": {f"params.{str(key)[:100]}": [message]}})
        check, rule = GENERATION_PARAM_RULES[key]
        if not check(value):
            message = PARAM_INVALID.format(key=key, rule=rule(), value=repr(value)[:100])
            raise ApplicationError(message, extra={"fields": {f"params.{key}": [message]}})
    return params


# The official AAR sampler's settings (models.aar.OFFICIAL_*, restated here because the web tier does
# not import torch; a test keeps the two equal). AAR is the one generator family; vocoders and codecs
# ignore them. Changing them changes every params hash, so outputs made under the old defaults stay
# apart from the new ones instead of being reused or compared with them.
SAMPLING_DEFAULTS: dict[str, Any] = {"cfg_scale": 4.0, "top_k": 200, "top_p": 0.95}

GENERATION_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "batch_size": None,  # None: 16 on GPU, 4 on CPU
    "dtype": "fp32",  # or "bf16"
    "tf32": False,
    "resample": False,
    **SAMPLING_DEFAULTS,
    "temperature": 1.0,
    "duration_s": None,  # generator: None → the reference's duration, else 4 s
}


def generation_params(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Check them (types, ranges, known keys), fill defaults and return the canonical
    params with their hash (the natural key of outputs)."""
    generation_params_check(params)
    full = {**GENERATION_DEFAULTS, **{k: v for k, v in params.items() if k != "device"}}
    # Batch size, precision and device change speed, not which audio an item gets: not in the key.
    keyed = {k: v for k, v in full.items() if k not in ("batch_size", "tf32")}
    return full, hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
