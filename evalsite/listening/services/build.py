"""Build a listening test from checkpoints × eval items, publish it, close it.

Refusals carry the request fields they are about (``extra["fields"]``), so every caller reports them
alike; the messages are module-level constants the tests assert on.
"""

from __future__ import annotations

import copy
import itertools
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from evalsite.audio.anchors import (
    ANCHOR_MIN_REMOVED_DB,
    anchor_filter_self_test,
    anchor_removed_level_db,
    lowpass_anchor,
)
from evalsite.audio.decoding import decoded_from_array
from evalsite.audio.loudness import apply_gain, clip_loudness, loudness_plan
from evalsite.audio.models import AudioAsset
from evalsite.audio.selectors import audio_asset_samples
from evalsite.audio.services import audio_asset_store
from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.listening.calibration import material_level_dbfs
from evalsite.listening.models import (
    Condition,
    ListeningTest,
    Stimulus,
    Trial,
)
from evalsite.listening.questionnaire import questionnaire_parse
from evalsite.listening.services.checks import DesignChecks, check_assignment, check_controls
from evalsite.listening.services.controls import control_trials_build
from evalsite.listening.services.design import ResolvedDesign, TestDesign, checkpoint_label, design_resolve
from evalsite.listening.services.session import trial_systems
from evalsite.runs.models import Checkpoint, EvalItem, Generation

MUSHRA_MAX_ITEM_S = 12.0
ANCHOR_CUTOFFS = {Condition.Role.ANCHOR_LP35: 3500.0, Condition.Role.ANCHOR_LP70: 7000.0}
CMOS_REFERENCE_LABEL = "reference recording"

NO_USABLE_ITEMS = "no eval item has output from every checkpoint{reference}; nothing to build a test from."
ANCHOR_SELF_TEST_FAILED = "the anchor filters fail the BS.1534-3 mask at {rate} Hz: {failures}"
RANDOM_ITEMS_TOO_MANY = (
    "random_items asks for {n} items, but only {usable} have output from every checkpoint{reference}; "
    "ask for at most {usable}."
)
NOT_DRAFT = "test {name!r} is {status}; only a draft can be published."
NOTHING_TO_PUBLISH = "test {name!r} has no main (non-training) trial."
NOT_PUBLISHED = "test {name!r} is {status}; only a published test can be closed."
UNCONFIRMED_WARNINGS = "test {name!r} has {n} design warning(s): {warnings}. Publish with confirm to open it to listeners anyway."
CALIBRATION_ITEMS = 10  # items whose references and outputs set the calibration level
LOUDNESS_REDUCED = (
    "loudness: served at {served:.1f} LUFS, {reduction:.1f} dB below the {target:g} LUFS target, so that "
    "every sound stays under {ceiling:g} dBTP ({what} has the highest peak-to-loudness ratio)"
)
LOUDNESS_SILENT = "loudness: {what} is silent (under -70 LUFS) and is served as generated"


def _outputs_by_item(
    checkpoints: list[Checkpoint], params_hash: str | None
) -> dict[int, dict[int, Generation]]:
    rows = Generation.objects.filter(
        checkpoint__in=checkpoints, status=Generation.Status.DONE
    ).select_related("asset")
    if params_hash:
        rows = rows.filter(params_hash=params_hash)
    by_item: dict[int, dict[int, Generation]] = {}
    for g in rows.order_by("created_at"):
        by_item.setdefault(g.item_id, {})[g.checkpoint_id] = g  # latest wins
    return by_item


def _anchor_assets(
    reference, rate_checked: dict[int, bool], checks: DesignChecks, item_key: str
) -> dict[str, Any]:
    """Make (or find) the two anchors of a reference clip, after the filter self-test at its rate, and
    check that each is audibly different from the reference."""
    samples, rate = audio_asset_samples(reference)
    if rate not in rate_checked:
        result = anchor_filter_self_test(rate)
        if not result.passed:
            raise ApplicationError(
                ANCHOR_SELF_TEST_FAILED.format(rate=rate, failures="; ".join(result.failures))
            )
        rate_checked[rate] = True
    assets = {}
    for role, cutoff in ANCHOR_CUTOFFS.items():
        anchor = lowpass_anchor(samples, rate, cutoff)
        removed_db = anchor_removed_level_db(samples, rate, cutoff, anchor)
        if removed_db is None or removed_db < ANCHOR_MIN_REMOVED_DB:
            checks.anchor(item_key, cutoff, removed_db)
        assets[role], _ = audio_asset_store(
            decoded=decoded_from_array(anchor, rate), original_name=f"anchor-{int(cutoff)}.wav"
        )
    return assets


