"""Shared pieces of the researcher dashboards."""

import functools

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET


@functools.cache
def _plotly_js() -> bytes:
    # Lazy: plotly is large and the web tier needs it only to serve this file once per process.
    import plotly.offline

    return plotly.offline.get_plotlyjs().encode()


@require_GET
@cache_control(max_age=86400, public=True)
def plotly_js(request: HttpRequest) -> HttpResponse:
    """plotly.js from the installed plotly package: the dashboards work offline, with no CDN."""
    return HttpResponse(_plotly_js(), content_type="text/javascript")
