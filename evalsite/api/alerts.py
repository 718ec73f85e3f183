"""Alerts for training jobs: polled since a cursor (cheap with ETag / 304) and the run's rules."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from evalsite.alerts.models import Alert
from evalsite.alerts.services import alert_payload, alert_rules_ensure_defaults, alert_rules_set
from evalsite.api.access import run_for
from evalsite.api.fields import JSONObjectField
from evalsite.api.schema import ERRORS

MAX_LIMIT = 500


def alerts_etag(run_id: int, after: int, limit: int, alert_cursor: int) -> str:
    """Changes exactly when the answer to (after, limit) can: when the run's newest cursor moves."""
    return f'"a{run_id}.{after}.{limit}.{alert_cursor}"'


class AlertSerializer(serializers.Serializer):
    cursor = serializers.IntegerField()
    id = serializers.IntegerField()
    rule = serializers.CharField()
    severity = serializers.ChoiceField(choices=["info", "warning", "critical"])
    run = serializers.IntegerField()
    checkpoint_step = serializers.IntegerField(allow_null=True)
    title = serializers.CharField()
    evidence = serializers.DictField()
    links = serializers.ListField(child=serializers.DictField())
    created_at = serializers.DateTimeField()


class AlertListApi(APIView):
    @extend_schema_serializer(component_name="AlertQuery")
    class QuerySerializer(serializers.Serializer):
        after = serializers.IntegerField(
            min_value=0, required=False, default=0, help_text="return alerts with a cursor greater than this"
        )
        limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, required=False, default=100)

    @extend_schema(
        operation_id="alerts_list",
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="cursor of the last alert seen"),
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"1–{MAX_LIMIT}, default 100"),
            OpenApiParameter(
                "If-None-Match",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="the ETag of the previous answer to the same query",
            ),
        ],
        responses={
            200: inline_serializer(
                "AlertList", {"results": AlertSerializer(many=True), "cursor": serializers.IntegerField()}
            ),
            304: OpenApiResponse(description="nothing new since the ETag sent"),
            **ERRORS,
        },
    )
    def get(self, request, run_id: int):
        run = run_for(request.user, run_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after, limit = query.validated_data["after"], query.validated_data["limit"]
        # The run row carries the newest cursor, so an unchanged poll costs no query beyond the token lookup.
        etag = alerts_etag(run.pk, after, limit, run.alert_cursor)
        if etag in request.headers.get("If-None-Match", ""):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        # Alerts are shown as alert_payload makes them, the same JSON the run's webhook receives.
        alerts = []
        if run.alert_cursor > after:
            alerts = [
                alert_payload(a)
                for a in Alert.objects.filter(run_id=run.pk, cursor__gt=after)
                .select_related("checkpoint")
                .order_by("cursor")[:limit]
            ]
        cursor = alerts[-1]["cursor"] if alerts else after
        return Response(
            {"results": alerts, "cursor": cursor}, headers={"ETag": etag, "Cache-Control": "no-cache"}
        )


class RuleSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["metric_regression", "detector_rate", "detector_any", "listener_flags", "score_drop"]
    )
    params = JSONObjectField(required=False, default=dict)
    severity = serializers.ChoiceField(
        choices=["info", "warning", "critical"], required=False, default="warning"
    )
    enabled = serializers.BooleanField(required=False, default=True)


class AlertRulesApi(APIView):
    @extend_schema_serializer(component_name="AlertRulesReplace")
    class InputSerializer(serializers.Serializer):
        rules = RuleSerializer(many=True)

    @extend_schema(
        operation_id="alert_rules_list",
        responses={200: inline_serializer("AlertRules", {"rules": RuleSerializer(many=True)}), **ERRORS},
    )
    def get(self, request, run_id: int):
        rules = alert_rules_ensure_defaults(run=run_for(request.user, run_id))
        return Response({"rules": RuleSerializer(rules, many=True).data})

    @extend_schema(
        operation_id="alert_rules_replace",
        request=InputSerializer,
        responses={200: inline_serializer("AlertRulesSet", {"rules": RuleSerializer(many=True)}), **ERRORS},
    )
    def put(self, request, run_id: int):
        run = run_for(request.user, run_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rules = alert_rules_set(run=run, rules=data.validated_data["rules"])
        return Response({"rules": RuleSerializer(rules, many=True).data})
