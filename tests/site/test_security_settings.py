"""Security basics a reviewer checks: deploy settings, API rate limits, body sizes, hashed tokens, no secrets.

Production mode is checked in a fresh interpreter with the environment a deployment gives it
(``manage.py check --deploy`` must be silent, and the headers and cookies are read off real
responses); the rest runs in the unit-test process on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.test import APIClient

from evalsite.alerts.services import alert_create
from evalsite.api import throttling
from evalsite.api.services import researcher_token_issue
from evalsite.runs.models import Run
from evalsite.runs.services import run_create
from tests.factories import EvalSetFactory, hear, make_listening_test

REPO = Path(__file__).resolve().parents[2]
CLEAR = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "EVALSITE_MEDIA_ROOT",
    "EVALSITE_MODEL_STORE",
    "SECRET_KEY",
    "DEBUG",
    "DJANGO_SETTINGS_MODULE",
    "ALLOWED_HOSTS",
    "EVALSITE_API_RATE",
    "EVALSITE_API_ANON_RATE",
    "EVALSITE_NUM_PROXIES",
    "CACHE_URL",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_PRELOAD",
    "EVALSITE_LISTENER_RATE",
    "EVALSITE_JOIN_RATE",
    "EVALSITE_LOGIN_RATE",
    "EVALSITE_LISTENER_MAX_BODY_BYTES",
    "EVALSITE_MAX_UPLOAD_BYTES",
)
HOST = "evalsite.example.org"

PRODUCTION_PROBE = """
import io, json
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.test import Client

out = io.StringIO()
call_command("check", deploy=True, fail_level="WARNING", stdout=out, stderr=out)  # raises on any warning
# A deployment runs collectstatic (pages name hashed files from its manifest); the large API-docs and
# plotting bundles are left out here only to keep the probe quick: the admin page needs none of them.
call_command("collectstatic", interactive=False, verbosity=0,
             ignore_patterns=["drf_spectacular_sidecar", "rest_framework", "vendor"])
client = Client(HTTP_HOST=%(host)r)
page = client.get("/admin/login/", secure=True)
api = client.get("/api/v1/runs/", secure=True)
plain = client.get("/api/v1/runs/")
csrf = page.cookies["csrftoken"]
print(json.dumps({
    "check": out.getvalue(),
    "debug": settings.DEBUG,
    "session_cookie": [settings.SESSION_COOKIE_SECURE, settings.SESSION_COOKIE_HTTPONLY],
    "csrf_cookie_setting": [settings.CSRF_COOKIE_SECURE, settings.CSRF_COOKIE_HTTPONLY],
    "csrf_cookie": {"secure": bool(csrf["secure"]), "httponly": bool(csrf["httponly"]), "samesite": csrf["samesite"]},
    "page_headers": {k: page.headers.get(k) for k in ("Strict-Transport-Security", "X-Frame-Options",
                                                     "X-Content-Type-Options", "Referrer-Policy")},
    "api": [api.status_code, api.headers.get("X-Content-Type-Options"), api.headers.get("X-Frame-Options")],
    "plain_http": [plain.status_code, plain.headers.get("Location")],
    "rates": settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
    "num_proxies": settings.REST_FRAMEWORK["NUM_PROXIES"],
    "max_body": settings.EVALSITE_API_MAX_BODY_BYTES,
    "page_rates": [settings.EVALSITE_LISTENER_RATE, settings.EVALSITE_JOIN_RATE, settings.EVALSITE_LOGIN_RATE],
    "page_bodies": [settings.EVALSITE_LISTENER_MAX_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
                    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS],
    "login_limited": "evalsite.core.ratelimit.LoginRateLimitMiddleware" in settings.MIDDLEWARE,
}))
"""


def production(tmp_path: Path, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in CLEAR}
    base.update(
        DJANGO_SETTINGS_MODULE="evalsite.settings.production",
        EVALSITE_VAR_DIR=str(tmp_path),
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS=HOST,
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-c", PRODUCTION_PROBE % {"host": HOST}],
        cwd=REPO,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_production_mode_passes_check_deploy_and_sends_locked_down_headers_and_cookies(tmp_path):
    cfg = production(tmp_path, EVALSITE_API_RATE="100/s", EVALSITE_API_ANON_RATE="5/min")
    assert "no issues" in cfg["check"] and cfg["debug"] is False
    assert cfg["session_cookie"] == [True, True]  # Secure, HttpOnly
    # Secure; readable by the listening page's script, which sends it back as X-CSRFToken.
    assert cfg["csrf_cookie_setting"] == [True, False]
    assert cfg["csrf_cookie"] == {"secure": True, "httponly": False, "samesite": "Lax"}
    headers = cfg["page_headers"]
    assert headers["Strict-Transport-Security"] == "max-age=2592000; includeSubDomains"
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert cfg["api"] == [401, "nosniff", "DENY"]
    assert cfg["plain_http"] == [301, f"https://{HOST}/api/v1/runs/"]
    assert cfg["rates"] == {"token": "100/s", "anon": "5/min"}
    assert cfg["num_proxies"] == 1 and cfg["max_body"] == 1024 * 1024
    # The browser pages' budgets and body limits hold in production too.
    assert cfg["page_rates"] == ["1200/min", "300/hour", "20/hour"] and cfg["login_limited"] is True
    assert cfg["page_bodies"] == [64 * 1024, 2_621_440, 1000]


# ---------------------------------------------------------------------------------------------
# Rate limits (small rates via the settings fixture; the cache is emptied around every unit test).


@pytest.fixture
def rates(settings, monkeypatch):
    """3 requests a minute per token holder, 2 per IP without a valid token; the clock stopped mid-window."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"token": "3/min", "anon": "2/min"},
    }
    now = [1_000_020.0]
    monkeypatch.setattr(throttling, "clock", lambda: now[0])
    return now