def _conditions(test: ListeningTest, resolved: ResolvedDesign) -> dict[Any, Condition]:
    """One condition per rated checkpoint (by pk), and per hidden reference, anchor or comparison (by role)."""
    conditions: dict[Any, Condition] = {
        c.pk: Condition.objects.create(test=test, label=checkpoint_label(c), role="system", checkpoint=c)
        for c in resolved.checkpoints
    }
    if test.kind == ListeningTest.Kind.MUSHRA:
        for role in (Condition.Role.HIDDEN_REFERENCE, *ANCHOR_CUTOFFS):
            conditions[role] = Condition.objects.create(test=test, label=role.label, role=role)
    if test.kind == ListeningTest.Kind.CMOS:
        comparison = resolved.comparison
        conditions[Condition.Role.COMPARISON] = Condition.objects.create(
            test=test,
            role=Condition.Role.COMPARISON,
            checkpoint=comparison,
            label=checkpoint_label(comparison) if comparison is not None else CMOS_REFERENCE_LABEL,
        )
    return conditions


def _needs_reference(resolved: ResolvedDesign) -> bool:
    kind = resolved.design.kind
    return kind in (ListeningTest.Kind.MUSHRA, ListeningTest.Kind.SMOS) or (
        kind == ListeningTest.Kind.CMOS and resolved.comparison is None
    )


def _usable_items(
    resolved: ResolvedDesign, outputs: dict[int, dict[int, Generation]], warnings: list[str]
) -> list[EvalItem]:
    """Items with output from every checkpoint (and a reference where the kind needs one); the others
    are skipped with a warning."""
    needs_reference = _needs_reference(resolved)
    usable = []
    for item in resolved.items:
        have = outputs.get(item.pk, {})
        missing = [checkpoint_label(c) for c in resolved.sources if c.pk not in have]
        if missing:
            warnings.append(f"item {item.key} skipped: no output from {', '.join(missing)}")
        elif needs_reference and item.reference is None:
            warnings.append(f"item {item.key} skipped: no reference recording")
        else:
            usable.append(item)
    if not usable:
        message = NO_USABLE_ITEMS.format(reference=" and a reference" if needs_reference else "")
        raise ApplicationError(message, fields=("items", "checkpoints"))
    return usable


def _random_items(resolved: ResolvedDesign, usable: list[EvalItem], seed: int) -> list[EvalItem]:
    """``random_items`` of the usable items, drawn by the test's seed (the same seed draws the same
    items again), in key order."""
    n = resolved.design.random_items
    if n > len(usable):
        reference = " and a reference" if _needs_reference(resolved) else ""
        message = RANDOM_ITEMS_TOO_MANY.format(n=n, usable=len(usable), reference=reference)
        raise ApplicationError(message, fields=("random_items",))
    drawn = random.Random(f"items:{seed}").sample(sorted(usable, key=lambda i: i.key), n)
    return sorted(drawn, key=lambda i: i.key)


