"""Pre-test and post-test questionnaires: the questions a test may ask, and what answers they take.

A researcher picks from a fixed menu of standard questions (``STANDARD``: the demographics, hearing and
listening-condition questions P.808 and most methods sections report) and may add a few questions of their
own, free text or one choice from a list, with bounded counts and lengths. The researcher's config
(``questionnaire_parse``) is stored expanded on the test (``Questionnaire.as_stored``): what a listener was
asked stays fixed even if the menu's wording changes later. Answers are checked against it
(``answers_clean``); every refusal names the question it is about, as ``answers.<question id>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from evalsite.core.exceptions import ApplicationError

STAGES = ("pre", "post")
STAGE_TITLES = {"pre": "Before the test: about you", "post": "After the test: your comments"}
STAGE_NAMES = {"pre": "Pre-test page", "post": "Post-test page"}  # the researcher's words
TEXT, CHOICE = "text", "choice"
MAX_QUESTIONS = 12  # per stage, standard and custom together
MAX_CUSTOM = 5  # per stage
MAX_LABEL = 200
MAX_OPTIONS = 12
MAX_OPTION = 100
MAX_TEXT = 2000
DEFAULT_TEXT = 500
CUSTOM_ID = re.compile(r"[a-z][a-z0-9_]{0,39}")
PREFER_NOT = "prefer_not_to_say"


@dataclass(frozen=True)
class Question:
    """One question: free text (at most ``max_length`` characters) or one of ``options`` ((value, label) pairs)."""

    id: str
    type: str
    label: str
    options: tuple[tuple[str, str], ...] = ()
    required: bool = True
    max_length: int = 0
    standard: bool = False

    def as_stored(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "label": self.label,
            "options": [list(o) for o in self.options],
            "required": self.required,
            "max_length": self.max_length,
            "standard": self.standard,
        }


def _choice(id: str, label: str, options: list[tuple[str, str]], *, required: bool = True) -> Question:
    return Question(id=id, type=CHOICE, label=label, options=tuple(options), required=required, standard=True)


STANDARD: dict[str, Question] = {
    q.id: q
    for q in (
        _choice(
            "age_band",
            "Your age",
            [
                ("18-24", "18–24"),
                ("25-34", "25–34"),
                ("35-44", "35–44"),
                ("45-54", "45–54"),
                ("55-64", "55–64"),
                ("65+", "65 or older"),
            ],
        ),
        # Never required (ethics): it may be skipped, and "prefer not to say" is always offered.
        _choice(
            "gender",
            "Your gender",
            [
                ("female", "Female"),
                ("male", "Male"),
                ("non_binary", "Non-binary"),
                ("other", "Other"),
                (PREFER_NOT, "Prefer not to say"),
            ],
            required=False,
        ),
        Question(
            id="native_language",
            type=TEXT,
            label="Your native language(s)",
            max_length=100,
            standard=True,
        ),
        _choice(
            "hearing_problems",
            "Do you have any known hearing problems?",
            [("no", "No"), ("yes", "Yes"), ("unsure", "Not sure")],
        ),
        _choice(
            "listening_device",
            "What are you listening with?",
            [
                ("over_ear", "Over-ear (closed or open-back) headphones"),
                ("on_ear", "On-ear headphones"),
                ("in_ear", "In-ear headphones / earbuds"),
                ("laptop_speakers", "Laptop, tablet or phone speakers"),
                ("external_speakers", "External speakers"),
                ("other", "Other"),
            ],
        ),
        _choice(
            "environment_noise",
            "How quiet is the place you are in?",
            [
                ("quiet", "Quiet (no noticeable background noise)"),
                ("some_noise", "Some background noise"),
                ("noisy", "Noisy"),
            ],
        ),
        Question(
            id="comments",
            type=TEXT,
            label="Any comments about the test or the sounds? (optional)",
            required=False,
            max_length=MAX_TEXT,
            standard=True,
        ),
    )
}
ALWAYS_OPTIONAL = frozenset({"gender"})
DEFAULT_POST = ("comments",)

NOT_AN_OBJECT = "{where} must be a JSON object; got {got}."
NOT_A_LIST = "{where} must be a list of questions; got {got}."
UNKNOWN_STAGE = "questionnaire stages are {stages}; got {got}."
TOO_MANY_QUESTIONS = "{where} has {n} questions; at most {limit}."
TOO_MANY_CUSTOM = "{where} has {n} custom questions; at most {limit}."
UNKNOWN_STANDARD = (
    "{where}: {id} is not a standard question ({known}); a question of your own needs "
    '"custom": true, a "type" ("text" or "choice") and a "label".'
)
STANDARD_KEYS = "{where}: a standard question takes only id and required; got {keys}."
CUSTOM_KEYS = "{where}: unknown keys {keys}; a custom question has id, custom, type, label, options, required, max_length."
BAD_ID = "{where}.id must be 1 to 40 lowercase letters, digits or _ starting with a letter, and not a standard id; got {got}."
DUPLICATE_ID = "{where}.id {id!r} is asked twice in the {stage} questionnaire."
BAD_TYPE = '{where}.type must be "text" or "choice"; got {got}.'
BAD_LABEL = "{where}.label must be text of 1 to {limit} characters; got {got}."
BAD_REQUIRED = "{where}.required must be true or false; got {got}."
GENDER_REQUIRED = "{where}: gender can not be required; listeners may always skip it (or prefer not to say)."
BAD_OPTIONS = (
    "{where}.options must be a list of 2 to {limit} different texts of 1 to {length} characters; got {got}."
)
OPTIONS_ON_TEXT = "{where}.options: a text question has no options."
BAD_MAX_LENGTH = "{where}.max_length must be a whole number from 1 to {limit}; got {got}."

ANSWERS_NOT_OBJECT = "answers must be an object of question id → answer; got {got}."
UNKNOWN_QUESTION = "{id!r} is not a question of this page."
NOT_TEXT = "the answer to {id!r} must be text; got {got}."
TOO_LONG = "the answer to {id!r} is {n} characters; at most {limit}."
NOT_AN_OPTION = "the answer to {id!r} must be one of {options}; got {got}."
REQUIRED = '"{label}" needs an answer.'
SEVERAL = "{n} answers need attention: {all}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Questionnaire:
    pre: tuple[Question, ...] = ()
    post: tuple[Question, ...] = ()

    def stage(self, stage: str) -> tuple[Question, ...]:
        return self.pre if stage == "pre" else self.post if stage == "post" else ()

    def __bool__(self) -> bool:
        return bool(self.pre or self.post)

    def as_stored(self) -> dict[str, Any]:
        return {stage: [q.as_stored() for q in self.stage(stage)] for stage in STAGES if self.stage(stage)}

    @classmethod
    def from_stored(cls, stored: dict | None) -> Questionnaire:
        """A questionnaire as ``as_stored`` wrote it (trusted: it was checked when the test was built)."""
        stages = {}
        for stage in STAGES:
            stages[stage] = tuple(
                Question(
                    id=q["id"],
                    type=q["type"],
                    label=q["label"],
                    options=tuple(tuple(o) for o in q.get("options", [])),
                    required=q["required"],
                    max_length=q.get("max_length", 0),
                    standard=q.get("standard", False),
                )
                for q in (stored or {}).get(stage, [])
            )
        return cls(**stages)


def _custom(entry: dict, where: str) -> Question:
    unknown = set(entry) - {"id", "custom", "type", "label", "options", "required", "max_length"}
    if unknown:
        raise ApplicationError(CUSTOM_KEYS.format(where=where, keys=sorted(unknown)), fields=(where,))
    kind = entry.get("type")
    if kind not in (TEXT, CHOICE):
        raise ApplicationError(BAD_TYPE.format(where=where, got=_short(kind)), fields=(f"{where}.type",))
    label = entry.get("label")
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
        message = BAD_LABEL.format(where=where, limit=MAX_LABEL, got=_short(label))
        raise ApplicationError(message, fields=(f"{where}.label",))
    options: tuple[tuple[str, str], ...] = ()
    max_length = 0
    if kind == CHOICE:
        raw = entry.get("options")
        valid = (
            isinstance(raw, list)
            and 2 <= len(raw) <= MAX_OPTIONS
            and all(isinstance(o, str) and o.strip() and len(o) <= MAX_OPTION for o in raw)
            and len({o.strip() for o in raw}) == len(raw)
        )
        if not valid:
            message = BAD_OPTIONS.format(where=where, limit=MAX_OPTIONS, length=MAX_OPTION, got=_short(raw))
            raise ApplicationError(message, fields=(f"{where}.options",))
        # A custom option's value is its text: the export then reads as the listener saw it.
        options = tuple((o.strip(), o.strip()) for o in raw)
        if "max_length" in entry:
            raise ApplicationError(
                BAD_MAX_LENGTH.format(where=where, limit=MAX_TEXT, got="max_length on a choice"),
                fields=(f"{where}.max_length",),
            )
    else:
        if entry.get("options") not in (None, []):
            raise ApplicationError(OPTIONS_ON_TEXT.format(where=where), fields=(f"{where}.options",))
        max_length = entry.get("max_length", DEFAULT_TEXT)
        if not (
            isinstance(max_length, int) and not isinstance(max_length, bool) and 1 <= max_length <= MAX_TEXT
        ):
            message = BAD_MAX_LENGTH.format(where=where, limit=MAX_TEXT, got=_short(max_length))
            raise ApplicationError(message, fields=(f"{where}.max_length",))
    required = entry.get("required", False)
    if not isinstance(required, bool):
        message = BAD_REQUIRED.format(where=where, got=_short(required))
        raise ApplicationError(message, fields=(f"{where}.required",))
    return Question(
        id=entry["id"],
        type=kind,
        label=label.strip(),
        options=options,
        required=required,
        max_length=max_length,
    )


def question_parse(entry: Any, where: str) -> Question:
    """One entry of a stage's list (a standard id or a custom question), refusals naming ``where``."""
    if isinstance(entry, str):
        entry = {"id": entry}
    if not isinstance(entry, dict):
        raise ApplicationError(NOT_AN_OBJECT.format(where=where, got=_short(entry)), fields=(where,))
    qid = entry.get("id")
    if entry.get("custom") is True:
        if not (isinstance(qid, str) and CUSTOM_ID.fullmatch(qid) and qid not in STANDARD):
            raise ApplicationError(BAD_ID.format(where=where, got=_short(qid)), fields=(f"{where}.id",))
        return _custom(entry, where)
    if not isinstance(qid, str) or qid not in STANDARD:
        message = UNKNOWN_STANDARD.format(where=where, id=_short(qid), known=", ".join(STANDARD))
        raise ApplicationError(message, fields=(f"{where}.id",))
    extra = set(entry) - {"id", "required", "custom"}
    if extra:
        raise ApplicationError(STANDARD_KEYS.format(where=where, keys=sorted(extra)), fields=(where,))
    base = STANDARD[qid]
    required = entry.get("required", base.required)
    if not isinstance(required, bool):
        message = BAD_REQUIRED.format(where=where, got=_short(required))
        raise ApplicationError(message, fields=(f"{where}.required",))
    if required and qid in ALWAYS_OPTIONAL:
        raise ApplicationError(GENDER_REQUIRED.format(where=where), fields=(f"{where}.required",))
    return Question(**{**base.__dict__, "required": required})


