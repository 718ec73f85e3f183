"""Eval-set import: a directory of audio files or a .csv/.jsonl manifest becomes an eval set's items.

Each file is imported in its own transaction, so one bad file is reported with its reason and the
good ones next to it are kept; re-importing the same audio creates nothing.
"""

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction

from evalsite.audio.decoding import AudioValidationError
from evalsite.audio.models import AudioAsset
from evalsite.audio.services import audio_asset_ingest
from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import ProgressFn
from evalsite.runs.models import EvalItem, EvalSet

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")

IMPORT_SOURCE_MISSING = "{source}: no such file or directory."
IMPORT_SOURCE_KIND = "{source}: expected a directory of audio files or a .csv/.jsonl manifest."
MANIFEST_NO_PATH_COLUMN = "{source}: the manifest has no 'path' column (columns: {columns})."
ITEM_KEY_CONFLICT = "key {key!r} already exists in eval set {eval_set!r} with different audio; not replaced."


@dataclass
class ImportEntry:
    path: Path
    key: str
    text: str = ""
    speaker: str = ""
    class_label: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # manifest line, for messages


@dataclass
class ImportError_:
    where: str
    reason: str
    message: str


@dataclass
class ImportReport:
    eval_set_id: int
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[ImportError_] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "eval_set_id": self.eval_set_id,
            "total": self.total,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "errors": [e.__dict__ for e in self.errors],
        }


_KNOWN_COLUMNS = {"path", "key", "id", "text", "caption", "prompt", "speaker", "class_label", "label"}


def _entry_from_row(row: dict[str, Any], base: Path, where: str) -> ImportEntry:
    rel = str(row.get("path") or "").strip()
    path = (base / rel) if not Path(rel).is_absolute() else Path(rel)
    key = str(row.get("key") or row.get("id") or "").strip() or str(Path(rel).with_suffix("")).replace(
        "\\", "/"
    )
    metadata = {k: v for k, v in row.items() if k not in _KNOWN_COLUMNS and v not in (None, "")}
    return ImportEntry(
        path=path,
        key=key,
        text=str(row.get("text") or row.get("caption") or row.get("prompt") or ""),
        speaker=str(row.get("speaker") or ""),
        class_label=str(row.get("class_label") or row.get("label") or ""),
        metadata=metadata,
        where=where,
    )


def evalset_read_source(source: str | Path) -> tuple[list[ImportEntry], list[ImportError_]]:
    """List what a directory or manifest asks to import; malformed manifest lines become errors."""
    src = Path(source)
    if not src.exists():
        raise ApplicationError(IMPORT_SOURCE_MISSING.format(source=src))
    entries: list[ImportEntry] = []
    errors: list[ImportError_] = []
    if src.is_dir():
        for path in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
            rel = path.relative_to(src)
            entries.append(
                ImportEntry(path=path, key=str(rel.with_suffix("")).replace("\\", "/"), where=str(path))
            )
        return entries, errors
    suffix = src.suffix.lower()
    if suffix == ".csv":
        with src.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ApplicationError(
                    MANIFEST_NO_PATH_COLUMN.format(
                        source=src, columns=", ".join(reader.fieldnames or []) or "none"
                    )
                )
            for lineno, row in enumerate(reader, start=2):
                where = f"{src}:{lineno}"
                if not (row.get("path") or "").strip():
                    errors.append(ImportError_(where, "manifest_row", f"{where}: empty 'path'"))
                    continue
                entries.append(_entry_from_row(row, src.parent, where))
    elif suffix == ".jsonl":
        with src.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{src}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    errors.append(ImportError_(where, "manifest_row", f"{where}: not valid JSON ({exc.msg})"))
                    continue
                if not isinstance(row, dict) or not str(row.get("path") or "").strip():
                    errors.append(
                        ImportError_(where, "manifest_row", f"{where}: expected an object with a 'path'")
                    )
                    continue
                entries.append(_entry_from_row(row, src.parent, where))
    else:
        raise ApplicationError(IMPORT_SOURCE_KIND.format(source=src))
    return entries, errors


