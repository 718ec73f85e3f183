"""The site's URLs plus the two old ways files were sent: /analysis/plotly.js and /static/ by Django's view."""

import functools

from django.contrib.staticfiles.views import serve
from django.http import HttpResponse
from django.urls import include, path, re_path
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET


@functools.cache
def _plotly_js() -> bytes:
    import plotly.offline

    return plotly.offline.get_plotlyjs().encode()


@require_GET
@cache_control(max_age=86400, public=True)
def plotly_js(request):
    return HttpResponse(_plotly_js(), content_type="text/javascript")


urlpatterns = [
    path("analysis/plotly.js", plotly_js),
    # runserver's static handler (DEBUG on) served the finders' files this way; insecure: DEBUG is off here.
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
    path("", include("evalsite.urls")),
]
