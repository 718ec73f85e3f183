"""Import the ratings of a listening test run on another platform as an "external" test.

The file becomes the same rows a native test has (conditions, trials, stimuli without audio, participants,
completed assignments, handles, ratings), so the analysis, screening, report and exports read it through
``evalsite.analysis.frames`` unchanged. Every row is validated before anything is written, every bad row is
reported as ``line N: column X: why``, and the writes are one transaction: nothing is half-imported.

Two formats (``docs/guide/importing-tests.md``):

- ``long_csv``: one rating per row, columns ``listener,item,system,score[,role][,trial]``;
- ``webmushra``: webMUSHRA's ``results/<testId>/mushra.csv`` (``session_test_id``, the questionnaire
  columns, ``trial_id``, ``rating_stimulus``, ``rating_score``, ``rating_time``, ``rating_comment``), turned
  into the same rows: the listener is the questionnaire answers, the stimulus ``reference`` is the hidden
  reference and ``anchor35`` / ``anchor70`` are the 3.5 / 7 kHz anchors.

Values from the file are only ever stored and compared as text; nothing in them is evaluated, and the
exports neutralise cells a spreadsheet would run as a formula (``analysis.exports``).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from evalsite.core.exceptions import ApplicationError
from evalsite.listening.models import (
    Assignment,
    Condition,
    ListeningTest,
    Participant,
    Rating,
    Stimulus,
    StimulusHandle,
    Trial,
)
from evalsite.runs.access import runs_visible
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet

FORMATS = {
    ListeningTest.Origin.LONG_CSV: "long CSV (listener,item,system,score[,role][,trial])",
    ListeningTest.Origin.WEBMUSHRA: "webMUSHRA mushra.csv",
}
LONG_REQUIRED = ("listener", "item", "system", "score")
LONG_OPTIONAL = ("role", "trial")
WEBMUSHRA_COLUMNS = ("session_test_id", "trial_id", "rating_stimulus", "rating_score")
WEBMUSHRA_ROLES = {"reference": "hidden_reference", "anchor35": "anchor_lp35", "anchor70": "anchor_lp70"}
ROLE_ALIASES = {
    "": Condition.Role.SYSTEM,
    "system": Condition.Role.SYSTEM,
    "hidden_reference": Condition.Role.HIDDEN_REFERENCE,
    "reference": Condition.Role.HIDDEN_REFERENCE,
    "anchor_lp35": Condition.Role.ANCHOR_LP35,
    "anchor_lp70": Condition.Role.ANCHOR_LP70,
    # BS.1534-3's mid-range anchor is the one post-screening judges.
    "anchor": Condition.Role.ANCHOR_LP70,
}
SCALE_ROLES = (ListeningTest.Kind.MUSHRA, ListeningTest.Kind.SMOS, ListeningTest.Kind.MOS)
# What a score must be, per kind: (low, high, whole numbers only, how to say it).
SCORE_RULES = {
    ListeningTest.Kind.MUSHRA: (0, 100, False, "a number from 0 to 100"),
    ListeningTest.Kind.SMOS: (1, 5, True, "a whole number from 1 to 5"),
    ListeningTest.Kind.MOS: (1, 5, True, "a whole number from 1 to 5"),
    ListeningTest.Kind.CMOS: (
        -3,
        3,
        True,
        "a whole number from -3 to 3 (the system relative to the comparison)",
    ),
    ListeningTest.Kind.AB: (0, 1, True, "1 for the preferred system of the pair, 0 for the other"),
}
CELL_LIMITS = {"listener": 200, "item": 300, "system": 300, "trial": 200, "role": 40, "score": 40}
DEFAULT_CMOS_COMPARISON = "reference"
DELIMITERS = ",;\t|"
IMPORT_REQUEST_ID = "import"
IMPORT_BODY_SLACK = 64 * 1024
"""Room for the form fields and multipart boundaries around an import file of the largest size allowed."""

BAD_ROWS = "{count} problem(s) in {file}; nothing was imported"
FILE_TOO_BIG = "file: {size} bytes is over the import limit of {limit} bytes (EVALSITE_IMPORT_MAX_BYTES)"
FILE_BINARY = "file: not a text file (a NUL byte at offset {offset}); export the ratings as CSV"
FILE_ENCODING = "file: not UTF-8, UTF-16 or Windows-1252 text (undecodable byte at offset {offset})"
FILE_EMPTY = "file: no header line"
FILE_NO_ROWS = "file: a header but no ratings"
TOO_MANY_ROWS = "file: more than {limit} rows (EVALSITE_IMPORT_MAX_ROWS); split the test or raise the limit"
TOO_MANY_COLUMNS = "line 1: {count} columns is over the limit of {limit} (EVALSITE_IMPORT_MAX_COLUMNS)"
NAME_TAKEN = "name: a listening test named {name!r} already exists"
NAME_EMPTY = "name: required"
BAD_KIND = "kind: {kind!r} is not one of {kinds}"
BAD_FORMAT = "format: {fmt!r} is not one of {formats}"
WEBMUSHRA_KIND = "kind: webMUSHRA's mushra.csv holds MUSHRA ratings; kind must be mushra, not {kind!r}"
MAPPING_LINE = "checkpoints: line {n}: {why}"
MAPPING_UNKNOWN_SYSTEM = "checkpoints: system {system!r} is not in the file (its systems: {systems})"
MAPPING_NO_CHECKPOINT = "checkpoints: system {system!r}: no checkpoint {spec!r} that you can see"
MAPPING_ROLE = "checkpoints: system {system!r} is the {role}; only systems map to checkpoints"
EVAL_SET_UNKNOWN = "eval_set: no eval set named {name!r}"


REQUEST_FIELDS = ("name", "kind", "format", "checkpoints", "eval_set")


class ImportRejected(ApplicationError):
    """The file (or the request around it) is wrong: every problem found, capped, with the total count."""

    def __init__(self, *, file: str, problems: list[str]) -> None:
        cap = settings.EVALSITE_IMPORT_MAX_ERRORS
        shown = problems[:cap]
        super().__init__(
            BAD_ROWS.format(count=len(problems), file=file),
            {"errors": shown, "error_count": len(problems), "errors_shown": len(shown)},
            fields=("file",),
        )
        # A problem about a request field ("name: ...", "checkpoints: ...") is filed under it; the rest are the file's.
        fields: dict[str, list[str]] = {}
        for problem in shown:
            head = problem.split(":", 1)[0]
            fields.setdefault(head if head in REQUEST_FIELDS else "file", []).append(problem)
        self.extra["fields"] = fields
        self.problems = problems


@dataclass(frozen=True)
class ImportRow:
    """One rating as read from a file, whatever its format; ``line`` is where it was in the file."""

    line: int
    listener: str
    item: str
    system: str
    score: float
    role: str
    trial: str


@dataclass
class ParsedFile:
    rows: list[ImportRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    encoding: str = "utf-8"
    delimiter: str = ","
    ignored_columns: list[str] = field(default_factory=list)


def import_text_decode(data: bytes) -> tuple[str, str]:
    """The text of an uploaded file and the encoding it was read with: a BOM wins, then UTF-8, then
    Windows-1252 (what spreadsheet programs write by default on Windows). Refuses binary files."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise ImportRejected(file="the file", problems=[FILE_ENCODING.format(offset=exc.start)]) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ImportRejected(file="the file", problems=[FILE_BINARY.format(offset=nul)])
    if data.startswith(codecs.BOM_UTF8):
        data, bom = data[len(codecs.BOM_UTF8) :], True
    else:
        bom = False
    try:
        return data.decode("utf-8"), "utf-8-sig" if bom else "utf-8"
    except UnicodeDecodeError as first:
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            raise ImportRejected(
                file="the file", problems=[FILE_ENCODING.format(offset=first.start)]
            ) from None