def questionnaire_parse(raw: Any, *, where: str = "questionnaire") -> Questionnaire:
    """The researcher's questionnaire config, checked: ``{"pre": [...], "post": [...]}`` (either may be absent).

    A question is a standard id (``"age_band"`` or ``{"id": "age_band", "required": false}``) or one of the
    researcher's own: ``{"id": "genre", "custom": true, "type": "choice", "label": "...", "options": [...],
    "required": true}`` / ``{"id": ..., "custom": true, "type": "text", "label": ..., "max_length": 300}``.
    None or ``{}`` is no questionnaire. Raises ``ApplicationError`` naming the entry (``questionnaire.pre[2].label``).
    """
    if raw is None:
        return Questionnaire()
    if not isinstance(raw, dict):
        raise ApplicationError(NOT_AN_OBJECT.format(where=where, got=_short(raw)), fields=(where,))
    unknown = sorted(set(raw) - set(STAGES))
    if unknown:
        message = UNKNOWN_STAGE.format(stages=" and ".join(STAGES), got=", ".join(map(repr, unknown)))
        raise ApplicationError(message, fields=(where,))
    stages: dict[str, tuple[Question, ...]] = {}
    for stage in STAGES:
        entries = raw.get(stage) or []
        at = f"{where}.{stage}"
        if not isinstance(entries, list):
            raise ApplicationError(NOT_A_LIST.format(where=at, got=_short(entries)), fields=(at,))
        if len(entries) > MAX_QUESTIONS:
            message = TOO_MANY_QUESTIONS.format(where=at, n=len(entries), limit=MAX_QUESTIONS)
            raise ApplicationError(message, fields=(at,))
        questions = [question_parse(entry, f"{at}[{i}]") for i, entry in enumerate(entries)]
        custom = sum(not q.standard for q in questions)
        if custom > MAX_CUSTOM:
            raise ApplicationError(TOO_MANY_CUSTOM.format(where=at, n=custom, limit=MAX_CUSTOM), fields=(at,))
        seen: set[str] = set()
        for i, q in enumerate(questions):
            if q.id in seen:
                message = DUPLICATE_ID.format(where=f"{at}[{i}]", id=q.id, stage=stage)
                raise ApplicationError(message, fields=(f"{at}[{i}].id",))
            seen.add(q.id)
        stages[stage] = tuple(questions)
    return Questionnaire(**stages)


