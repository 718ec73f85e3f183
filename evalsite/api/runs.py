"""Runs and checkpoints: what researchers and training jobs register and read.

Each view validates with its InputSerializer, calls one service (``evalsite.api.services``) or selector,
and answers with its OutputSerializer.
"""

from __future__ import annotations

from django.db.models import Count
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from evalsite.alerts.webhooks import webhook_url_validator
from evalsite.api.access import require_researcher, run_for, runs_visible
from evalsite.api.fields import JSONObjectField
from evalsite.api.schema import ERRORS, ErrorSerializer
from evalsite.api.services import CHECKPOINT_NOT_FOUND, checkpoint_evaluate_step, run_register, run_update
from evalsite.core.exceptions import NotFoundError
from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, EvalSet, Run
from evalsite.runs.services import checkpoint_register


class RunOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    model_family = serializers.CharField()
    eval_set = serializers.CharField(source="eval_set.name", allow_null=True)
    config = serializers.DictField()
    checkpoint_dir = serializers.CharField()
    checkpoint_pattern = serializers.CharField()
    webhook_url = serializers.CharField()
    checkpoints = serializers.IntegerField(source="checkpoints.count")
    alert_cursor = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class RunListApi(APIView):
    @extend_schema_serializer(component_name="RunCreate")
    class InputSerializer(serializers.Serializer):
        name = serializers.RegexField(
            r"^[\w.@+-][\w .@+:/-]*$",
            max_length=200,
            error_messages={"invalid": "use letters, digits, spaces and . @ + - _ : /"},
        )
        kind = serializers.ChoiceField(choices=Run.Kind.choices)
        model_family = serializers.CharField(
            max_length=200,
            help_text="auto (the checkpoint names a registered family), a built-in "
            "family, an installed plug-in, or a dotted path listed in "
            "EVALSITE_MODEL_PLUGINS",
        )
        eval_set = serializers.CharField(max_length=200, required=False, allow_blank=True)
        config = JSONObjectField(required=False, default=dict)
        checkpoint_dir = serializers.CharField(max_length=1024, required=False, allow_blank=True, default="")
        checkpoint_pattern = serializers.CharField(
            max_length=300, required=False, allow_blank=True, default=""
        )
        webhook_url = serializers.URLField(
            max_length=500, required=False, allow_blank=True, default="", validators=[webhook_url_validator]
        )

    class CreatedSerializer(RunOutputSerializer):
        token = serializers.CharField(help_text="the run's API token; shown only in this response")
        webhook_secret = serializers.CharField(
            required=False, help_text="HMAC key of the webhook; shown once"
        )

    @extend_schema(
        operation_id="runs_list",
        responses={200: inline_serializer("RunList", {"results": RunOutputSerializer(many=True)}), **ERRORS},
    )
    def get(self, request):
        runs = runs_visible(request.user).select_related("eval_set").order_by("name")
        return Response({"results": RunOutputSerializer(runs, many=True).data})

    @extend_schema(
        operation_id="runs_create",
        request=InputSerializer,
        responses={201: CreatedSerializer, 409: OpenApiResponse(ErrorSerializer), **ERRORS},
    )
    def post(self, request):
        require_researcher(request.user, "creating a run")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        registered = run_register(owner=request.user, **data.validated_data)
        payload = {**RunOutputSerializer(registered.run).data, "token": registered.token}
        if registered.webhook_secret:
            payload["webhook_secret"] = registered.webhook_secret
        return Response(payload, status=status.HTTP_201_CREATED)


class RunUpdatedSerializer(RunOutputSerializer):
    webhook_secret = serializers.CharField(
        required=False, help_text="the new HMAC key when webhook_url changed; shown once"
    )