@dataclass
class _TrialWriter:
    """Writes the ordinary trials of one test, item by item, numbering them in build order."""

    test: ListeningTest
    resolved: ResolvedDesign
    conditions: dict[Any, Condition]
    outputs: dict[int, dict[int, Generation]]
    warnings: list[str]
    checks: DesignChecks
    index: int = 0
    anchors: dict[int, dict] = field(default_factory=dict)
    rate_checked: dict[int, bool] = field(default_factory=dict)

    def trial(self, item: EvalItem, training: bool, sounds: list[tuple[Any, Any]], reference=None) -> None:
        """One trial holding ``sounds``: (condition key, asset) pairs."""
        trial = Trial.objects.create(
            test=self.test, item=item, index=self.index, is_training=training, reference=reference
        )
        self.index += 1
        for key, asset in sounds:
            Stimulus.objects.create(trial=trial, condition=self.conditions[key], asset=asset)

    def output(self, item: EvalItem, checkpoint: Checkpoint) -> tuple[int, Any]:
        return checkpoint.pk, self.outputs[item.pk][checkpoint.pk].asset

    def item(self, item: EvalItem, training: bool) -> None:
        kind, checkpoints = self.test.kind, self.resolved.checkpoints
        if kind == ListeningTest.Kind.MUSHRA:
            self.mushra(item, training)
        elif kind == ListeningTest.Kind.CMOS:
            comparison = self.resolved.comparison
            versus = self.outputs[item.pk][comparison.pk].asset if comparison is not None else item.reference
            for c in checkpoints:
                self.trial(item, training, [self.output(item, c), (Condition.Role.COMPARISON, versus)])
        elif kind == ListeningTest.Kind.AB:
            for first, second in itertools.combinations(checkpoints, 2):
                self.trial(item, training, [self.output(item, first), self.output(item, second)])
        else:
            reference = item.reference if kind == ListeningTest.Kind.SMOS else None
            for c in checkpoints:
                self.trial(item, training, [self.output(item, c)], reference)

    def mushra(self, item: EvalItem, training: bool) -> None:
        """Every checkpoint's output, the hidden reference and the two low-pass anchors, in one trial."""
        if item.reference.duration_s > MUSHRA_MAX_ITEM_S:
            self.warnings.append(
                f"item {item.key} is {item.reference.duration_s:.1f} s; BS.1534-3 asks for about 10 s "
                f"at most (justify longer items in the report)"
            )
        self.anchors[item.pk] = _anchor_assets(item.reference, self.rate_checked, self.checks, item.key)
        sounds = [self.output(item, c) for c in self.resolved.checkpoints]
        sounds.append((Condition.Role.HIDDEN_REFERENCE, item.reference))
        sounds += list(self.anchors[item.pk].items())
        self.trial(item, training, sounds, item.reference)


@transaction.atomic
def listening_test_build(*, design: TestDesign, owner: AbstractBaseUser | None = None) -> ListeningTest:
    """Build a draft test from the design's checkpoints × eval items, once the design meets every rule
    (``design_resolve``).

    MUSHRA: one trial per item with the open reference, the hidden reference, the 3.5 kHz and
    7 kHz low-pass anchors (made here, after the filter mask self-test) and every checkpoint's
    output. SMOS: one trial per item × checkpoint, rated for similarity to the item's reference
    recording. MOS: one trial per item × checkpoint. CMOS (P.800 Annex E): one trial per item ×
    checkpoint holding that output and the ``comparison`` checkpoint's output of the item (the
    reference recording when ``comparison`` is None); listeners hear both blind, as A and B.
    AB: one trial per item × pair of checkpoints; ``allow_no_preference`` lets listeners answer
    "no preference". Items without output from every checkpoint (or without a reference where
    one is needed) are skipped with a warning. The first ``training_items`` usable items become
    training trials. ``gold_items`` / ``trapping_items`` quality-control trials are built for every
    kind (see ``controls``); with ``headphone_check`` the level of the material is measured
    for the calibration that comes before the check. With ``loudness_target_lufs`` the outputs,
    references and anchors are served at that loudness (``_loudness_align``), and the control trials
    are made from those served sounds. The design checks (``checks``) that fail are stored as
    ``design_warnings``, one per kind; publishing then needs ``confirm``.
    """
    resolved = design_resolve(design)
    test = ListeningTest(
        name=design.name,
        kind=design.kind,
        seed=design.seed if design.seed is not None else secrets.randbits(31),
        votes_target=design.votes_target,
        min_listeners=design.min_listeners,
        trials_per_participant=design.trials_per_participant,
        title=design.title,
        instructions=design.instructions,
        owner=owner,
        completion_code=design.completion_code,
        completion_redirect=design.completion_redirect,
        screened_out_redirect=design.screened_out_redirect,
        allow_no_preference=design.allow_no_preference,
        require_play_all=design.require_play_all,
        headphone_check=design.headphone_check,
        gold_items=design.gold_items,
        trapping_items=design.trapping_items,
        loudness_target_lufs=design.loudness_target_lufs,
        questionnaire=questionnaire_parse(design.questionnaire).as_stored(),
    )
    test.full_clean()
    test.save()
    conditions = _conditions(test, resolved)
    warnings: list[str] = []
    checks = DesignChecks()
    outputs = _outputs_by_item(resolved.sources, design.params_hash)
    usable = _usable_items(resolved, outputs, warnings)
    if design.random_items is not None:
        usable = _random_items(resolved, usable, test.seed)
    if _needs_reference(resolved):
        for item in usable:
            checks.reference(item.key, *audio_asset_samples(item.reference))
    writer = _TrialWriter(test, resolved, conditions, outputs, warnings, checks)
    for n, item in enumerate(usable):
        writer.item(item, training=n < design.training_items)
    # Controls cycle through the items that are not training items, so no control replays an item a
    # listener met in training (all of them only where every item is a training item; the check says so).
    main_items = usable[design.training_items :] or usable
    served: dict[int, AudioAsset] = {}
    fields = ["build_warnings", "design_warnings", "updated_at"]
    if design.loudness_target_lufs is not None:
        served = _loudness_align(test, design.loudness_target_lufs, warnings)
        fields.append("loudness_served_lufs")
    if design.gold_items or design.trapping_items:
        # Controls are made from the sounds as served, so the copies they reuse are the very files of the
        # ordinary trials, and the sounds they make are fitted (by ``controls``) to aligned neighbours.
        control_trials_build(
            test=test,
            checkpoints=resolved.checkpoints,
            outputs={
                item: {c: _served_copy(g, "asset", served) for c, g in have.items()}
                for item, have in outputs.items()
            },
            anchors={
                item: {role: served.get(a.pk, a) for role, a in made.items()}
                for item, made in writer.anchors.items()
            },
            comparison=resolved.comparison,
            usable=[_served_copy(item, "reference", served) for item in main_items],
            index=writer.index,
        )
    check_controls(test, checks)
    check_assignment(test, trial_systems(test), checks)
    test.build_warnings = warnings
    test.design_warnings = checks.as_list()
    if design.headphone_check:
        test.calibration_level_dbfs = _material_level(usable, [outputs[i.pk] for i in usable], served)
        fields.append("calibration_level_dbfs")
    test.save(update_fields=fields)
    return test