def _import_one(eval_set: EvalSet, entry: ImportEntry) -> str:
    """Import one file atomically; returns 'created' | 'updated' | 'unchanged'."""
    asset_created = False
    asset = None
    try:
        with transaction.atomic():
            asset, asset_created = audio_asset_ingest(source=entry.path, name=str(entry.path))
            fields = {
                "text": entry.text,
                "speaker": entry.speaker,
                "class_label": entry.class_label,
                "metadata": entry.metadata,
            }
            item = EvalItem.objects.select_for_update().filter(eval_set=eval_set, key=entry.key).first()
            if item is None:
                item = EvalItem(eval_set=eval_set, key=entry.key, reference=asset, **fields)
                item.full_clean(validate_unique=False)
                item.save()
                return "created"
            if item.reference_id != asset.pk:
                raise ApplicationError(ITEM_KEY_CONFLICT.format(key=entry.key, eval_set=eval_set.name))
            changed = [name for name, value in fields.items() if getattr(item, name) != value]
            if not changed:
                return "unchanged"
            for name in changed:
                setattr(item, name, fields[name])
            item.full_clean(validate_unique=False)
            item.save(update_fields=[*changed, "updated_at"])
            return "updated"
    except Exception:
        # The row went with the rollback; remove its file too so nothing is half-stored.
        if asset_created and asset is not None and not AudioAsset.objects.filter(pk=asset.pk).exists():
            default_storage.delete(asset.file.name)
        raise


def evalset_import(
    *,
    name: str,
    source: str | Path,
    description: str = "",
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Import a directory or manifest into the eval set ``name`` (created if needed).

    Each file is imported in its own transaction: a bad file is reported with its path and the
    reason and the good files next to it are imported. Re-importing the same audio creates nothing.
    """
    entries, errors = evalset_read_source(source)
    eval_set, _ = EvalSet.objects.get_or_create(name=name, defaults={"description": description})
    report = ImportReport(eval_set_id=eval_set.pk, total=len(entries) + len(errors), errors=list(errors))
    seen_keys: dict[str, str] = {}
    for index, entry in enumerate(entries, start=1):
        if entry.key in seen_keys:
            report.errors.append(
                ImportError_(
                    entry.where,
                    "duplicate_key",
                    f"{entry.where}: key {entry.key!r} also used by {seen_keys[entry.key]}",
                )
            )
        else:
            seen_keys[entry.key] = entry.where
            try:
                outcome = _import_one(eval_set, entry)
                setattr(report, outcome, getattr(report, outcome) + 1)
            except AudioValidationError as exc:
                report.errors.append(ImportError_(entry.where, exc.reason, str(exc)))
            except FileNotFoundError:
                report.errors.append(ImportError_(entry.where, "missing_file", f"{entry.path}: no such file"))
            except ApplicationError as exc:
                report.errors.append(ImportError_(entry.where, "conflict", f"{entry.where}: {exc.message}"))
            except ValidationError as exc:
                report.errors.append(
                    ImportError_(entry.where, "invalid", f"{entry.where}: {'; '.join(exc.messages)}")
                )
            except (OperationalError, InterfaceError):
                raise  # the database is gone, not the file: the task retries the whole import
            except Exception as exc:  # noqa: BLE001 - one file that breaks a library must not lose the others
                logger.exception("importing %s failed", entry.where)
                report.errors.append(
                    ImportError_(
                        entry.where, "error", f"{entry.where}: import failed ({type(exc).__name__}: {exc})"
                    )
                )
        if progress is not None:
            progress(index, len(entries), entry.key)
    return report


def evalset_import_job_work(job: Job, progress: ProgressFn) -> dict[str, Any]:
    """Body of an import job: params ``name``, ``source``, ``description``."""
    report = evalset_import(
        name=job.params["name"],
        source=job.params["source"],
        description=job.params.get("description", ""),
        progress=progress,
    )
    Job.objects.filter(pk=job.pk).update(eval_set_id=report.eval_set_id)
    result = report.as_dict()
    if report.total and not (report.created + report.updated + report.unchanged):
        raise ApplicationError(
            f"none of the {report.total} files could be imported; first error: {report.errors[0].message}",
            extra=result,
        )
    return result
