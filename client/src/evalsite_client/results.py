"""What evalsite found for one checkpoint, read defensively: a bad answer never reaches a logger."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

MAX_SCALARS = 1000
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class CheckpointResults:
    """Metrics, human scores and alerts of one checkpoint, once its evaluation pipeline ended.

    ``status`` is ``"done"`` or ``"failed"`` (then ``error`` says why and ``metrics`` holds what was
    computed before). ``metrics`` maps a metric to its value, ``human`` a listening test's name to
    the checkpoint's mean score in it (kept listeners), ``alerts`` are the alerts raised for the step.
    """

    step: int
    status: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    human: Mapping[str, float] = field(default_factory=dict)
    alerts: tuple[dict[str, Any], ...] = ()
    error: str = ""

    def alert_counts(self) -> dict[str, int]:
        """How many alerts each rule raised for this step."""
        rules = (alert.get("rule") for alert in self.alerts)
        return dict(Counter(rule if usable_name(rule) else "unknown" for rule in rules))

    def scalars(self, prefix: str = "evalsite") -> dict[str, float]:
        """Flat names for a training logger: ``<prefix>/<metric>``, ``<prefix>/human/<test>`` and
        ``<prefix>/alerts/<rule>`` (a count)."""
        out = {f"{prefix}/{name}": value for name, value in self.metrics.items()}
        out.update({f"{prefix}/human/{name}": value for name, value in self.human.items()})
        out.update({f"{prefix}/alerts/{rule}": float(n) for rule, n in self.alert_counts().items()})
        return out


def finite(value: Any) -> float | None:
    """The value as a float when it is a finite real number (not a bool, not a string), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def usable_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and name.isprintable()


def clean_metrics(raw: Any, *, step: int) -> dict[str, float]:
    """The checkpoint's ``metrics`` with every entry a logger can take; the rest is named in a warning.

    ``null`` (a metric that produced no value) is left out quietly; NaN, infinities, strings and odd
    names are left out with a warning. Beyond :data:`MAX_SCALARS` entries none is kept: a payload
    that large is not a metric table, and logging an arbitrary part of it would mislead.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        logger.warning(
            "evalsite: step %d: metrics is a %s, not an object; none logged", step, type(raw).__name__
        )
        return {}
    if len(raw) > MAX_SCALARS:
        logger.warning(
            "evalsite: step %d: %d metrics, more than %d; none logged", step, len(raw), MAX_SCALARS
        )
        return {}
    kept: dict[str, float] = {}
    refused: list[str] = []
    for name, value in raw.items():
        number = finite(value)
        if usable_name(name) and number is not None:
            kept[name] = number
        elif value is not None or not usable_name(name):
            refused.append(repr(name)[:60])
    if refused:
        logger.warning(
            "evalsite: step %d: metrics %s have no usable name or finite value; not logged",
            step,
            ", ".join(sorted(refused)[:10]) + (" …" if len(refused) > 10 else ""),
        )
    return kept


def human_scores(
    results: Any, *, run_id: int | str, steps: Collection[int]
) -> tuple[str, dict[int, float] | None]:
    """From one listening test's results: its name and the mean score of each of ``steps`` it rated,
    once the test is closed; ``None`` before, while the means still move as listeners rate.

    A condition is matched to a checkpoint through ``design.conditions[].checkpoint`` (``run_id``,
    ``step``) and to its score through its label (``scores.kept[].system``). Raises ``ValueError``
    when the answer does not have that shape.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results are a {type(results).__name__}, not an object")
    test = results.get("test")
    name = test.get("name") if isinstance(test, Mapping) else None
    if not usable_name(name):
        raise ValueError(f"the test has no usable name: {name!r:.60}")
    design = results.get("design")
    conditions = design.get("conditions") if isinstance(design, Mapping) else None
    if not isinstance(conditions, list):
        raise ValueError("design.conditions is missing")
    if test.get("status") != "closed":
        return name, None
    labels: dict[str, int] = {}
    for condition in conditions:
        checkpoint = condition.get("checkpoint") if isinstance(condition, Mapping) else None
        if not isinstance(checkpoint, Mapping) or str(checkpoint.get("run_id")) != str(run_id):
            continue
        step = checkpoint.get("step")
        if isinstance(step, int) and not isinstance(step, bool) and step in steps:
            labels[str(condition.get("label"))] = step
    scores = results.get("scores")
    rows = scores.get("kept") if isinstance(scores, Mapping) else None
    found: dict[int, float] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, Mapping):
            continue
        step = labels.get(str(row.get("system")))
        mean = finite(row.get("mean"))
        if step is not None and mean is not None and step not in found:
            found[step] = mean
    return name, found
