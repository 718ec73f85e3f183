"""Issue 14, finding 12: no page sent a Content-Security-Policy, and whether ``/api/v1/schema/`` is public
was undecided.

Every response of every URL the site serves (the URL conf is walked, as in the access matrix, and
fetched by an anonymous browser, a listener, a researcher, a run token and an administrator) carries
the policy with a fresh nonce; every inline script of every HTML page carries that response's nonce,
and no page has inline event handlers, which the policy would block. The schema is public by
decision (settings ``SPECTACULAR_SETTINGS``): it names no run, test or researcher and is limited per
IP like any anonymous API request. The browser side (the listener page with audio and a dashboard
with plotly charts run without a violation) is tests/integration/test_csp_browser.py.
"""

from __future__ import annotations

import re

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

from evalsite.api import throttling
from tests.security.test_access_matrix import RUN_R, RUN_S, TEST_A, TEST_B, path_for, walk

pytestmark = pytest.mark.django_db

NONCE = re.compile(r"script-src [^;]*'nonce-([A-Za-z0-9_-]+)'")
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)
CALLERS = ("anonymous", "listener_a", "researcher_in", "token_r", "admin")


def policy_nonce(response) -> str:
    policy = response.headers.get("Content-Security-Policy")
    assert policy, "no Content-Security-Policy"
    for directive in ("default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    assert "'unsafe-eval'" not in policy
    match = NONCE.search(policy)
    assert match, policy
    return match.group(1)


def test_every_response_of_every_url_carries_the_policy_and_every_inline_script_its_nonce(world):
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("root", password="x"))
    clients = {**world["clients"], "admin": admin}
    nonces, pages, missing, unmarked = set(), 0, [], []
    for key, route, pattern in walk():
        path = path_for(key, route, pattern, world)
        cache.clear()
        for caller in CALLERS:
            response = clients[caller].get(path)
            if "Content-Security-Policy" not in response.headers:
                missing.append(f"GET {path} as {caller}: {response.status_code}")
                continue
            nonce = policy_nonce(response)
            nonces.add(nonce)
            if "text/html" not in response.get("Content-Type", "") or getattr(response, "streaming", False):
                continue
            pages += 1
            html = response.content.decode()
            for attributes in SCRIPT_TAG.findall(html):
                if "src=" in attributes or 'type="application/json"' in attributes:
                    continue  # same-origin files, and data that is never run
                if f'nonce="{nonce}"' not in attributes:
                    unmarked.append(
                        f"GET {path} as {caller}: <script{attributes}> without this response's nonce"
                    )
            unmarked += [
                f"GET {path} as {caller}: inline handler {m!r}" for m in INLINE_HANDLER.findall(html)
            ]
    assert not missing, "\n".join(missing)
    assert not unmarked, "\n".join(unmarked)
    assert pages > 50  # the listener's, the researchers' and the admin's pages were among them
    assert len(nonces) > 500  # a fresh nonce for every response


def test_the_pages_with_inline_scripts_mark_them_with_the_nonce(world):
    """The three dashboards that have inline scripts (plots, sorting, playing a flagged region)."""
    client = world["clients"]["researcher_in"]
    run, test = world["run_r"], world["test_a"]
    for path in (
        f"/analysis/runs/{run.pk}/",
        f"/analysis/tests/{test.pk}/",
        f"/analysis/compare/?c={world['ckpt_r'].pk}&c={world['ckpt_r'].pk}",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        nonce = policy_nonce(response)
        inline = [
            a for a in SCRIPT_TAG.findall(response.content.decode()) if "src=" not in a and "json" not in a
        ]
        assert inline and all(f'nonce="{nonce}"' in a for a in inline), path


def test_the_nonce_is_new_for_every_response():
    client = Client()
    assert policy_nonce(client.get("/healthz")) != policy_nonce(client.get("/healthz"))


def test_an_empty_policy_setting_sends_no_header(settings):
    settings.EVALSITE_CSP = ""
    assert "Content-Security-Policy" not in Client().get("/healthz").headers


def test_the_api_schema_is_public_names_nothing_of_anyones_and_is_limited_per_ip(
    world, settings, monkeypatch
):
    response = Client().get("/api/v1/schema/")
    assert response.status_code == 200 and "Content-Security-Policy" in response.headers
    schema = yaml.safe_load(response.content)
    assert "/api/v1/runs/" in schema["paths"]
    body = response.content.decode()
    for name in (RUN_R, RUN_S, TEST_A, TEST_B, "owner-of-r", "researcher-in", world["ckpt_r"].uri):
        assert name not in body
    # Anonymous requests to it count against the per-IP budget like any other anonymous API request.
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"token": "100/min", "anon": "2/min"},
    }
    monkeypatch.setattr(throttling, "clock", lambda: 1_000_020.0)
    cache.clear()
    visitor = Client(REMOTE_ADDR="203.0.113.9")
    assert [visitor.get("/api/v1/schema/").status_code for _ in range(3)] == [200, 200, 429]
