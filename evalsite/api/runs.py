"""Runs and checkpoints: what researchers and training jobs register and read."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from evalsite.alerts.webhooks import webhook_url_validator
from evalsite.api.access import require_researcher, run_for, runs_visible
from evalsite.api.fields import JSONObjectField
from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.runs.models import Checkpoint, EvalSet, Job, Run

RUN_NAME_TAKEN = "a run named {name!r} already exists."
EVAL_SET_UNKNOWN = (
    "no eval set named {name!r}; import it first (manage.py import_evalset) or pick one of: {known}."
)
CHECKPOINT_NOT_FOUND = "run {run!r} has no checkpoint at step {step}."
EVALUATION_BUSY = (
    "step {step} of run {run!r} is being evaluated now (job {job_id} is {status}); try again when it ends."
)


class ErrorSerializer(serializers.Serializer):
    message = serializers.CharField()
    extra = serializers.DictField(help_text='field errors under "fields": {"field": ["why"]}')


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="invalid input; extra.fields says which field and why"),
    401: OpenApiResponse(ErrorSerializer, description="no or invalid token"),
    403: OpenApiResponse(ErrorSerializer, description="this token may not do this"),
    404: OpenApiResponse(ErrorSerializer, description="not found, or not yours"),
    413: OpenApiResponse(ErrorSerializer, description="request body too large (EVALSITE_API_MAX_BODY_BYTES)"),
    429: OpenApiResponse(
        ErrorSerializer, description="rate limit reached; retry after the Retry-After header's seconds"
    ),
}


class RunOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    model_family = serializers.CharField()
    eval_set = serializers.CharField(allow_null=True)
    config = serializers.DictField()
    checkpoint_dir = serializers.CharField()
    checkpoint_pattern = serializers.CharField()
    webhook_url = serializers.CharField()
    checkpoints = serializers.IntegerField()
    alert_cursor = serializers.IntegerField()
    created_at = serializers.DateTimeField()


def run_payload(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "name": run.name,
        "kind": run.kind,
        "model_family": run.model_family,
        "eval_set": run.eval_set.name if run.eval_set_id else None,
        "config": run.config,
        "checkpoint_dir": run.checkpoint_dir,
        "checkpoint_pattern": run.checkpoint_pattern,
        "webhook_url": run.webhook_url,
        "checkpoints": run.checkpoints.count(),
        "alert_cursor": run.alert_cursor,
        "created_at": run.created_at,
    }


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
        return Response({"results": [run_payload(r) for r in runs]})

    @extend_schema(
        operation_id="runs_create",
        request=InputSerializer,
        responses={201: CreatedSerializer, 409: OpenApiResponse(ErrorSerializer), **ERRORS},
    )
    def post(self, request):
        from evalsite.alerts.services import alert_rules_ensure_defaults, webhook_secret_new
        from evalsite.runs.services import run_create

        require_researcher(request.user, "creating a run")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        eval_set = None
        if values.get("eval_set"):
            eval_set = EvalSet.objects.filter(name=values["eval_set"]).first()
            if eval_set is None:
                known = (
                    ", ".join(EvalSet.objects.order_by("name").values_list("name", flat=True)[:20])
                    or "none yet"
                )
                message = EVAL_SET_UNKNOWN.format(name=values["eval_set"], known=known)
                raise ApplicationError(message, extra={"fields": {"eval_set": [message]}})
        if Run.objects.filter(name=values["name"]).exists():
            message = RUN_NAME_TAKEN.format(name=values["name"])
            raise ConflictError(message, extra={"fields": {"name": [message]}})
        with transaction.atomic():
            run, token = run_create(
                name=values["name"],
                kind=values["kind"],
                model_family=values["model_family"],
                eval_set=eval_set,
                config=values["config"],
                checkpoint_dir=values["checkpoint_dir"],
                checkpoint_pattern=values["checkpoint_pattern"],
                owner=request.user,
            )
            payload = run_payload(run) | {"token": token}
            if values["webhook_url"]:
                run.webhook_url, run.webhook_secret = values["webhook_url"], webhook_secret_new()
                run.save(update_fields=["webhook_url", "webhook_secret", "updated_at"])
                payload |= {"webhook_url": run.webhook_url, "webhook_secret": run.webhook_secret}
            alert_rules_ensure_defaults(run=run)
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
        return Response(run_payload(run_for(request.user, run_id)))

    @extend_schema(
        operation_id="runs_update", request=UpdateSerializer, responses={200: RunUpdatedSerializer, **ERRORS}
    )
    def patch(self, request, run_id: int):
        from evalsite.alerts.services import webhook_secret_new

        run = run_for(request.user, run_id)
        data = self.UpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        for name in ("model_family", "config", "checkpoint_dir", "checkpoint_pattern"):
            if name in values:
                setattr(run, name, values[name])
        new_secret = None
        if "webhook_url" in values and values["webhook_url"] != run.webhook_url:
            run.webhook_url = values["webhook_url"]
            run.webhook_secret = new_secret = webhook_secret_new() if run.webhook_url else ""
        run.full_clean()
        run.save(
            update_fields=[
                "model_family",
                "config",
                "checkpoint_dir",
                "checkpoint_pattern",
                "webhook_url",
                "webhook_secret",
                "updated_at",
            ]
        )
        payload = run_payload(run)
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
    metrics = serializers.DictField(child=serializers.FloatField(allow_null=True))
    detector_events = serializers.DictField(child=serializers.IntegerField())
    created_at = serializers.DateTimeField()


def checkpoint_payload(checkpoint: Checkpoint) -> dict[str, Any]:
    jobs = sorted(checkpoint.jobs.all(), key=lambda j: j.created_at)
    failed = [j for j in jobs if j.status == Job.Status.FAILED]
    events: dict[str, int] = {}
    for event in checkpoint.detector_events.all():
        events[event.detector] = events.get(event.detector, 0) + 1
    return {
        "id": checkpoint.pk,
        "step": checkpoint.step,
        "uri": checkpoint.uri,
        "sha256": checkpoint.sha256,
        "status": checkpoint.status,
        "error": failed[-1].error if checkpoint.status == "failed" and failed else "",
        "jobs": [
            {"id": j.pk, "kind": j.kind, "status": j.status, "progress": j.progress, "error": j.error}
            for j in jobs
        ],
        "metrics": {m.name: m.value for m in checkpoint.metric_results.all()},
        "detector_events": events,
        "created_at": checkpoint.created_at,
    }


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
        return Response({"results": [checkpoint_payload(c) for c in _checkpoints(run)]})

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
        from evalsite.runs.services import checkpoint_register

        run = run_for(request.user, run_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        checkpoint, created = checkpoint_register(
            run=run, step=values["step"], uri=values["uri"], sha256=values["sha256"]
        )
        checkpoint = _checkpoints(run).get(pk=checkpoint.pk)
        return Response(
            checkpoint_payload(checkpoint), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


def _checkpoint(run: Run, step: int) -> Checkpoint:
    checkpoint = _checkpoints(run).filter(step=step).first()
    if checkpoint is None:
        raise NotFoundError(CHECKPOINT_NOT_FOUND.format(run=run.name, step=step))
    return checkpoint


class CheckpointDetailApi(APIView):
    @extend_schema(operation_id="checkpoints_retrieve", responses={200: CheckpointOutputSerializer, **ERRORS})
    def get(self, request, run_id: int, step: int):
        return Response(checkpoint_payload(_checkpoint(run_for(request.user, run_id), step)))


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
        from evalsite.runs.services import checkpoint_evaluate, generation_params

        run = run_for(request.user, run_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data["params"]
        generation_params(params)  # an ApplicationError naming params.<key>
        if run.eval_set_id is None:
            from evalsite.runs.services import RUN_HAS_NO_EVAL_SET

            message = RUN_HAS_NO_EVAL_SET.format(run=run.name)
            raise ApplicationError(message, extra={"fields": {"run_id": [message]}})
        with transaction.atomic():
            checkpoint = Checkpoint.objects.select_for_update().filter(run=run, step=step).first()
            if checkpoint is None:
                raise NotFoundError(CHECKPOINT_NOT_FOUND.format(run=run.name, step=step))
            busy = checkpoint.jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).first()
            if busy is not None:
                raise ConflictError(
                    EVALUATION_BUSY.format(step=step, run=run.name, job_id=busy.pk, status=busy.status)
                )
            job = checkpoint_evaluate(checkpoint=checkpoint, params=params)
        return Response(
            {
                "jobs": [
                    {
                        "id": job.pk,
                        "kind": job.kind,
                        "status": job.status,
                        "progress": job.progress,
                        "error": job.error,
                    }
                ]
            },
            status=status.HTTP_202_ACCEPTED,
        )


class EvalSetListApi(APIView):
    @extend_schema(
        operation_id="eval_sets_list",
        responses={
            200: inline_serializer(
                "EvalSetList",
                {
                    "results": inline_serializer(
                        "EvalSet",
                        {
                            "id": serializers.IntegerField(),
                            "name": serializers.CharField(),
                            "items": serializers.IntegerField(),
                        },
                        many=True,
                    )
                },
            ),
            **ERRORS,
        },
    )
    def get(self, request):
        from django.db.models import Count

        require_researcher(request.user, "listing eval sets")
        rows = EvalSet.objects.annotate(n=Count("items")).order_by("name")
        return Response({"results": [{"id": e.pk, "name": e.name, "items": e.n} for e in rows]})