def client_for(token: str | None = None, **extra) -> APIClient:
    client = APIClient(**extra)
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def assert_throttled(response) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["message"].startswith("Request was throttled") and body["extra"] == {}
    assert 1 <= int(response["Retry-After"]) <= 60


@pytest.mark.django_db
def test_each_run_token_has_its_own_budget_and_the_window_resets(rates):
    run, token = run_create(name="voc", kind="vocoder", model_family="hifigan")
    other, other_token = run_create(name="other", kind="vocoder", model_family="hifigan")
    for _ in range(3):
        assert client_for(token).get(f"/api/v1/runs/{run.pk}/").status_code == 200
    assert_throttled(client_for(token).get(f"/api/v1/runs/{run.pk}/"))
    assert client_for(other_token).get(f"/api/v1/runs/{other.pk}/").status_code == 200
    rates[0] += 60
    assert client_for(token).get(f"/api/v1/runs/{run.pk}/").status_code == 200


@pytest.mark.django_db
def test_a_researcher_has_one_budget_for_all_their_tokens(rates):
    user = get_user_model().objects.create_user("ada", password="x")
    first, second = researcher_token_issue(user=user), researcher_token_issue(user=user)
    for token in (first, second, first):
        assert client_for(token).get("/api/v1/runs/").status_code == 200
    assert_throttled(client_for(second).get("/api/v1/runs/"))


@pytest.mark.django_db
def test_alert_polls_answered_304_by_the_fast_path_count_toward_the_token_budget(rates):
    run, token = run_create(name="voc", kind="vocoder", model_family="hifigan")
    url = f"/api/v1/runs/{run.pk}/alerts/"
    first = client_for(token).get(url)
    assert first.status_code == 200
    for _ in range(2):
        assert client_for(token).get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    assert_throttled(client_for(token).get(url, HTTP_IF_NONE_MATCH=first["ETag"]))
    alert_create(run=run, dedupe_key="k", kind="detector_any", severity="info", title="new")
    assert_throttled(client_for(token).get(url))