def _delimiter(header: str) -> str:
    """The delimiter of the header line: the candidate it holds most of (a header has no quoted commas)."""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per non-blank record; the line is where the record starts."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    start = 1
    for fields in reader:
        line, start = start, reader.line_num + 1
        if fields and any(f.strip() for f in fields):
            yield line, fields


def _score(raw: str, *, kind: str, delimiter: str) -> tuple[float | None, str | None]:
    low, high, whole, rule = SCORE_RULES[kind]
    text = raw.strip()
    if delimiter != "," and re.fullmatch(r"[-+]?\d+,\d+", text):
        text = text.replace(",", ".")  # a decimal comma, as ;-separated European spreadsheets write it
    try:
        value = float(text)
    except ValueError:
        return None, f"{raw.strip()[:40]!r} is not a number; must be {rule}"
    if not math.isfinite(value) or not (low <= value <= high) or (whole and not value.is_integer()):
        return None, f"{value:g} is out of range; must be {rule}"
    return value, None


def _cell(fields: list[str], index: int | None) -> str:
    return fields[index].strip() if index is not None and index < len(fields) else ""


def import_file_parse(*, data: bytes, fmt: str, kind: str, size: int | None = None) -> ParsedFile:
    """Every row of the file as an ``ImportRow``, and every problem found on the way (``line N: column X: why``).

    Refuses outright (``ImportRejected``) a file that is too big, binary, undecodable, or has too many rows or
    columns: those are not row problems. ``size``: the upload's size, when only its start is in ``data``."""
    limit = settings.EVALSITE_IMPORT_MAX_BYTES
    size = max(size or 0, len(data))
    if size > limit:
        raise ImportRejected(file="the file", problems=[FILE_TOO_BIG.format(size=size, limit=limit)])
    text, encoding = import_text_decode(data)
    first_line = text.split("\n", 1)[0]
    parsed = ParsedFile(encoding=encoding, delimiter=_delimiter(first_line))
    records = _records(text, parsed.delimiter)
    header_record = next(records, None)
    if header_record is None:
        raise ImportRejected(file="the file", problems=[FILE_EMPTY])
    _, header = header_record
    if len(header) > settings.EVALSITE_IMPORT_MAX_COLUMNS:
        raise ImportRejected(
            file="the file",
            problems=[TOO_MANY_COLUMNS.format(count=len(header), limit=settings.EVALSITE_IMPORT_MAX_COLUMNS)],
        )
    names = [h.strip().lower() for h in header]
    problems = parsed.problems
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen and name:
            problems.append(f"line 1: column {name}: appears twice (columns {seen[name] + 1} and {k + 1})")
        seen.setdefault(name, k)
    if fmt == ListeningTest.Origin.WEBMUSHRA:
        columns = _webmushra_columns(names, problems)
    else:
        columns = {name: seen.get(name) for name in (*LONG_REQUIRED, *LONG_OPTIONAL)}
        for name in LONG_REQUIRED:
            if columns[name] is None:
                problems.append(f"line 1: column {name}: missing (the header has: {', '.join(names)[:200]})")
        parsed.ignored_columns = [h for h in names if h not in LONG_REQUIRED + LONG_OPTIONAL]
    if problems:
        return parsed
    max_rows = settings.EVALSITE_IMPORT_MAX_ROWS
    for count, (line, fields) in enumerate(records, start=1):
        if count > max_rows:
            raise ImportRejected(file="the file", problems=[TOO_MANY_ROWS.format(limit=max_rows)])
        if len(fields) != len(header):
            problems.append(f"line {line}: has {len(fields)} fields; the header has {len(header)}")
            continue
        row = _row(line, fields, columns, fmt=fmt, kind=kind, delimiter=parsed.delimiter, problems=problems)
        if row is not None:
            parsed.rows.append(row)
    if not parsed.rows and not problems:
        problems.append(FILE_NO_ROWS)
    return parsed


