import secrets

from evalsite.api.authentication import RESEARCHER_TOKEN_PREFIX, token_hash
from evalsite.api.models import ResearcherToken


def researcher_token_issue(*, user, name: str = "") -> str:
    """A new API token acting as ``user``; returned once, only its hash is kept."""
    token = f"{RESEARCHER_TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    ResearcherToken.objects.create(user=user, name=name, token_hash=token_hash(token), prefix=token[:12])
    return token
