"""The error envelope every API endpoint answers with, as the OpenAPI schema documents it."""

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


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