def _served_copy(row: Any, field: str, served: dict[int, AudioAsset]) -> Any:
    """An in-memory copy of ``row`` (never saved) whose audio ``field`` is the served rendition."""
    asset_id = getattr(row, f"{field}_id")
    if asset_id not in served:
        return row
    row = copy.copy(row)
    setattr(row, field, served[asset_id])
    return row


def _sound_names(stimuli: list[Stimulus], trials: list[Trial]) -> dict[int, str]:
    """A researcher-facing name per source asset for build warnings: condition label and item."""
    names = {t.reference_id: f"the reference of item {t.item.key}" for t in trials}
    names.update({s.asset_id: f"{s.condition.label} on item {s.trial.item.key}" for s in stimuli})
    return names


def _loudness_align(test: ListeningTest, target_lufs: float, warnings: list[str]) -> dict[int, AudioAsset]:
    """Serve every sound of the test's trials built so far (stimuli and open references) at one loudness
    (``evalsite.audio.loudness``): each source clip is measured, scaled and stored once as its own asset,
    so a clip used twice (the hidden and the open reference) is served as the very same file. Returns
    the served asset of each source asset, by source pk."""
    stimuli = list(
        Stimulus.objects.filter(trial__test=test).select_related("asset", "condition", "trial__item")
    )
    trials = list(
        Trial.objects.filter(test=test, reference__isnull=False).select_related("reference", "item")
    )
    sources = {t.reference_id: t.reference for t in trials} | {s.asset_id: s.asset for s in stimuli}
    measured = {pk: clip_loudness(*audio_asset_samples(asset)) for pk, asset in sources.items()}
    plan = loudness_plan(measured, target_lufs=target_lufs)
    names = _sound_names(stimuli, trials)
    if plan.reduction_db > 0:
        warnings.append(
            LOUDNESS_REDUCED.format(
                served=plan.served_lufs,
                reduction=plan.reduction_db,
                target=target_lufs,
                ceiling=plan.ceiling_dbtp,
                what=names[plan.limited_by],
            )
        )
    served: dict[int, AudioAsset] = {}
    for pk, asset in sources.items():
        if measured[pk].loudness_lufs is None:
            warnings.append(LOUDNESS_SILENT.format(what=names[pk]))
            served[pk] = asset
            continue
        samples, rate = audio_asset_samples(asset)
        served[pk], _ = audio_asset_store(
            decoded=decoded_from_array(apply_gain(samples, plan.gains_db[pk]), rate),
            original_name=f"aligned-{asset.original_name or asset.content_hash[:12]}"[:512],
        )
    for s in stimuli:
        s.source_asset_id, s.asset = s.asset_id, served[s.asset_id]
        s.loudness_lufs, s.gain_db = (
            measured[s.source_asset_id].loudness_lufs,
            plan.gains_db[s.source_asset_id],
        )
    Stimulus.objects.bulk_update(stimuli, ["asset", "source_asset", "loudness_lufs", "gain_db"])
    for t in trials:
        t.reference = served[t.reference_id]
    Trial.objects.bulk_update(trials, ["reference"])
    test.loudness_served_lufs = plan.served_lufs
    return served


