"""Where a researcher's listener preview lives between requests: their own session.

A preview is bound to the researcher who opened it and to the browser session they opened it in: its
token is a random key into that session, so a listener (or another researcher) holding the URL has
nothing it opens, and a guessed or altered token names no preview. It lasts ``PREVIEW_MAX_AGE_S``.
Each request of a preview takes a lock on the researcher's user row, then reads the session afresh,
so the page's parallel requests (a trial's sounds are fetched at once) each see the one before.
"""

from __future__ import annotations

import time
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest

from evalsite.listening.access import listening_tests_visible
from evalsite.listening.models import ListeningTest
from evalsite.listening.services.preview import preview_run

PREVIEW_MAX_AGE_S = 60 * 60
PREVIEWS_KEPT = 5  # per session: older previews are dropped when a new one starts
_SESSION_KEY = "listening-previews"
PREVIEW_EXPIRED = "This preview has expired. Open it again from the test's page."


class PreviewRefused(Exception):
    """The request names no preview of this researcher (``expired`` tells an old one apart)."""

    def __init__(self, expired: bool = False) -> None:
        super().__init__(PREVIEW_EXPIRED if expired else "no such preview")
        self.expired = expired


def _store(request: HttpRequest):
    """The request's session read afresh from its backend (not the copy loaded with the request)."""
    return import_module(settings.SESSION_ENGINE).SessionStore(request.session.session_key)


def preview_save(request: HttpRequest, *, token: str, test: ListeningTest, snapshot: str) -> None:
    """Keep a new preview in the researcher's session."""
    previews = dict(request.session.get(_SESSION_KEY, {}))
    previews[token] = {
        "user": request.user.pk,
        "test": test.pk,
        "expires": time.time() + PREVIEW_MAX_AGE_S,
        "snapshot": snapshot,
    }
    request.session[_SESSION_KEY] = dict(list(previews.items())[-PREVIEWS_KEPT:])


class PreviewSession:
    """One request of a preview, inside ``transaction.atomic()`` (the lock is held to its end)."""

    def __init__(self, request: HttpRequest, token: str) -> None:
        self.request, self.token = request, token

    def open(self) -> tuple[ListeningTest, str]:
        """The test and snapshot of the preview, under the researcher's lock; ``PreviewRefused`` if none."""
        request = self.request
        user = request.user
        if not user.is_authenticated or request.session.session_key is None:
            raise PreviewRefused()
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
        self.store = _store(request)
        entry: dict[str, Any] | None = self.store.get(_SESSION_KEY, {}).get(self.token)
        if entry is None or entry["user"] != user.pk:
            raise PreviewRefused()
        if entry["expires"] < time.time():
            raise PreviewRefused(expired=True)
        # Still the researcher's test: a test whose run they lost access to is no longer previewed.
        test = listening_tests_visible(user).filter(pk=entry["test"]).first()
        if test is None:
            raise PreviewRefused()
        self.entry = entry
        return test, entry["snapshot"]

    def keep(self, snapshot: str) -> None:
        previews = dict(self.store.get(_SESSION_KEY, {}))
        previews[self.token] = {**self.entry, "snapshot": snapshot}
        self.store[_SESSION_KEY] = previews
        self.store.save()


def preview_request(request: HttpRequest, token: str, action):
    """``action(participant)`` as one request of the preview ``token``: its result; ``PreviewRefused``
    when the request may not use that preview."""
    with transaction.atomic():
        session = PreviewSession(request, token)
        test, snapshot = session.open()
        request.listening_preview = {"test": test}
        result, after = preview_run(test=test, snapshot=snapshot, action=action)
        session.keep(after)
    return result