def _webmushra_columns(names: list[str], problems: list[str]) -> dict[str, int | None]:
    """webMUSHRA writes ``session_test_id``, then one column per questionnaire answer, then the rating columns;
    the questionnaire answers together say who the listener was (webMUSHRA keeps no listener id)."""
    index = {name: names.index(name) for name in WEBMUSHRA_COLUMNS if name in names}
    for name in WEBMUSHRA_COLUMNS:
        if name not in index:
            problems.append(
                f"line 1: column {name}: missing; not a webMUSHRA mushra.csv (header: {', '.join(names)[:200]})"
            )
    if problems:
        return {}
    between = list(range(index["session_test_id"] + 1, index["trial_id"]))
    if not between:
        problems.append(
            "line 1: no questionnaire columns between session_test_id and trial_id, so listeners cannot be told "
            "apart; add a participant question (e.g. an id) to the webMUSHRA finish page, or convert to the long CSV"
        )
    return {
        "listener": between,
        "item": index["trial_id"],
        "system": index["rating_stimulus"],
        "score": index["rating_score"],
        "role": None,
        "trial": None,
    }


def _column_name(name: str, fmt: str) -> str:
    """The file's own name of a column, for messages about a webMUSHRA file."""
    if fmt != ListeningTest.Origin.WEBMUSHRA:
        return name
    return {
        "listener": "questionnaire answers (all of them)",
        "item": "trial_id",
        "system": "rating_stimulus",
        "score": "rating_score",
    }.get(name, name)


