from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.templatetags.static import static
from django.views import csrf
from django.views.decorators.http import require_safe
from django.views.generic import RedirectView

from evalsite.core.ratelimit import wants_json

CSRF_REFUSED = "Refused: the request's CSRF check failed ({reason}). Reload the page and try again."


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for a load balancer: the web process answers and reaches its database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


class FaviconView(RedirectView):
    """Browsers ask every site for /favicon.ico; the icon is a static file like any other."""

    permanent = True
    http_method_names = ["get", "head"]

    def get_redirect_url(self, *args, **kwargs) -> str:
        return static("favicon.svg")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: the listening page and API clients get the ``{message, extra}`` JSON every other
    error has (the page shows the message); browsers on forms keep Django's explanatory HTML page."""
    if not (request.path.startswith(("/l/p/", "/api/")) or wants_json(request)):
        return csrf.csrf_failure(request, reason=reason)
    message = CSRF_REFUSED.format(reason=reason)
    return JsonResponse({"message": message, "extra": {"fields": {"csrf": [message]}}}, status=403)
