"""Python client for evalsite, for training jobs: needs ``requests`` only (no Django, Celery or torch).

``EvalsiteCallback`` (Lightning) is imported on first use, from :mod:`evalsite_client.lightning`.
"""

from typing import Any

from evalsite_client.api import (
    ApiError,
    ConflictError,
    EvalsiteClient,
    EvalsiteError,
    EvaluationTimeout,
    ServiceError,
    file_sha256,
)
from evalsite_client.loop import CheckpointReporter
from evalsite_client.results import CheckpointResults

__all__ = [
    "ApiError",
    "CheckpointReporter",
    "CheckpointResults",
    "ConflictError",
    "EvalsiteCallback",
    "EvalsiteClient",
    "EvalsiteError",
    "EvaluationTimeout",
    "ServiceError",
    "file_sha256",
]


def __getattr__(name: str) -> Any:
    if name == "EvalsiteCallback":
        from evalsite_client.lightning import EvalsiteCallback

        return EvalsiteCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
