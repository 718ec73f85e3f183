"""What a listening test is made of (``TestDesign``) and the rules a design must meet.

Every rule is checked here, in one place and in a fixed order, before a row is written; each refusal
names the request fields it is about (``extra["fields"]``), so the API, the researcher pages and the
command line report it alike. The messages are module-level constants the tests assert on.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from django.conf import settings

from evalsite.core.exceptions import ApplicationError
from evalsite.listening.models import LOUDNESS_TARGET_MAX_LUFS, LOUDNESS_TARGET_MIN_LUFS, ListeningTest
from evalsite.listening.questionnaire import questionnaire_parse
from evalsite.runs.models import Checkpoint, EvalItem

MUSHRA_MAX_SIGNALS = 12
DEFAULT_LOUDNESS_TARGET_LUFS = -23.0  # EBU R128 programme loudness, the BS.1534-3/P.808 common choice

NO_CHECKPOINTS = "a listening test needs at least one checkpoint."
MIXED_EVAL_SETS = (
    "the checkpoints' runs use different eval sets ({names}); pick checkpoints evaluated on one set."
)
MUSHRA_TOO_MANY = (
    "MUSHRA allows at most 12 signals per trial counting the hidden reference and the two anchors; "
    "{n} checkpoints + 3 = {total}."
)
AB_NEEDS_TWO = "an AB preference test compares checkpoints in pairs; pick at least two checkpoints (got {n})."
COMPARISON_ONLY_CMOS = "a comparison checkpoint is only used by CMOS tests; this test is {kind}."
COMPARISON_IS_RATED = (
    "the comparison checkpoint {label} is also one of the rated checkpoints; rate it against another."
)
NO_PREFERENCE_ONLY_AB = "'no preference' is an AB preference option; this test is {kind}."
LOUDNESS_TARGET_RANGE = (
    "the loudness target must be between {low:g} and {high:g} LUFS (or empty to serve the audio as "
    "generated); got {value}."
)
DUPLICATE_CHECKPOINTS = "each checkpoint may be rated once per test; listed more than once: {labels}."
TOO_MANY_SYSTEMS = (
    "a listening test rates at most {limit} checkpoints (EVALSITE_LISTENING_MAX_SYSTEMS); got {n}."
)
MIN_LISTENERS_TOO_LOW = (
    "min_listeners is the number of listeners wanted after screening; it must be at least 1 "
    "(BS.1534-3 suggests 20); got {n}."
)
DUPLICATE_ITEMS = "each eval item may be listed once; listed more than once: {keys}."
TOO_MANY_ITEMS = "a listening test uses at most {limit} eval items (EVALSITE_LISTENING_MAX_ITEMS); got {n}."
ITEMS_NOT_IN_EVAL_SET = "items must belong to the checkpoints' eval set ({eval_set}); not in it: {keys}."
ITEMS_AND_RANDOM = "choose items by name or draw a random number of them, not both."
RANDOM_ITEMS_RANGE = (
    "random_items must be a whole number from 1 to {n} (the items of the eval set); got {value!r}."
)
INSTRUCTIONS_MAX_CHARS = 5000
INSTRUCTIONS_TOO_LONG = "instructions may be at most {limit} characters; got {n}."
TOO_MANY_TRIALS = (
    "this test would have {n} trials ({per_item} per item × {items} items); at most {limit} "
    "(EVALSITE_LISTENING_MAX_TRIALS): pick fewer items or checkpoints."
)


def checkpoint_label(checkpoint: Checkpoint) -> str:
    return f"{checkpoint.run.name}@{checkpoint.step}"


@dataclass(frozen=True)
class TestDesign:
    """A listening test as a researcher asks for it: what is rated, on which items, and how it runs.

    ``checkpoints`` are the systems rated; ``items`` the eval items (None: every item of the
    checkpoints' eval set), or ``random_items`` of them drawn with the test's ``seed`` (reproducible: the
    same seed and outputs draw the same items); ``comparison`` the CMOS baseline (None: the reference recording);
    ``params_hash`` picks the generations made with those parameters; ``seed`` None draws one.
    ``min_listeners`` is how many listeners the analysis wants left after post-screening (BS.1534-3
    suggests at least 20); below it the results page warns. ``gold_items`` / ``trapping_items`` control
    trials, ``headphone_check`` (with level calibration) and ``require_play_all`` are the quality
    controls. ``loudness_target_lufs`` is the BS.1770 loudness every stimulus is served at (None: served
    as generated, e.g. for a loudness study). ``questionnaire`` is the pre-test / post-test questions
    (``listening.questionnaire.questionnaire_parse``; None: no questionnaire). The rest is shown to
    listeners as given.
    """

    __test__ = False  # a domain name that starts with "Test": pytest must not collect it

    name: str
    kind: str
    checkpoints: tuple[Checkpoint, ...]
    items: tuple[EvalItem, ...] | None = None
    random_items: int | None = None
    comparison: Checkpoint | None = None
    params_hash: str | None = None
    seed: int | None = None
    training_items: int = 1
    votes_target: int = 10
    min_listeners: int = 20
    trials_per_participant: int | None = None
    allow_no_preference: bool = False
    require_play_all: bool = False
    headphone_check: bool = False
    gold_items: int = 0
    trapping_items: int = 0
    title: str = "Listening test"
    instructions: str = ""
    completion_code: str = ""
    completion_redirect: str = ""
    screened_out_redirect: str = ""
    loudness_target_lufs: float | None = DEFAULT_LOUDNESS_TARGET_LUFS
    questionnaire: dict | None = None

    def __post_init__(self) -> None:
        # Callers pass lists; tuples keep a frozen design from changing under the build.
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        if self.items is not None:
            object.__setattr__(self, "items", tuple(self.items))


@dataclass(frozen=True)
class ResolvedDesign:
    """A design that met every rule, with its checkpoints and items read from the database."""

    design: TestDesign
    checkpoints: list[Checkpoint]  # ordered by run name, then step
    comparison: Checkpoint | None
    items: list[EvalItem]

    @property
    def sources(self) -> list[Checkpoint]:
        """Every checkpoint whose output the test plays: the rated ones and the CMOS baseline."""
        return self.checkpoints + ([self.comparison] if self.comparison is not None else [])


def _check_lists(design: TestDesign) -> None:
    """Each checkpoint and item once, and no more of them than the operator allows: one request must not
    hold a web worker for a minute building (or resolving) a test nobody could run."""
    checkpoints, items = design.checkpoints, design.items or ()
    if len(checkpoints) > settings.EVALSITE_LISTENING_MAX_SYSTEMS:
        message = TOO_MANY_SYSTEMS.format(limit=settings.EVALSITE_LISTENING_MAX_SYSTEMS, n=len(checkpoints))
        raise ApplicationError(message, fields=("checkpoints",))
    times = Counter(c.pk for c in checkpoints)
    if len(times) < len(checkpoints):
        labels = sorted({checkpoint_label(c) for c in checkpoints if times[c.pk] > 1})
        raise ApplicationError(
            DUPLICATE_CHECKPOINTS.format(labels=", ".join(labels)), fields=("checkpoints",)
        )
    times = Counter(i.pk for i in items)
    if len(times) < len(items):
        keys = sorted({i.key for i in items if times[i.pk] > 1})
        raise ApplicationError(DUPLICATE_ITEMS.format(keys=", ".join(keys[:10])), fields=("items",))


def _check_options(design: TestDesign) -> None:
    questionnaire_parse(design.questionnaire)
    if len(design.instructions) > INSTRUCTIONS_MAX_CHARS:
        message = INSTRUCTIONS_TOO_LONG.format(limit=INSTRUCTIONS_MAX_CHARS, n=len(design.instructions))
        raise ApplicationError(message, fields=("instructions",))
    if design.items is not None and design.random_items is not None:
        raise ApplicationError(ITEMS_AND_RANDOM, fields=("items", "random_items"))
    if design.min_listeners < 1:
        raise ApplicationError(
            MIN_LISTENERS_TOO_LOW.format(n=design.min_listeners), fields=("min_listeners",)
        )
    target = design.loudness_target_lufs
    if target is not None and not (
        math.isfinite(target) and LOUDNESS_TARGET_MIN_LUFS <= target <= LOUDNESS_TARGET_MAX_LUFS
    ):
        message = LOUDNESS_TARGET_RANGE.format(
            low=LOUDNESS_TARGET_MIN_LUFS, high=LOUDNESS_TARGET_MAX_LUFS, value=target
        )
        raise ApplicationError(message, fields=("loudness_target_lufs",))
    if design.comparison is not None and design.kind != ListeningTest.Kind.CMOS:
        raise ApplicationError(COMPARISON_ONLY_CMOS.format(kind=design.kind), fields=("comparison", "kind"))
    if design.allow_no_preference and design.kind != ListeningTest.Kind.AB:
        raise ApplicationError(
            NO_PREFERENCE_ONLY_AB.format(kind=design.kind), fields=("allow_no_preference", "kind")
        )


def _items(design: TestDesign, sources: list[Checkpoint]) -> list[EvalItem]:
    eval_sets = {c.run.eval_set_id for c in sources}
    if design.items is not None:
        # Chosen items must be the checkpoints' own: an item of another eval set (another researcher's,
        # say) would put its reference recording into this test.
        foreign = [i.key for i in design.items if i.eval_set_id not in eval_sets]
        if foreign:
            names = sorted({c.run.eval_set.name if c.run.eval_set else "none" for c in sources})
            message = ITEMS_NOT_IN_EVAL_SET.format(eval_set=", ".join(names), keys=", ".join(foreign[:10]))
            raise ApplicationError(message, fields=("items",))
        return list(design.items)
    if len(eval_sets) != 1 or None in eval_sets:
        names = sorted({c.run.eval_set.name if c.run.eval_set else "none" for c in sources})
        raise ApplicationError(MIXED_EVAL_SETS.format(names=", ".join(names)), fields=("checkpoints",))
    items = list(
        EvalItem.objects.filter(eval_set_id=eval_sets.pop()).select_related("reference").order_by("key")
    )
    n = design.random_items
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= len(items)):
        raise ApplicationError(RANDOM_ITEMS_RANGE.format(n=len(items), value=n), fields=("random_items",))
    return items


def trials_per_item(kind: str, n_checkpoints: int) -> int:
    """Ordinary trials one eval item gives: MUSHRA rates every checkpoint at once, AB each pair."""
    if kind == ListeningTest.Kind.MUSHRA:
        return 1
    if kind == ListeningTest.Kind.AB:
        return n_checkpoints * (n_checkpoints - 1) // 2
    return n_checkpoints


def _check_size(kind: str, checkpoints: list[Checkpoint], items: list[EvalItem]) -> None:
    if kind == ListeningTest.Kind.MUSHRA and len(checkpoints) + 3 > MUSHRA_MAX_SIGNALS:
        message = MUSHRA_TOO_MANY.format(n=len(checkpoints), total=len(checkpoints) + 3)
        raise ApplicationError(message, fields=("checkpoints", "kind"))
    if len(items) > settings.EVALSITE_LISTENING_MAX_ITEMS:
        message = TOO_MANY_ITEMS.format(limit=settings.EVALSITE_LISTENING_MAX_ITEMS, n=len(items))
        raise ApplicationError(message, fields=("items",))
    per_item = trials_per_item(kind, len(checkpoints))
    if per_item * len(items) > settings.EVALSITE_LISTENING_MAX_TRIALS:
        message = TOO_MANY_TRIALS.format(
            n=per_item * len(items),
            per_item=per_item,
            items=len(items),
            limit=settings.EVALSITE_LISTENING_MAX_TRIALS,
        )
        raise ApplicationError(message, fields=("items", "checkpoints"))


def design_resolve(design: TestDesign) -> ResolvedDesign:
    """The design's checkpoints and items, once it has met every rule (cheap ones first)."""
    if not design.checkpoints:
        raise ApplicationError(NO_CHECKPOINTS, fields=("checkpoints",))
    _check_lists(design)
    _check_options(design)
    checkpoints = list(
        Checkpoint.objects.filter(pk__in=[c.pk for c in design.checkpoints])
        .select_related("run__eval_set")
        .order_by("run__name", "step")
    )
    comparison = None
    if design.comparison is not None:
        comparison = Checkpoint.objects.select_related("run__eval_set").get(pk=design.comparison.pk)
        if comparison.pk in {c.pk for c in checkpoints}:
            raise ApplicationError(
                COMPARISON_IS_RATED.format(label=checkpoint_label(comparison)), fields=("comparison",)
            )
    if design.kind == ListeningTest.Kind.AB and len(checkpoints) < 2:
        raise ApplicationError(AB_NEEDS_TWO.format(n=len(checkpoints)), fields=("checkpoints", "kind"))
    items = _items(design, checkpoints + ([comparison] if comparison is not None else []))
    # A random draw is made from the items with output (at build); at most ``random_items`` of them.
    _check_size(design.kind, checkpoints, items[: design.random_items] if design.random_items else items)
    return ResolvedDesign(design=design, checkpoints=checkpoints, comparison=comparison, items=items)