class RunDetailApi(APIView):
    @extend_schema_serializer(component_name="RunUpdate")
    class UpdateSerializer(serializers.Serializer):
        model_family = serializers.CharField(
            max_length=200,
            required=False,
            help_text="auto, a built-in family, an installed plug-in, or a "
            "dotted path listed in EVALSITE_MODEL_PLUGINS",
        )
        config = JSONObjectField(required=False)
        checkpoint_dir = serializers.CharField(max_length=1024, required=False, allow_blank=True)
        checkpoint_pattern = serializers.CharField(max_length=300, required=False, allow_blank=True)
        webhook_url = serializers.URLField(
            max_length=500, required=False, allow_blank=True, validators=[webhook_url_validator]
        )

    @extend_schema(operation_id="runs_retrieve", responses={200: RunOutputSerializer, **ERRORS})
    def get(self, request, run_id: int):
        return Response(RunOutputSerializer(run_for(request.user, run_id)).data)

    @extend_schema(
        operation_id="runs_update", request=UpdateSerializer, responses={200: RunUpdatedSerializer, **ERRORS}
    )
    def patch(self, request, run_id: int):
        run = run_for(request.user, run_id)
        data = self.UpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        new_secret = run_update(run=run, **data.validated_data)
        payload = RunUpdatedSerializer(run).data
        if new_secret:
            payload["webhook_secret"] = new_secret
        return Response(payload)


# ---------------------------------------------------------------------------------------------
# Checkpoints


class JobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    status = serializers.CharField()
    progress = serializers.FloatField()
    error = serializers.CharField()


class CheckpointOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    step = serializers.IntegerField()
    uri = serializers.CharField()
    sha256 = serializers.CharField()
    status = serializers.ChoiceField(choices=Checkpoint.Status.choices)
    error = serializers.CharField(help_text="why the pipeline failed, if it did")
    jobs = JobSerializer(many=True)
    metrics = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="metric name -> value; a metric the run has under several generation settings or specs gets one "
        "name per setting, as the run page's columns (e.g. 'fad (params 1 of 2 (cfg_scale=1.0))'), never one "
        "value standing for another",
    )
    metric_results = serializers.ListField(
        child=serializers.DictField(),
        help_text="every metric result with its provenance: name, key (its name in 'metrics'), value, ci_low, "
        "ci_high, n, status, spec_key, params_hash and generation_params (the sampling settings of the outputs "
        "it was computed on)",
    )
    detector_events = serializers.DictField(child=serializers.IntegerField())
    created_at = serializers.DateTimeField()

    def to_representation(self, checkpoint: Checkpoint) -> dict:
        # Jobs, metrics and events are read from what the list view prefetched (one query each, not per row).
        jobs = sorted(checkpoint.jobs.all(), key=lambda j: j.created_at)
        failed = [j for j in jobs if j.status == Job.Status.FAILED]
        events: dict[str, int] = {}
        for event in checkpoint.detector_events.all():
            events[event.detector] = events.get(event.detector, 0) + 1
        return super().to_representation(
            {
                "id": checkpoint.pk,
                "step": checkpoint.step,
                "uri": checkpoint.uri,
                "sha256": checkpoint.sha256,
                "status": checkpoint.status,
                "error": failed[-1].error if checkpoint.status == "failed" and failed else "",
                "jobs": jobs,
                **self._metrics(checkpoint),
                "detector_events": events,
                "created_at": checkpoint.created_at,
            }
        )

    def _metrics(self, checkpoint: Checkpoint) -> dict:
        """``metrics`` and ``metric_results``, named as the run page names them (``run_metric_keys`` in the
        context; without it each value keeps its bare name)."""
        provenance = self.context.get("metric_keys") or {"keys": {}, "settings": {}}
        metrics: dict[str, float | None] = {}
        results = []
        for m in sorted(checkpoint.metric_results.all(), key=lambda m: (m.name, m.params_hash)):
            key = provenance["keys"].get((m.name, m.spec_key, m.params_hash), m.name)
            if metrics.get(key) is None:
                metrics[key] = m.value
            results.append(
                {
                    "name": m.name,
                    "key": key,
                    "value": m.value,
                    "ci_low": m.ci_low,
                    "ci_high": m.ci_high,
                    "n": m.n,
                    "status": m.status,
                    "spec_key": m.spec_key,
                    "params_hash": m.params_hash,
                    "generation_params": provenance["settings"].get(m.params_hash, {}),
                }
            )
        return {"metrics": metrics, "metric_results": results}