def answers_clean(questions: tuple[Question, ...], answers: Any) -> dict[str, str]:
    """The answers of one page, checked against its questions: ``{question id: value}``, unanswered optional
    questions left out. Text is stripped; a choice is an option's value. Raises ``ApplicationError`` naming
    ``answers.<id>`` for an unknown question (at once), and for every wrong type, over-long text or missing
    required answer of the page together.
    """
    if not isinstance(answers, dict):
        raise ApplicationError(ANSWERS_NOT_OBJECT.format(got=_short(answers)), fields=("answers",))
    by_id = {q.id: q for q in questions}
    for key in answers:
        if key not in by_id:
            name = str(key)[:60]
            raise ApplicationError(UNKNOWN_QUESTION.format(id=name), fields=(f"answers.{name}",))
    clean: dict[str, str] = {}
    problems: dict[str, str] = {}  # every question that needs attention, so the page says them all at once
    for q in questions:
        value = answers.get(q.id)
        if value is None:
            value = ""
        if not isinstance(value, str):
            problems[q.id] = NOT_TEXT.format(id=q.id, got=_short(value))
            continue
        # A form sends line breaks as CRLF, a script may send LF: one text, one length, whichever sent it.
        value = value.replace("\r\n", "\n").strip()
        if not value:
            if q.required:
                problems[q.id] = REQUIRED.format(label=q.label)
            continue
        if q.type == TEXT and len(value) > q.max_length:
            problems[q.id] = TOO_LONG.format(id=q.id, n=len(value), limit=q.max_length)
        elif q.type == CHOICE and value not in {v for v, _ in q.options}:
            values = ", ".join(repr(v) for v, _ in q.options)
            problems[q.id] = NOT_AN_OPTION.format(id=q.id, options=values, got=_short(value))
        else:
            clean[q.id] = value
    if problems:
        messages = list(problems.values())
        message = (
            messages[0] if len(messages) == 1 else SEVERAL.format(n=len(messages), all=" ".join(messages))
        )
        raise ApplicationError(message, {"fields": {f"answers.{k}": [v] for k, v in problems.items()}})
    return clean
