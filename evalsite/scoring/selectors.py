"""Reads of stored metric results, refusing to put incomparable values side by side."""

from __future__ import annotations

from collections.abc import Iterable

from evalsite.core.exceptions import ApplicationError
from evalsite.runs.models import Run
from evalsite.scoring.models import MetricResult

INCOMPARABLE = (
    "{name}: results of {first} and {second} were computed differently ({fields} differ) and cannot be "
    "put side by side."
)
_PROVENANCE = (
    "metric_version",
    "embedder",
    "weights_checksum",
    "preprocess",
    "reference_set_id",
    "reference_fingerprint",
)


def metric_results_compare(results: Iterable[MetricResult]) -> list[MetricResult]:
    """Return the results if every successful one of each metric shares one spec; else raise.

    The error names the metric, two checkpoints and which provenance fields differ.
    """
    results = list(results)
    first_of: dict[str, MetricResult] = {}
    for result in results:
        if result.status != MetricResult.Status.DONE:
            continue
        first = first_of.setdefault(result.name, result)
        if result.spec_key != first.spec_key:
            fields = [f for f in _PROVENANCE if getattr(result, f) != getattr(first, f)] or ["spec"]
            raise ApplicationError(
                INCOMPARABLE.format(
                    name=result.name,
                    first=first.checkpoint,
                    second=result.checkpoint,
                    fields=", ".join(fields),
                ),
                extra={"metric": result.name, "fields": fields},
            )
    return results


def run_metric_table(*, run: Run) -> dict:
    """Metric columns × checkpoint rows for a run; a metric whose specs differ gets one column per spec.

    Returns ``{"columns": [{"name", "spec_key", "label", "higher_is_better"}], "rows": [{"checkpoint",
    "cells": [MetricResult | None]}], "best": {column_index: checkpoint_id}}``.
    """
    results = list(
        MetricResult.objects.filter(checkpoint__run=run).select_related("checkpoint").order_by("name")
    )
    specs_of: dict[str, list[str]] = {}
    for r in results:
        if r.status == MetricResult.Status.DONE and r.spec_key not in specs_of.setdefault(r.name, []):
            specs_of[r.name].append(r.spec_key)
    columns = []
    for name in sorted({r.name for r in results}):
        keys = specs_of.get(name) or [""]
        for i, key in enumerate(keys):
            label = name if len(keys) == 1 else f"{name} (spec {i + 1} of {len(keys)})"
            hib = next((r.higher_is_better for r in results if r.name == name), None)
            columns.append({"name": name, "spec_key": key, "label": label, "higher_is_better": hib})
    checkpoints = sorted({r.checkpoint for r in results}, key=lambda c: c.step)
    cell = {
        (r.checkpoint_id, r.name, r.spec_key if r.status == MetricResult.Status.DONE else ""): r
        for r in results
    }
    rows = []
    for checkpoint in checkpoints:
        cells = []
        for col in columns:
            found = cell.get((checkpoint.pk, col["name"], col["spec_key"]))
            if found is None and col["spec_key"] == specs_of.get(col["name"], [""])[0]:
                found = cell.get((checkpoint.pk, col["name"], ""))  # a failure shows in the first column
            cells.append(found)
        rows.append({"checkpoint": checkpoint, "cells": cells})
    best: dict[int, int] = {}
    for index, col in enumerate(columns):
        scored = [
            (row["cells"][index].value, row["checkpoint"].pk)
            for row in rows
            if row["cells"][index] is not None and row["cells"][index].value is not None
        ]
        if scored and col["higher_is_better"] is not None:
            best[index] = (max if col["higher_is_better"] else min)(scored)[1]
    return {"columns": columns, "rows": rows, "best": best}