@pytest.mark.django_db
def test_failed_and_anonymous_requests_are_limited_per_ip_even_for_a_right_token_afterwards(rates):
    run, token = run_create(name="voc", kind="vocoder", model_family="hifigan")
    url = f"/api/v1/runs/{run.pk}/"
    attacker = {"REMOTE_ADDR": "203.0.113.7"}
    assert client_for("evr_guess1", **attacker).get(url).status_code == 401
    assert client_for(None, **attacker).get(url).status_code == 401
    assert_throttled(client_for("evr_guess2", **attacker).get(url))
    # A lucky guess from that address now gains nothing, not even through the 304 fast path.
    assert_throttled(client_for(token, **attacker).get(url))
    assert_throttled(client_for(token, **attacker).get(f"{url}alerts/", HTTP_IF_NONE_MATCH='"a"'))
    # A spoofed X-Forwarded-For does not make a new client (no trusted proxy by default) ...
    assert_throttled(client_for("evr_guess3", HTTP_X_FORWARDED_FOR="198.51.100.1", **attacker).get(url))
    # ... and other addresses, and the window after, are unaffected.
    assert client_for(token, REMOTE_ADDR="192.0.2.10").get(url).status_code == 200
    rates[0] += 60
    assert client_for(token, **attacker).get(url).status_code == 200


@pytest.mark.django_db
def test_behind_one_trusted_proxy_the_client_is_the_address_it_appended(rates, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    for _ in range(2):
        assert (
            client_for("evr_guess", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.7", **proxy)
            .get("/api/v1/runs/")
            .status_code
            == 401
        )
    assert_throttled(
        client_for("evr_guess", HTTP_X_FORWARDED_FOR="9.9.9.9, 203.0.113.7", **proxy).get("/api/v1/runs/")
    )
    assert (
        client_for("evr_guess", HTTP_X_FORWARDED_FOR="203.0.113.8", **proxy).get("/api/v1/runs/").status_code
        == 401
    )


def test_rates_are_read_in_drf_notation_and_a_mistyped_one_fails_the_system_check(settings):
    assert throttling.parse_rate("1200/min") == (1200, 60) and throttling.parse_rate("5/s") == (5, 1)
    assert throttling.parse_rate("100/hour") == (100, 3600) and throttling.parse_rate("7/day") == (7, 86400)
    assert throttling.check_rates() == []
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"token": "fast", "anon": "-1/s"},
    }
    assert [e.id for e in throttling.check_rates()] == ["evalsite_api.E001"] * 2


# ---------------------------------------------------------------------------------------------
# Request bodies, stored tokens, the repository.


@pytest.mark.django_db
def test_a_json_body_over_the_limit_is_a_413_naming_the_body_before_it_is_parsed(settings):
    user = get_user_model().objects.create_user("ada", password="x")
    client = client_for(researcher_token_issue(user=user))
    big = json.dumps(
        {"name": "r", "kind": "vocoder", "model_family": "h", "config": {"x": "a" * (1024 * 1024)}}
    )
    response = client.post("/api/v1/runs/", big, content_type="application/json")
    assert response.status_code == 413 and response.json()["extra"]["fields"] == {
        "body": [response.json()["message"]]
    }
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000  # Django's own limit caps the API's too
    response = client.post(
        "/api/v1/runs/",
        json.dumps({"name": "r", "kind": "vocoder", "model_family": "h" * 1200}),
        content_type="application/json",
    )
    assert response.status_code == 413 and "at most 1000 bytes" in response.json()["message"]
    assert not Run.objects.exists()


