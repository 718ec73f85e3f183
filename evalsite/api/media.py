"""Stored audio for researchers and training jobs: every file is served after an access check.

It lives in the API layer because a caller may present an API token, which only this layer reads.

Researcher pages, the analysis page's flag timelines and alert evidence link to ``/media/<path>``.
Files are named by content hash (unguessable), but a name leaks through logs, shared links and
browser histories, so a name alone opens nothing: the caller must be a signed-in researcher or carry a
run's or researcher's API token, and be allowed to see the audio
(``evalsite.listening.access.asset_visible``). Anything else, including a file that does not exist, is
the same 404. Listeners never come here: their sounds are
served by ``listening.views`` under per-participant URLs.

With ``EVALSITE_MEDIA_ACCEL_REDIRECT`` set (e.g. ``/protected-media/``), the bytes are left to the web
server (nginx ``X-Accel-Redirect`` to an ``internal`` location over MEDIA_ROOT) once the check passed.
"""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe
from rest_framework import exceptions

from evalsite.api.authentication import BearerTokenAuthentication
from evalsite.audio.models import AudioAsset
from evalsite.listening.access import asset_visible


def _caller(request: HttpRequest):
    """The signed-in researcher, else the principal of a valid Bearer token, else None."""
    if request.user.is_authenticated:
        return request.user
    try:
        found = BearerTokenAuthentication().authenticate(request)
    except exceptions.APIException:  # a wrong or throttled token opens nothing, like no token
        return None
    return found[0] if found else None


@require_safe
@cache_control(private=True, max_age=3600)
def media_file(request: HttpRequest, path: str) -> HttpResponse:
    caller = _caller(request)
    asset = AudioAsset.objects.filter(file=path).first() if caller is not None else None
    if asset is None or not asset_visible(caller, asset):
        raise Http404("no such audio file")
    if accel := settings.EVALSITE_MEDIA_ACCEL_REDIRECT:
        response = HttpResponse(content_type="audio/wav")
        response["X-Accel-Redirect"] = accel.rstrip("/") + "/" + asset.file.name
        return response
    try:
        return FileResponse(asset.file.open("rb"), content_type="audio/wav")
    except FileNotFoundError:
        raise Http404("no such audio file") from None
