"""Listening tests through the API: build from checkpoints, publish, close, progress and results."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from evalsite.api.access import RunPrincipal, require_researcher, run_for, runs_visible
from evalsite.api.parsers import ImportMultiPartParser
from evalsite.api.schema import ERRORS, ErrorSerializer
from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.listening.access import listening_tests_visible
from evalsite.listening.models import LOUDNESS_TARGET_MAX_LUFS, LOUDNESS_TARGET_MIN_LUFS, ListeningTest
from evalsite.listening.selectors import listening_test_progress
from evalsite.listening.services.build import (
    listening_test_close,
    listening_test_create,
    listening_test_publish,
)
from evalsite.listening.services.design import (
    DEFAULT_LOUDNESS_TARGET_LUFS,
    DUPLICATE_CHECKPOINTS,
    DUPLICATE_ITEMS,
    INSTRUCTIONS_MAX_CHARS,
    ITEMS_AND_RANDOM,
    TOO_MANY_ITEMS,
    TOO_MANY_SYSTEMS,
    TestDesign,
)
from evalsite.listening.services.imports import (
    DEFAULT_CMOS_COMPARISON,
    ImportRejected,
    checkpoint_mapping_parse,
    listening_test_import,
)
from evalsite.runs.models import Checkpoint, EvalItem

TEST_NOT_FOUND = "Listening test {test_id} does not exist or is not yours."
CHECKPOINT_UNKNOWN = "run {run} has no checkpoint at step {step}."
ITEMS_UNKNOWN = "unknown item keys in the checkpoints' eval set: {keys}."
TEST_NAME_TAKEN = "a listening test named {name!r} already exists."


class CheckpointRefSerializer(serializers.Serializer):
    run = serializers.IntegerField(min_value=1)
    step = serializers.IntegerField(min_value=0)


class TestOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.CharField()
    invite_url = serializers.CharField(
        allow_blank=True,
        help_text="give this to listeners (append PROLIFIC_PID etc. for crowd studies); empty for an imported test",
    )
    page_url = serializers.CharField(help_text="the researcher's page of the test")
    warnings = serializers.ListField(child=serializers.CharField())
    design_warnings = serializers.ListField(
        child=serializers.DictField(),
        help_text="failed design checks, one per kind: {kind, message, items}; publishing needs confirm",
    )
    trials = serializers.IntegerField()
    votes_target = serializers.IntegerField()
    cells = serializers.IntegerField()
    cells_at_target = serializers.IntegerField()
    participants = serializers.IntegerField()
    loudness_target_lufs = serializers.FloatField(
        allow_null=True, help_text="the loudness asked for; null: the sounds are served as generated"
    )
    loudness_served_lufs = serializers.FloatField(
        allow_null=True,
        help_text="the loudness the sounds were aligned to (below the target where true peaks needed it)",
    )


def test_payload(request, test: ListeningTest) -> dict[str, Any]:
    """The test as ``TestOutputSerializer`` renders it: its state, links and voting progress."""
    progress = listening_test_progress(test)
    return {
        "id": test.pk,
        "name": test.name,
        "kind": test.kind,
        "status": test.status,
        # An imported test was taken elsewhere: there is nobody to invite.
        "invite_url": ""
        if test.is_external
        else request.build_absolute_uri(reverse("listening:invite", args=[test.invite_token])),
        "page_url": request.build_absolute_uri(reverse("listening-admin:detail", args=[test.pk])),
        "warnings": test.build_warnings,
        "design_warnings": test.design_warnings,
        "trials": progress["trials"],
        "votes_target": test.votes_target,
        "cells": progress["cells"],
        "cells_at_target": progress["cells_at_target"],
        "participants": len(progress["participants"]) + len(progress["abandoned"]),
        "loudness_target_lufs": test.loudness_target_lufs,
        "loudness_served_lufs": test.loudness_served_lufs,
    }


def test_for(user, test_id: int) -> ListeningTest:
    """The test, if every run whose checkpoints it rates is visible to the caller."""
    runs = runs_visible(user) if isinstance(user, RunPrincipal) else None
    test = listening_tests_visible(user, runs=runs).filter(pk=test_id).first()
    if test is None:
        raise NotFoundError(TEST_NOT_FOUND.format(test_id=test_id))
    return test


class ListeningTestCreateApi(APIView):
    @extend_schema_serializer(component_name="ListeningTestCreate")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        kind = serializers.ChoiceField(choices=ListeningTest.Kind.choices)
        checkpoints = CheckpointRefSerializer(many=True, help_text="the systems rated: [{run, step}, ...]")
        comparison = CheckpointRefSerializer(
            required=False,
            allow_null=True,
            default=None,
            help_text="CMOS: the baseline (empty: the reference recording)",
        )
        items = serializers.ListField(
            child=serializers.CharField(max_length=300),
            required=False,
            allow_null=True,
            default=None,
            help_text="eval item keys (default: every item); not with random_items",
        )
        random_items = serializers.IntegerField(
            min_value=1,
            max_value=100_000,
            required=False,
            allow_null=True,
            default=None,
            help_text="draw this many of the items with output from every checkpoint, by the test's seed "
            "(reproducible); not with items",
        )
        training_items = serializers.IntegerField(min_value=0, max_value=20, default=1)
        votes_target = serializers.IntegerField(min_value=1, max_value=10000, default=10)
        min_listeners = serializers.IntegerField(
            min_value=1,
            max_value=10_000,
            default=20,
            help_text="listeners wanted after post-screening (BS.1534-3: at least 20); the analysis warns below it",
        )
        trials_per_participant = serializers.IntegerField(
            min_value=1, max_value=10_000, required=False, allow_null=True, default=None
        )
        title = serializers.CharField(max_length=200, default="Listening test")
        instructions = serializers.CharField(
            max_length=INSTRUCTIONS_MAX_CHARS, default="", allow_blank=True, help_text="shown to listeners"
        )
        completion_code = serializers.CharField(max_length=100, default="", allow_blank=True)
        completion_redirect = serializers.URLField(max_length=500, default="", allow_blank=True)
        screened_out_redirect = serializers.URLField(max_length=500, default="", allow_blank=True)
        allow_no_preference = serializers.BooleanField(default=False)
        require_play_all = serializers.BooleanField(default=False)
        headphone_check = serializers.BooleanField(default=False)
        gold_items = serializers.IntegerField(min_value=0, max_value=50, default=0)
        trapping_items = serializers.IntegerField(min_value=0, max_value=50, default=0)
        loudness_target_lufs = serializers.FloatField(
            min_value=LOUDNESS_TARGET_MIN_LUFS,
            max_value=LOUDNESS_TARGET_MAX_LUFS,
            allow_null=True,
            default=DEFAULT_LOUDNESS_TARGET_LUFS,
            help_text="serve every sound at this BS.1770 loudness (LUFS); null: as generated (a loudness study)",
        )
        questionnaire = serializers.JSONField(
            required=False,
            allow_null=True,
            default=None,
            help_text='pre-test / post-test questions: {"pre": [...], "post": [...]}; each a standard id '
            "(age_band, gender, native_language, hearing_problems, listening_device, environment_noise, "
            'comments), {"id": ..., "required": false}, or your own {"id", "custom": true, "type": "text"|"choice", '
            '"label", "options", "required", "max_length"}; null: none',
        )
        publish = serializers.BooleanField(default=False, help_text="publish at once (listeners can start)")
        confirm = serializers.BooleanField(
            default=False, help_text="with publish: publish even when the build gives design warnings"
        )

        def to_internal_value(self, data):
            # An over-long list is refused before any of its entries is validated (20 000 entries took seconds).
            refs = data.get("checkpoints") if isinstance(data, dict) else None
            cap = settings.EVALSITE_LISTENING_MAX_SYSTEMS
            if isinstance(refs, list) and len(refs) > cap:
                message = TOO_MANY_SYSTEMS.format(limit=cap, n=len(refs))
                raise serializers.ValidationError({"checkpoints": [message]})
            return super().to_internal_value(data)

        def validate_checkpoints(self, refs: list[dict]) -> list[dict]:
            times = Counter((r["run"], r["step"]) for r in refs)
            repeated = sorted(f"run {run} step {step}" for (run, step), n in times.items() if n > 1)
            if repeated:
                raise serializers.ValidationError(
                    DUPLICATE_CHECKPOINTS.format(labels=", ".join(repeated[:10]))
                )
            return refs

        def validate_items(self, keys: list[str] | None) -> list[str] | None:
            if keys is None:
                return keys
            if len(keys) > settings.EVALSITE_LISTENING_MAX_ITEMS:
                raise serializers.ValidationError(
                    TOO_MANY_ITEMS.format(limit=settings.EVALSITE_LISTENING_MAX_ITEMS, n=len(keys))
                )
            times = Counter(keys)
            repeated = sorted(k for k, n in times.items() if n > 1)
            if repeated:
                raise serializers.ValidationError(DUPLICATE_ITEMS.format(keys=", ".join(repeated[:10])))
            return keys

        def validate(self, attrs: dict) -> dict:
            if attrs.get("items") is not None and attrs.get("random_items") is not None:
                raise serializers.ValidationError(
                    {"items": [ITEMS_AND_RANDOM], "random_items": [ITEMS_AND_RANDOM]}
                )
            return attrs

    @extend_schema(
        operation_id="listening_tests_create",
        request=InputSerializer,
        responses={201: TestOutputSerializer, 409: OpenApiResponse(ErrorSerializer), **ERRORS},
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        if not values["checkpoints"]:
            raise ApplicationError(
                "pick at least one checkpoint",
                extra={"fields": {"checkpoints": ["must list at least one {run, step}"]}},
            )
        if ListeningTest.objects.filter(name=values["name"]).exists():
            message = TEST_NAME_TAKEN.format(name=values["name"])
            raise ConflictError(message, fields=("name",))
        checkpoints = [
            _checkpoint(request.user, ref, f"checkpoints[{i}]")
            for i, ref in enumerate(values.pop("checkpoints"))
        ]
        comparison = values.pop("comparison")
        comparison = _checkpoint(request.user, comparison, "comparison") if comparison else None
        keys = values.pop("items")
        items = _items(checkpoints[0].run.eval_set_id, keys) if keys is not None else None
        publish, confirm = values.pop("publish"), values.pop("confirm")
        owner = checkpoints[0].run.owner if isinstance(request.user, RunPrincipal) else request.user
        design = TestDesign(checkpoints=checkpoints, comparison=comparison, items=items, **values)
        test = listening_test_create(design=design, owner=owner, publish=publish, confirm=confirm)
        return Response(
            TestOutputSerializer(test_payload(request, test)).data, status=status.HTTP_201_CREATED
        )


def _checkpoint(user, ref: dict, field: str) -> Checkpoint:
    """The checkpoint a ``{run, step}`` reference names, in a run the caller may use."""
    run = run_for(user, ref["run"])
    checkpoint = Checkpoint.objects.filter(run=run, step=ref["step"]).first()
    if checkpoint is None:
        raise ApplicationError(CHECKPOINT_UNKNOWN.format(run=run.name, step=ref["step"]), fields=(field,))
    return checkpoint


def _items(eval_set_id: int | None, keys: list[str]) -> list[EvalItem]:
    found = {i.key: i for i in EvalItem.objects.filter(eval_set_id=eval_set_id, key__in=keys)}
    missing = [k for k in keys if k not in found]
    if missing:
        raise ApplicationError(ITEMS_UNKNOWN.format(keys=", ".join(missing[:10])), fields=("items",))
    return [found[k] for k in keys]


class ListeningTestImportApi(APIView):
    """Import the ratings of a test run on another platform (multipart: the CSV file and the fields below)."""

    parser_classes = [ImportMultiPartParser]

    @extend_schema_serializer(component_name="ListeningTestImport")
    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(
            help_text="long CSV (listener,item,system,score[,role][,trial]) or webMUSHRA's mushra.csv"
        )
        name = serializers.CharField(max_length=200)
        kind = serializers.ChoiceField(choices=ListeningTest.Kind.choices)
        format = serializers.ChoiceField(
            choices=[ListeningTest.Origin.LONG_CSV, ListeningTest.Origin.WEBMUSHRA],
            default=ListeningTest.Origin.LONG_CSV,
        )
        checkpoints = serializers.CharField(
            max_length=20_000,
            required=False,
            default="",
            allow_blank=True,
            help_text="lines 'system = run@step' linking systems to checkpoints of runs you can see",
        )
        eval_set = serializers.CharField(
            max_length=200,
            required=False,
            default="",
            allow_blank=True,
            help_text="link items to this eval set",
        )
        comparison = serializers.CharField(
            max_length=300, default=DEFAULT_CMOS_COMPARISON, help_text="CMOS: the comparison system's name"
        )

    @extend_schema(
        operation_id="listening_tests_import",
        request={"multipart/form-data": InputSerializer},
        responses={201: TestOutputSerializer, **ERRORS},
    )
    def post(self, request):
        require_researcher(request.user, "import listening tests")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        mapping, problems = checkpoint_mapping_parse(values["checkpoints"])
        if problems:
            raise ImportRejected(file="checkpoints", problems=problems)
        upload = values["file"]
        test = listening_test_import(
            owner=request.user,
            name=values["name"],
            kind=values["kind"],
            fmt=values["format"],
            # Never more than one byte over the limit in memory: the service refuses the rest by size.
            data=upload.read(settings.EVALSITE_IMPORT_MAX_BYTES + 1),
            size=upload.size,
            file_name=upload.name or "upload.csv",
            checkpoints=mapping,
            eval_set=values["eval_set"],
            comparison=values["comparison"],
        )
        return Response(
            TestOutputSerializer(test_payload(request, test)).data, status=status.HTTP_201_CREATED
        )


class ListeningTestDetailApi(APIView):
    @extend_schema(operation_id="listening_tests_retrieve", responses={200: TestOutputSerializer, **ERRORS})
    def get(self, request, test_id: int):
        return Response(TestOutputSerializer(test_payload(request, test_for(request.user, test_id))).data)


class ListeningTestTransitionApi(APIView):
    action = ""

    def post(self, request, test_id: int, **kwargs):
        test = test_for(request.user, test_id)
        try:
            with transaction.atomic():
                transition = listening_test_publish if self.action == "publish" else listening_test_close
                test = transition(test=test, **kwargs)
        except ApplicationError as exc:
            if type(exc) is ApplicationError:  # e.g. nothing to publish: the test's state, not the request
                raise ConflictError(exc.message, extra=exc.extra) from None
            raise
        return Response(TestOutputSerializer(test_payload(request, test)).data)


class ListeningTestPublishApi(ListeningTestTransitionApi):
    action = "publish"

    @extend_schema_serializer(component_name="ListeningTestPublish")
    class InputSerializer(serializers.Serializer):
        confirm = serializers.BooleanField(
            default=False, help_text="publish even though the test has design warnings (design_warnings)"
        )

    @extend_schema(
        operation_id="listening_tests_publish",
        request=InputSerializer,
        responses={200: TestOutputSerializer, 409: OpenApiResponse(ErrorSerializer), **ERRORS},
    )
    def post(self, request, test_id: int):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return super().post(request, test_id, confirm=data.validated_data["confirm"])


class ListeningTestCloseApi(ListeningTestTransitionApi):
    action = "close"

    @extend_schema(
        operation_id="listening_tests_close",
        request=None,
        responses={200: TestOutputSerializer, 409: OpenApiResponse(ErrorSerializer), **ERRORS},
    )
    def post(self, request, test_id: int):
        return super().post(request, test_id)


class ListeningTestResultsApi(APIView):
    @extend_schema_serializer(component_name="ListeningTestResults")
    class OutputSerializer(serializers.Serializer):
        """The top level of ``evalsite.analysis.snapshots.listening_test_results``; undefined numbers are null."""

        version = serializers.IntegerField(help_text="shape version of this object")
        computed_at = serializers.DateTimeField()
        fingerprint = serializers.CharField(
            help_text="hash of the answers, statuses and metrics it was computed from"
        )
        cache_hit = serializers.BooleanField(
            help_text="read from the cache: nothing changed since it was computed"
        )
        n_boot = serializers.IntegerField(help_text="bootstrap resamples behind every bootstrap interval")
        bootstrap_seed = serializers.IntegerField()
        alpha = serializers.FloatField(help_text="significance level of the tests")
        test = serializers.JSONField(
            help_text="id, name, kind, status, seed and the quality-control settings"
        )
        design = serializers.JSONField(
            help_text="conditions (label, role, checkpoint run/step), scale, trials, items, "
            "stimuli per trial, trials per listener, durations"
        )
        participants = serializers.JSONField(
            help_text="statuses, recruitment (crowd / invite), headphone check, QC"
        )
        counts = serializers.JSONField(
            help_text="participants, listeners, ratings and flags, kept and excluded"
        )
        screening = serializers.JSONField(
            help_text="rules used, and every excluded listener (opaque id) with the "
            "rules and reasons, headphone-check screen-outs included"
        )
        screening_statement = serializers.CharField(
            help_text="the screening behind 'kept', as every page states it: "
            "'screened: k of n listeners excluded; completed trials only'"
        )
        scores = serializers.JSONField(
            allow_null=True,
            help_text="MOS/SMOS/MUSHRA/CMOS per condition: n, mean, t and "
            "bootstrap 95% CIs, box statistics; 'kept' and 'all'. A kept row of a rated system has "
            "'mark': 'best' (its t interval overlaps no other system's), 'tied', 'top' or null",
        )
        preference = serializers.JSONField(
            allow_null=True, help_text="AB: preference rate, Wilson CI, sign test"
        )
        pairwise = serializers.JSONField(
            allow_null=True, help_text="Wilcoxon signed-rank per pair, Holm; p matrix"
        )
        mixed_model = serializers.JSONField(
            allow_null=True, help_text="score ~ system + (1|listener) + (1|item)"
        )
        reliability = serializers.JSONField(
            help_text="ratings: Krippendorff alpha, ICC; flags: raw agreement, "
            "Fleiss kappa, Gwet AC1, category alpha"
        )
        flags = serializers.JSONField(
            help_text="flag shares per condition and stimulus vs the false-flag rate, regions, timelines"
        )
        correlations = serializers.JSONField(
            help_text="human vs metric Pearson/Spearman/Kendall with n, system and item level"
        )
        software = serializers.JSONField(help_text="versions of evalsite and the statistics packages")
        timings = serializers.JSONField(help_text="wall seconds per computation stage")
        cpu_timings = serializers.JSONField(help_text="CPU seconds per computation stage")
        notes = serializers.ListField(child=serializers.CharField())
        failed = serializers.DictField(
            child=serializers.CharField(),
            help_text="statistics that raised on these answers (degenerate data): name → the stated reason; "
            "the exception itself is in the server log",
        )

    @extend_schema(
        operation_id="listening_tests_results",
        responses={200: OutputSerializer, **ERRORS},
        description="Scores with t and bootstrap CIs, screening with reasons, pairwise tests, mixed model, "
        "reliability, artifact flags and human-metric correlations of one test. Cached until an "
        "answer, a listener's status or a metric changes.",
    )
    def get(self, request, test_id: int):
        # The statistics stack (pandas, statsmodels) loads with the first results asked for, not with the API.
        from evalsite.analysis.snapshots import listening_test_results

        return Response(listening_test_results(test_for(request.user, test_id)))