def _row(
    line: int, fields: list[str], columns: dict, *, fmt: str, kind: str, delimiter: str, problems: list[str]
) -> ImportRow | None:
    before = len(problems)
    if fmt == ListeningTest.Origin.WEBMUSHRA:
        listener = " | ".join(fields[k].strip() for k in columns["listener"])
        listener = "" if not listener.replace("|", "").strip() else listener
    else:
        listener = _cell(fields, columns["listener"])
    values = {
        "listener": listener,
        "item": _cell(fields, columns["item"]),
        "system": _cell(fields, columns["system"]),
        "trial": _cell(fields, columns["trial"]),
        "role": _cell(fields, columns["role"]).lower(),
        "score": _cell(fields, columns["score"]),
    }
    for name in ("listener", "item", "system", "score"):
        if not values[name]:
            problems.append(f"line {line}: column {_column_name(name, fmt)}: empty")
    for name, cap in CELL_LIMITS.items():
        if len(values[name]) > cap:
            problems.append(
                f"line {line}: column {_column_name(name, fmt)}: {len(values[name])} characters; at most {cap}"
            )
    role = values["role"]
    if fmt == ListeningTest.Origin.WEBMUSHRA:
        role = WEBMUSHRA_ROLES.get(values["system"].lower(), Condition.Role.SYSTEM)
    elif role not in ROLE_ALIASES:
        problems.append(
            f"line {line}: column role: {role[:40]!r} is not one of {', '.join(sorted(ROLE_ALIASES)[1:])}"
        )
    else:
        role = ROLE_ALIASES[role]
        if role != Condition.Role.SYSTEM and kind not in SCALE_ROLES:
            problems.append(
                f"line {line}: column role: a {kind} test rates systems only; {role!r} is for MUSHRA, SMOS and MOS"
            )
    score, why = (
        (None, None) if not values["score"] else _score(values["score"], kind=kind, delimiter=delimiter)
    )
    if why:
        problems.append(f"line {line}: column {_column_name('score', fmt)}: {why}")
    if len(problems) > before:
        return None
    return ImportRow(
        line=line,
        listener=values["listener"],
        item=values["item"],
        system=values["system"],
        score=score,
        role=str(role),
        trial=values["trial"] or values["item"],
    )


@dataclass
class _Design:
    """What the rows add up to: conditions (system → role), trials, and each listener's answers per trial."""

    roles: dict[str, str] = field(default_factory=dict)
    trials: dict[tuple, str] = field(default_factory=dict)  # trial key → item
    answers: dict[tuple[str, tuple], list[ImportRow]] = field(default_factory=dict)


def _trial_key(row: ImportRow, kind: str, comparison: str) -> tuple:
    # A CMOS trial is one system against the comparison; the AB pair is known once the trial's rows are grouped.
    return (row.trial, row.system) if kind == ListeningTest.Kind.CMOS else (row.trial,)


