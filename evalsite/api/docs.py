"""/api/v1/docs/: the served schema made readable (Swagger UI from drf-spectacular-sidecar's static files)."""

from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.negotiation import BaseContentNegotiation

from evalsite.api.throttling import AnonymousRequestLimit


class HtmlPageNegotiation(BaseContentNegotiation):
    """The page is HTML (its script a JavaScript file) whatever the client's Accept header says, so a
    refusal (405 for a write) is answered as such, not as 406."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ApiDocsView(SpectacularSwaggerSplitView):
    # No session or token is read (the page is the same for everyone, like the public schema), so no
    # CSRF check applies; anonymous requests still count against the per-IP limit.
    authentication_classes = [AnonymousRequestLimit]
    content_negotiation_class = HtmlPageNegotiation
    http_method_names = ["get", "head", "options"]
