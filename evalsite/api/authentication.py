"""Bearer tokens for the API: per-run tokens (``evr_…``) and researcher tokens (``evu_…``).

Only SHA-256 hashes of tokens are stored; a lookup hashes what the client sent. A run token acts
as a ``RunPrincipal`` that can reach its own run and nothing else. Failed attempts count against
the client's IP (:mod:`evalsite.api.throttling`), so tokens cannot be guessed at speed.
"""

from __future__ import annotations

import hashlib

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from evalsite.api.models import ResearcherToken
from evalsite.api.throttling import anonymous_guard, anonymous_hit
from evalsite.runs.access import RunPrincipal
from evalsite.runs.models import Run

RUN_TOKEN_PREFIX = "evr_"
RESEARCHER_TOKEN_PREFIX = "evu_"
TOKEN_INVALID = "The API token is not valid (revoked, mistyped or for another server)."
TOKEN_MALFORMED = "Authorization header must be 'Bearer <token>'."


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        # An IP that used up its budget of failed attempts is refused before its token is looked at.
        anonymous_guard(request)
        principal = self._principal(header)
        if principal is None:
            anonymous_hit(request)
            raise exceptions.AuthenticationFailed(TOKEN_INVALID if len(header) == 2 else TOKEN_MALFORMED)
        return principal

    @staticmethod
    def _principal(header: list[bytes]):
        if len(header) != 2:
            return None
        try:
            token = header[1].decode()
        except UnicodeError:
            return None
        if token.startswith(RUN_TOKEN_PREFIX):
            run = Run.objects.filter(api_token_hash=token_hash(token)).first()
            return (RunPrincipal(run=run), token) if run is not None else None
        if token.startswith(RESEARCHER_TOKEN_PREFIX):
            row = ResearcherToken.objects.select_related("user").filter(token_hash=token_hash(token)).first()
            if row is None or not row.user.is_active:
                return None
            now = timezone.now()
            if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
                ResearcherToken.objects.filter(pk=row.pk).update(last_used_at=now)
            return row.user, token
        return None

    def authenticate_header(self, request) -> str:
        return self.keyword


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "evalsite.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A run token (evr_…, one run only) or a researcher token (evu_…).",
        }