def _material_level(
    items: list[EvalItem], outputs: list[dict[int, Generation]], served: dict[int, AudioAsset]
) -> float | None:
    """Active RMS level (dBFS) of the test's material as served, from the first ``CALIBRATION_ITEMS``
    items' references and outputs: the calibration noise plays at it."""
    assets = []
    for item, have in list(zip(items, outputs))[:CALIBRATION_ITEMS]:
        assets += ([item.reference] if item.reference is not None else []) + [g.asset for g in have.values()]
    return material_level_dbfs([audio_asset_samples(served.get(a.pk, a)) for a in assets])


def _unpublishable(test: ListeningTest) -> str | None:
    """Why a draft cannot be opened to listeners, or None."""
    if not test.trials.filter(is_training=False, control=Trial.Control.NONE).exists():
        return NOTHING_TO_PUBLISH.format(name=test.name)
    return None


class DesignWarningsUnconfirmed(ApplicationError):
    """Publishing a test with design warnings without ``confirm`` (400, ``UNCONFIRMED_WARNINGS``, field
    ``confirm``; ``extra["design_warnings"]`` lists them)."""


def _unconfirmed(test: ListeningTest) -> DesignWarningsUnconfirmed:
    warnings = test.design_warnings
    summary = "; ".join(
        w["message"] + (f" (items: {', '.join(w['items'])})" if w["items"] else "") for w in warnings
    )
    message = UNCONFIRMED_WARNINGS.format(name=test.name, n=len(warnings), warnings=summary)
    return DesignWarningsUnconfirmed(message, {"design_warnings": warnings}, fields=("confirm",))


@transaction.atomic
def listening_test_create(
    *,
    design: TestDesign,
    owner: AbstractBaseUser | None = None,
    publish: bool = False,
    confirm: bool = False,
) -> ListeningTest:
    """Build a test and, with ``publish``, open it to listeners at once (``confirm``: even with design
    warnings); nothing is kept when either fails."""
    test = listening_test_build(design=design, owner=owner)
    if publish:
        refusal = _unpublishable(test)
        if refusal:
            raise ApplicationError(refusal, fields=("publish",))
        test = listening_test_publish(test=test, confirm=confirm)
    return test


@transaction.atomic
def listening_test_publish(*, test: ListeningTest, confirm: bool = False) -> ListeningTest:
    """Open a draft to listeners. A test with design warnings (``design_warnings``) is opened only with
    ``confirm``: the researcher has seen them and publishes anyway."""
    test = ListeningTest.objects.select_for_update().get(pk=test.pk)
    if test.status != ListeningTest.Status.DRAFT:
        raise ConflictError(NOT_DRAFT.format(name=test.name, status=test.status))
    refusal = _unpublishable(test)
    if refusal:
        raise ApplicationError(refusal)
    if test.design_warnings and confirm is not True:
        raise _unconfirmed(test)
    test.status = ListeningTest.Status.PUBLISHED
    test.published_at = timezone.now()
    test.save(update_fields=["status", "published_at", "updated_at"])
    return test


@transaction.atomic
def listening_test_close(*, test: ListeningTest) -> ListeningTest:
    test = ListeningTest.objects.select_for_update().get(pk=test.pk)
    if test.status != ListeningTest.Status.PUBLISHED:
        raise ConflictError(NOT_PUBLISHED.format(name=test.name, status=test.status))
    test.status = ListeningTest.Status.CLOSED
    test.closed_at = timezone.now()
    test.save(update_fields=["status", "closed_at", "updated_at"])
    return test