def _metric_keys(run: Run) -> dict:
    # Lazy: the run selectors load pandas, which the API's other endpoints do not need.
    from evalsite.analysis.run_selectors import run_metric_keys

    return run_metric_keys(run=run)


def _checkpoints(run: Run):
    return (
        Checkpoint.objects.filter(run=run)
        .order_by("step")
        .prefetch_related("jobs", "metric_results", "detector_events")
    )


class CheckpointListApi(APIView):
    @extend_schema_serializer(component_name="CheckpointRegister")
    class InputSerializer(serializers.Serializer):
        step = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
        uri = serializers.CharField(max_length=2048, help_text="local path (as the workers see it) or URI")
        sha256 = serializers.RegexField(
            r"^[0-9a-fA-F]{64}$",
            required=False,
            allow_blank=True,
            default="",
            error_messages={"invalid": "must be 64 hexadecimal characters"},
        )

    @extend_schema(
        operation_id="checkpoints_list",
        responses={
            200: inline_serializer("CheckpointList", {"results": CheckpointOutputSerializer(many=True)}),
            **ERRORS,
        },
    )
    def get(self, request, run_id: int):
        run = run_for(request.user, run_id)
        context = {"metric_keys": _metric_keys(run)}
        return Response(
            {"results": CheckpointOutputSerializer(_checkpoints(run), many=True, context=context).data}
        )

    @extend_schema(
        operation_id="checkpoints_register",
        request=InputSerializer,
        responses={
            201: CheckpointOutputSerializer,
            200: OpenApiResponse(
                CheckpointOutputSerializer, description="this step was already registered with this file"
            ),
            409: OpenApiResponse(ErrorSerializer, description="step taken by another file"),
            **ERRORS,
        },
    )
    def post(self, request, run_id: int):
        run = run_for(request.user, run_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        checkpoint, created = checkpoint_register(run=run, **data.validated_data)
        return Response(
            CheckpointOutputSerializer(
                _checkpoints(run).get(pk=checkpoint.pk), context={"metric_keys": _metric_keys(run)}
            ).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


def _checkpoint(run: Run, step: int) -> Checkpoint:
    checkpoint = _checkpoints(run).filter(step=step).first()
    if checkpoint is None:
        raise NotFoundError(CHECKPOINT_NOT_FOUND.format(run=run.name, step=step))
    return checkpoint


class CheckpointDetailApi(APIView):
    @extend_schema(operation_id="checkpoints_retrieve", responses={200: CheckpointOutputSerializer, **ERRORS})
    def get(self, request, run_id: int, step: int):
        run = run_for(request.user, run_id)
        return Response(
            CheckpointOutputSerializer(
                _checkpoint(run, step), context={"metric_keys": _metric_keys(run)}
            ).data
        )


class CheckpointEvaluateApi(APIView):
    @extend_schema_serializer(component_name="CheckpointEvaluate")
    class InputSerializer(serializers.Serializer):
        params = JSONObjectField(
            required=False, default=dict, help_text="generation params (seed, batch_size, dtype, resample, …)"
        )

    @extend_schema(
        operation_id="checkpoints_evaluate",
        request=InputSerializer,
        responses={
            202: inline_serializer("EvaluationQueued", {"jobs": JobSerializer(many=True)}),
            409: OpenApiResponse(ErrorSerializer, description="an evaluation is running"),
            **ERRORS,
        },
    )
    def post(self, request, run_id: int, step: int):
        run = run_for(request.user, run_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = checkpoint_evaluate_step(run=run, step=step, params=data.validated_data["params"])
        return Response({"jobs": JobSerializer([job], many=True).data}, status=status.HTTP_202_ACCEPTED)


class EvalSetSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    items = serializers.IntegerField(source="n_items")


class EvalSetListApi(APIView):
    @extend_schema(
        operation_id="eval_sets_list",
        responses={
            200: inline_serializer("EvalSetList", {"results": EvalSetSerializer(many=True)}),
            **ERRORS,
        },
    )
    def get(self, request):
        require_researcher(request.user, "listing eval sets")
        rows = EvalSet.objects.annotate(n_items=Count("items")).order_by("name")
        return Response({"results": EvalSetSerializer(rows, many=True).data})