def _design(rows: list[ImportRow], *, kind: str, comparison: str, problems: list[str]) -> _Design:
    """Cross-row rules: one role per system, one item per trial, no answer given twice, AB pairs of two."""
    design = _Design()
    role_line: dict[str, int] = {}
    trial_item: dict[str, tuple[str, int]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if kind == ListeningTest.Kind.CMOS and row.system == comparison:
            problems.append(
                f"line {row.line}: column system: {row.system!r} is the CMOS comparison; each row rates a system "
                "against it (score = the system relative to the comparison)"
            )
            continue
        if row.system in design.roles and design.roles[row.system] != row.role:
            problems.append(
                f"line {row.line}: column role: system {row.system!r} is {row.role!r} here but "
                f"{design.roles[row.system]!r} on line {role_line[row.system]}"
            )
            continue
        design.roles.setdefault(row.system, row.role)
        role_line.setdefault(row.system, row.line)
        item, line = trial_item.setdefault(row.trial, (row.item, row.line))
        if item != row.item:
            problems.append(
                f"line {row.line}: column item: trial {row.trial!r} is item {item!r} on line {line}, not {row.item!r}"
            )
            continue
        key = (row.listener, row.trial, row.system)
        if key in seen:
            problems.append(
                f"line {row.line}: duplicate of line {seen[key]} (listener {row.listener!r}, trial {row.trial!r}, "
                f"system {row.system!r})"
            )
            continue
        seen[key] = row.line
        design.answers.setdefault((row.listener, _trial_key(row, kind, comparison)), []).append(row)
    if kind == ListeningTest.Kind.AB:
        design.answers = _ab_pairs(design.answers, problems)
    for (_, key), answers in design.answers.items():
        design.trials.setdefault(key, answers[0].item)
    return design


def _ab_pairs(answers: dict, problems: list[str]) -> dict:
    """AB: each listener's trial is two rows (two systems), 1 on the preferred and 0 on the other (0 and 0:
    no preference). The trial is keyed by the pair, so listeners who heard other pairs of the item get
    another trial, as a native AB test builds one trial per pair."""
    paired = {}
    for (listener, (trial,)), rows in answers.items():
        if len(rows) != 2:
            problems.append(
                f"line {rows[0].line}: column system: listener {listener!r}, trial {trial!r} has {len(rows)} "
                "system(s); an AB trial is exactly two rows, one per system of the pair"
            )
            continue
        if rows[0].score + rows[1].score > 1:
            problems.append(
                f"line {rows[1].line}: column score: both systems of the pair are preferred (1) on lines "
                f"{rows[0].line} and {rows[1].line}; at most one may be"
            )
            continue
        pair = tuple(sorted(r.system for r in rows))
        paired[(listener, (trial, pair))] = rows
    return paired


def checkpoint_mapping_parse(text: str) -> tuple[dict[str, str], list[str]]:
    """``system = run@step`` lines (blank lines and ``#`` comments skipped) as a dict, and the problems."""
    mapping: dict[str, str] = {}
    problems: list[str] = []
    for n, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        system, sep, spec = line.rpartition("=")
        system, spec = system.strip(), spec.strip()
        if not sep or not system or not spec:
            problems.append(MAPPING_LINE.format(n=n, why=f"{line[:80]!r} is not 'system = run@step'"))
        elif system in mapping:
            problems.append(MAPPING_LINE.format(n=n, why=f"system {system!r} is mapped twice"))
        else:
            mapping[system] = spec
    return mapping, problems


def _checkpoints(
    *, owner, mapping: dict[str, str], roles: dict[str, str], problems: list[str]
) -> dict[str, Checkpoint]:
    """The checkpoints ``mapping`` names, each of a run the owner may see; an invisible run and a missing one
    read the same (never says whether a run exists for others)."""
    found: dict[str, Checkpoint] = {}
    runs = runs_visible(owner)
    for system, spec in mapping.items():
        if system not in roles:
            problems.append(
                MAPPING_UNKNOWN_SYSTEM.format(system=system, systems=", ".join(sorted(roles))[:300])
            )
            continue
        if roles[system] != Condition.Role.SYSTEM:
            problems.append(MAPPING_ROLE.format(system=system, role=roles[system]))
            continue
        run_name, sep, step = spec.rpartition("@")
        checkpoint = None
        if sep and run_name and step.isdigit():
            checkpoint = (
                Checkpoint.objects.filter(run__in=runs, run__name=run_name, step=int(step))
                .select_related("run")
                .first()
            )
        if checkpoint is None:
            problems.append(MAPPING_NO_CHECKPOINT.format(system=system, spec=spec[:300]))
            continue
        found[system] = checkpoint
    return found


@transaction.atomic
def listening_test_import(
    *,
    owner,
    name: str,
    kind: str,
    fmt: str,
    data: bytes,
    size: int | None = None,
    file_name: str = "upload.csv",
    checkpoints: dict[str, str] | None = None,
    eval_set: str = "",
    comparison: str = DEFAULT_CMOS_COMPARISON,
) -> ListeningTest:
    """A closed, external listening test holding the file's ratings, or ``ImportRejected`` listing every
    problem (request, header and rows alike) with nothing written.

    ``checkpoints`` maps system names to ``run@step`` of runs ``owner`` may see; ``eval_set`` links items to
    that eval set's items by key (else the items get an eval set of their own, without audio); ``comparison``
    is the CMOS comparison's name (every CMOS row rates a system against it). ``size``: the upload's size
    when the caller read only its first ``EVALSITE_IMPORT_MAX_BYTES + 1`` bytes into ``data``.
    """
    name = (name or "").strip()
    problems: list[str] = []
    if not name:
        problems.append(NAME_EMPTY)
    elif ListeningTest.objects.filter(name=name).exists():
        problems.append(NAME_TAKEN.format(name=name))
    if fmt not in FORMATS:
        raise ImportRejected(
            file=file_name, problems=[BAD_FORMAT.format(fmt=fmt, formats=", ".join(FORMATS))]
        )
    if kind not in ListeningTest.Kind.values:
        raise ImportRejected(
            file=file_name, problems=[BAD_KIND.format(kind=kind, kinds=", ".join(ListeningTest.Kind.values))]
        )
    if fmt == ListeningTest.Origin.WEBMUSHRA and kind != ListeningTest.Kind.MUSHRA:
        raise ImportRejected(file=file_name, problems=[WEBMUSHRA_KIND.format(kind=kind)])
    parsed = import_file_parse(data=data, fmt=fmt, kind=kind, size=size)
    problems += parsed.problems
    design = _design(parsed.rows, kind=kind, comparison=comparison, problems=problems)
    linked = _checkpoints(owner=owner, mapping=checkpoints or {}, roles=design.roles, problems=problems)
    items = _items(eval_set, design, parsed.rows, problems)
    if problems:
        raise ImportRejected(file=file_name, problems=problems)
    return _write(
        owner=owner,
        name=name,
        kind=kind,
        fmt=fmt,
        design=design,
        linked=linked,
        items=items,
        comparison=comparison,
        summary={
            "file": file_name[:200],
            "sha256": hashlib.sha256(data).hexdigest(),
            "format": fmt,
            "encoding": parsed.encoding,
            "delimiter": parsed.delimiter,
            "rows": len(parsed.rows),
            "ignored_columns": parsed.ignored_columns,
            "eval_set": eval_set or None,
            "imported_at": timezone.now().isoformat(),
        },
    )


def _items(
    eval_set: str, design: _Design, rows: list[ImportRow], problems: list[str]
) -> dict[str, EvalItem] | None:
    """Existing eval items by key when ``eval_set`` is named (every item must be one of them); None otherwise."""
    if not eval_set:
        return None
    found = EvalSet.objects.filter(name=eval_set).first()
    if found is None:
        problems.append(EVAL_SET_UNKNOWN.format(name=eval_set))
        return None
    keys = set(design.trials.values())
    items = {i.key: i for i in EvalItem.objects.filter(eval_set=found, key__in=keys)}
    reported = set()
    for row in rows:
        if row.item not in items and row.item not in reported and row.item in keys:
            reported.add(row.item)
            problems.append(
                f"line {row.line}: column item: {row.item!r} is not an item of eval set {eval_set!r}"
            )
    return items


def _write(
    *,
    owner,
    name: str,
    kind: str,
    fmt: str,
    design: _Design,
    linked: dict[str, Checkpoint],
    items: dict[str, EvalItem] | None,
    comparison: str,
    summary: dict,
) -> ListeningTest:
    now = timezone.now()
    no_preference = kind == ListeningTest.Kind.AB and any(
        sum(r.score for r in rows) == 0 for rows in design.answers.values()
    )
    test = ListeningTest(
        name=name,
        kind=kind,
        status=ListeningTest.Status.CLOSED,
        owner=owner if getattr(owner, "pk", None) else None,
        title=name,
        seed=0,
        origin=fmt,
        import_summary=summary,
        allow_no_preference=no_preference,
        published_at=None,
        closed_at=now,
    )
    test.full_clean()
    test.save()
    conditions = {
        system: Condition.objects.create(
            test=test, label=system, role=role, checkpoint=linked.get(system), external=True
        )
        for system, role in design.roles.items()
    }
    if kind == ListeningTest.Kind.CMOS:
        conditions[comparison] = Condition.objects.create(
            test=test, label=comparison, role=Condition.Role.COMPARISON, external=True
        )
    if items is None:
        own = EvalSet.objects.create(
            name=f"imported test {test.pk}: {name}"[:200], description=f"items of imported test {name}"
        )
        items = {
            i.key: i
            for i in EvalItem.objects.bulk_create(
                [EvalItem(eval_set=own, key=key) for key in dict.fromkeys(design.trials.values())]
            )
        }
    trial_rows = Trial.objects.bulk_create(
        [Trial(test=test, item=items[item], index=k) for k, item in enumerate(design.trials.values())]
    )
    trials = dict(zip(design.trials, trial_rows))
    stimulus_keys = []
    for (_, key), rows in design.answers.items():
        systems = [r.system for r in rows]
        if kind == ListeningTest.Kind.CMOS:
            systems = [comparison, *systems]
        stimulus_keys += [(key, s) for s in systems]
    stimulus_keys = list(dict.fromkeys(stimulus_keys))
    created = Stimulus.objects.bulk_create(
        [Stimulus(trial=trials[key], condition=conditions[s], asset=None) for key, s in stimulus_keys],
        batch_size=1000,
    )
    stimuli = dict(zip(stimulus_keys, created))
    listeners = list(dict.fromkeys(listener for listener, _ in design.answers))
    participants = dict(
        zip(
            listeners,
            Participant.objects.bulk_create(
                [
                    Participant(
                        test=test,
                        external_id=listener,
                        seed=0,
                        status=Participant.Status.COMPLETED,
                        consented_at=now,
                        completed_at=now,
                    )
                    for listener in listeners
                ],
                batch_size=1000,
            ),
        )
    )
    positions: dict[str, int] = {}
    assignments = []
    for listener, key in design.answers:
        positions[listener] = positions.get(listener, -1) + 1
        assignments.append(
            Assignment(
                participant_id=participants[listener].pk,
                trial_id=trials[key].pk,
                position=positions[listener],
                completed_at=now,
            )
        )
    assignments = dict(zip(design.answers, Assignment.objects.bulk_create(assignments, batch_size=1000)))
    handles, ratings = [], []
    for answer_key, rows in design.answers.items():
        listener, key = answer_key
        # Ids, not instances: on 50 000 rows the related-object descriptors cost more than the inserts.
        assignment_id, participant_id = assignments[answer_key].pk, participants[listener].pk
        if kind == ListeningTest.Kind.CMOS:
            # A is the comparison, B the system: the stored "B relative to A" is the file's score as given.
            order, rated = [comparison, rows[0].system], [(rows[0].system, rows[0].score)]
        elif kind == ListeningTest.Kind.AB:
            # A is the first row's system, B the second's; +1: B preferred, -1: A preferred, 0: no preference.
            order = [rows[0].system, rows[1].system]
            rated = [(rows[1].system, rows[1].score - rows[0].score)]
        else:
            order, rated = [r.system for r in rows], [(r.system, r.score) for r in rows]
        handles += [
            StimulusHandle(assignment_id=assignment_id, stimulus_id=stimuli[(key, s)].pk, position=p)
            for p, s in enumerate(order)
        ]
        ratings += [
            Rating(
                participant_id=participant_id,
                assignment_id=assignment_id,
                stimulus_id=stimuli[(key, s)].pk,
                score=float(score) + 0.0,
                request_id=IMPORT_REQUEST_ID,
                history=[],
            )
            for s, score in rated
        ]
    StimulusHandle.objects.bulk_create(handles, batch_size=1000)
    Rating.objects.bulk_create(ratings, batch_size=1000)
    return test