@pytest.fixture
def listener():
    """Three participants of a published MUSHRA test with the headphone check, each in its own browser:
    one before the level calibration, one calibrated, one past the check with its first trial rated."""
    from django.test import Client

    from evalsite.listening import services
    from evalsite.listening.models import Participant
    from evalsite.listening.selectors import headphone_trials, listener_state
    from tests.factories import listening_world

    world = listening_world(n_items=2)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="bodies",
            kind="mushra",
            checkpoints=world["checkpoints"],
            seed=2,
            headphone_check=True,
            training_items=0,
        )
    )
    joined = []
    for _ in range(3):
        client = Client(enforce_csrf_checks=True)
        client.get(f"/l/i/{test.invite_token}/")
        form = {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
        url = client.post(f"/l/i/{test.invite_token}/", form)["Location"]
        joined.append((client, url, Participant.objects.get(token=url.split("/")[3])))
    calibrated, ready = joined[1][2], joined[2][2]
    for participant in (calibrated, ready):
        hear(participant)
        services.calibration_confirm(participant=participant, plays=1)
    ready = services.headphone_check_submit(
        participant=ready, answers=[t["answer"] for t in headphone_trials(ready)]
    )
    trial = listener_state(ready)["trials"][0]
    for stim in trial["stimuli"]:
        services.rating_submit(
            participant=ready, trial=trial["id"], stimulus=stim["id"], score=50, request_id=stim["id"]
        )
    return {
        "before calibration": joined[0][:2],
        "calibrated": joined[1][:2],
        "ready": joined[2][:2],
        "trial": trial,
        "test": test,
    }


def listener_post(client, url: str, body: bytes, **extra):
    return client.post(
        url,
        body,
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
        **extra,
    )


def listening_rows() -> dict:
    from evalsite.listening.models import ArtifactFlag, Assignment, Participant, Rating

    return {
        "ratings": sorted(Rating.objects.values_list("score", "request_id")),
        "flags": ArtifactFlag.objects.count(),
        "telemetry": sorted(map(len, Assignment.objects.values_list("telemetry", flat=True))),
        "participants": sorted(
            Participant.objects.values_list("calibrated_at", "headphone_passed", "device"), key=repr
        ),
        "done": Assignment.objects.filter(completed_at__isnull=False).count(),
    }


@pytest.mark.django_db
def test_a_listener_body_over_the_limit_is_a_413_naming_its_size_and_nothing_is_stored(listener, settings):
    from evalsite.listening.models import Participant
    from evalsite.listening.selectors import headphone_trials
    from evalsite.listening.views import BODY_TOO_LARGE

    limit = settings.EVALSITE_LISTENER_MAX_BODY_BYTES
    assert limit == 64 * 1024
    trial, stim = listener["trial"], listener["trial"]["stimuli"][0]
    calibrated = Participant.objects.get(token=listener["calibrated"][1].split("/")[3])
    # A body each endpoint would accept (and store) at its normal size.
    requests = {
        ("ready", "rate"): {"trial": trial["id"], "stimulus": stim["id"], "score": 77, "request_id": "r-big"},
        ("ready", "flag"): {
            "trial": trial["id"],
            "stimulus": stim["id"],
            "start": 0.1,
            "end": 0.2,
            "category": "click",
            "request_id": "f-big",
        },
        ("ready", "telemetry"): {
            "trial": trial["id"],
            "events": [{"t": 1, "type": "play", "stimulus": None, "pos": 0}],
        },
        ("ready", "complete"): {"trial": trial["id"]},
        ("before calibration", "calibration"): {"plays": 1},
        ("calibrated", "headphone"): {"answers": [t["answer"] for t in headphone_trials(calibrated)]},
    }
    before = listening_rows()
    for (who, endpoint), body in requests.items():
        client, url = listener[who]
        raw = json.dumps({**body, "pad": ""}).encode()
        raw = json.dumps({**body, "pad": "x" * (limit + 1 - len(raw))}).encode()
        assert len(raw) == limit + 1
        response = listener_post(client, url + endpoint, raw)
        assert response.status_code == 413, (endpoint, response.content)
        assert response.json() == {
            "message": BODY_TOO_LARGE.format(size=limit + 1, limit=limit),
            "extra": {"fields": {"body": [BODY_TOO_LARGE.format(size=limit + 1, limit=limit)]}},
        }
    # The declared length is enough: the server refuses before reading a byte of it.
    client, url = listener["ready"]
    response = listener_post(client, url + "telemetry", b"{}", CONTENT_LENGTH=str(50 * 1024 * 1024))
    assert response.status_code == 413 and "52428800 bytes" in response.json()["message"]
    assert listening_rows() == before
    # The same bodies at their normal size are taken: the 413s above were about size alone.
    # The server sent the calibration noise to the one who confirms it.
    hear(Participant.objects.get(token=listener["before calibration"][1].split("/")[3]))
    for (who, endpoint), body in requests.items():
        client, url = listener[who]
        assert listener_post(client, url + endpoint, json.dumps(body).encode()).status_code in (200, 201, 204)
    assert listening_rows() != before


@pytest.mark.django_db
def test_the_pages_largest_telemetry_batch_fits_under_the_listener_limit(listener):
    """static/listening/api.js sends at most TELEMETRY_CHUNK events a post; a batch of the longest
    events the page logs must be accepted."""
    client, url = listener["ready"]
    chunk = int(
        re.search(r"const TELEMETRY_CHUNK = (\d+);", (REPO / "static/listening/api.js").read_text())[1]
    )
    trial = listener["trial"]
    event = {"t": 9_999_999, "type": "switch", "stimulus": trial["stimuli"][0]["id"], "pos": 12345.678}
    raw = json.dumps({"trial": trial["id"], "events": [event] * chunk, "device_sample_rate": 192000}).encode()
    assert listener_post(client, url + "telemetry", raw).status_code == 204
    assert len(raw) < 64 * 1024 / 2  # with room to spare


@pytest.mark.django_db
def test_a_form_post_over_djangos_limits_is_refused_before_it_creates_anything(listener, settings):
    from django.test import Client

    from evalsite.listening.models import Participant

    test = listener["test"]
    assert (
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 2_621_440 and settings.DATA_UPLOAD_MAX_NUMBER_FIELDS == 1000
    )
    joined = Participant.objects.count()
    client = Client()
    huge = client.post(
        f"/l/i/{test.invite_token}/",
        urlencode({"PROLIFIC_PID": "x" * (3 * 1024 * 1024)}),
        content_type="application/x-www-form-urlencoded",
    )
    many = client.post(
        f"/l/i/{test.invite_token}/",
        "&".join(f"f{n}=1" for n in range(1001)),
        content_type="application/x-www-form-urlencoded",
    )
    assert huge.status_code == 400 and many.status_code == 400
    assert Participant.objects.count() == joined


@pytest.mark.django_db
def test_no_token_is_stored_in_plaintext_anywhere_in_the_database():
    user = get_user_model().objects.create_user("ada", password="x")
    researcher_token = researcher_token_issue(user=user)
    EvalSetFactory(name="ljs")
    created = (
        client_for(researcher_token)
        .post(
            "/api/v1/runs/",
            {"name": "voc", "kind": "vocoder", "model_family": "hifigan", "eval_set": "ljs"},
            format="json",
        )
        .json()
    )
    run_token = created["token"]
    assert Run.objects.get(pk=created["id"]).api_token_hash == hashlib.sha256(run_token.encode()).hexdigest()
    secrets_sent = [run_token, researcher_token, run_token[4:], researcher_token[4:]]
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                text = " ".join(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in row)
                assert not any(s in text for s in secrets_sent), f"a token in plaintext in {table}"
    assert len(tables) > 20  # every app's tables were scanned, not an empty database


SECRET_PATTERNS = {
    "run token": re.compile(r"\bevr_[A-Za-z0-9_\-]{20,}"),
    "researcher token": re.compile(r"\bevu_[A-Za-z0-9_\-]{20,}"),
    "webhook secret": re.compile(r"\bwhsec_[A-Za-z0-9_\-]{20,}"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
    "hard-coded SECRET_KEY": re.compile(r"""SECRET_KEY["']?\s*[:=]\s*["'][^"'\s]{16,}["']"""),
    "Django's insecure key": re.compile(r"django-insecure-[^\s\"']{10,}"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}"),
}


def test_no_secret_is_committed_or_about_to_be():
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = [REPO / name for name in listed.stdout.split("\0") if name]
    found = []
    for path in files:
        if not path.is_file() or path.stat().st_size > 5 * 1024 * 1024:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        found += [
            f"{path.relative_to(REPO)}: {kind}"
            for kind, pattern in SECRET_PATTERNS.items()
            if pattern.search(text)
        ]
    assert len(files) > 100 and found == []
    assert (REPO / ".gitignore").read_text().splitlines().count("var/") == 1  # where the generated key lives
