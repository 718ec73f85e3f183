"""Settings shared by every mode, read from the environment with safe defaults.

The embedded default needs no server: SQLite under ``var/``, Celery on kombu's filesystem
transport under ``var/queue``, media under ``var/media``. Every variable read here and in the
integration modules imported at the bottom is listed in docs/reference/settings.md (generated from them).
"""

import ipaddress
import os
import re
import secrets

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from evalsite.settings.env import BASE_DIR, VAR_DIR, env_bool, env_float, env_int, env_rate


def _persisted_secret_key() -> str:
    # The embedded default must survive restarts (sessions, signed listener links) without the user
    # choosing a key, so one is generated once and kept, private, under var/.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = os.environ.get("SECRET_KEY") or _persisted_secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: runserver (DEBUG) leaves static files to WhiteNoise, as every other server does.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files for /api/v1/docs/, served as static files (offline)
    "evalsite.core",
    "evalsite.audio",
    "evalsite.jobs",
    "evalsite.runs",
    "evalsite.scoring",
    "evalsite.listening",
    "evalsite.alerts",
    "evalsite.pipeline",
    "evalsite.api",
    "evalsite.analysis",
    "evalsite.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files answered here, before sessions and the database are touched (evalsite.settings.storage).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Outermost but one: every response gets the policy, those of the middleware below included.
    "evalsite.core.middleware.ContentSecurityPolicyMiddleware",
    "evalsite.api.fastpath.AlertPollNotModifiedMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After CsrfViewMiddleware: counts sign-in posts per client (EVALSITE_LOGIN_RATE).
    "evalsite.core.ratelimit.LoginRateLimitMiddleware",
    "evalsite.core.middleware.DatabaseUnavailableMiddleware",
]

# Content-Security-Policy of every response (evalsite.core.middleware); "{nonce}" becomes the request's
# nonce, which the templates' inline scripts carry (request.csp_nonce). Scripts come only from this
# site (plotly.js included: a static file), so an injected script does not run; styles may be
# inline (plotly.js injects its own). Empty: no header.
EVALSITE_CSP = os.environ.get(
    "EVALSITE_CSP",
    (
        "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; media-src 'self' blob:; font-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
)

ROOT_URLCONF = "evalsite.urls"
WSGI_APPLICATION = "evalsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'evalsite.sqlite3'}"
# Persistent connections: a new PostgreSQL connection per request was the largest cost under load
# (benchmarks/README.md); health checks drop a connection the server closed.
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60), conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker process write to the same file: WAL lets readers go on while one
    # writes, IMMEDIATE takes the write lock at BEGIN so two writers queue instead of deadlocking.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"

# Researchers sign in on the site's own page: they need no staff flag (the admin is for administrators).
LOGIN_URL = "login"
CSRF_FAILURE_VIEW = "evalsite.core.views.csrf_failure"
LOGIN_REDIRECT_URL = "runs:overview"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "evalsite.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # researchers' browsers; CSRF enforced
        "evalsite.api.throttling.AnonymousRequestLimit",  # counts what neither claimed against its IP
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's, plus the body size limit and a 400 (not a 500) for absurdly nested JSON.
    "DEFAULT_PARSER_CLASSES": ["evalsite.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "evalsite.api.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Per token holder (run token, or researcher), the alert-poll fast path included; and per IP for
    # requests without a valid token, so tokens cannot be guessed at speed (evalsite.api.throttling).
    "DEFAULT_THROTTLE_CLASSES": ["evalsite.api.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "token": os.environ.get("EVALSITE_API_RATE") or "1200/min",
        "anon": os.environ.get("EVALSITE_API_ANON_RATE") or "60/min",
    },
    # Proxies in front of the server whose X-Forwarded-For is trusted for the client's IP; 0 reads
    # REMOTE_ADDR (a client could otherwise pick a fresh "IP" per request).
    "NUM_PROXIES": env_int("EVALSITE_NUM_PROXIES", 0),
}
# A JSON body above this is refused (413) before it is parsed; DATA_UPLOAD_MAX_MEMORY_SIZE caps it too.
EVALSITE_API_MAX_BODY_BYTES = env_int("EVALSITE_API_MAX_BODY_BYTES", 1024 * 1024)

# Rate-limit counters live in the cache: set CACHE_URL (redis://…) so that every web process shares
# them; the local-memory default counts per process.
CACHE_URL = os.environ.get("CACHE_URL", "")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    if CACHE_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}
# Listener pages and sign-in forms (evalsite.core.ratelimit; django-ratelimit, same cache). A listener
# sends a few dozen requests a trial (its sounds, one rating per slider release, telemetry, complete);
# the most is an arrow key held on a MUSHRA slider, one rating per key repeat (about 30 a second,
# one in flight per slider: static/listening/api.js), which 1200 a minute outlasts for 40 s. Joins
# count per client IP: a lab behind one address, or the load benchmark's 200 listeners from
# 127.0.0.1, fit in 300 an hour; a script creating participants is stopped there.
EVALSITE_LISTENER_RATE = env_rate("EVALSITE_LISTENER_RATE", "1200/min")
EVALSITE_JOIN_RATE = env_rate("EVALSITE_JOIN_RATE", "300/hour")
EVALSITE_LOGIN_RATE = env_rate("EVALSITE_LOGIN_RATE", "20/hour")
# The largest JSON body of a listener request (413 above): the page's telemetry batches are sized to
# fit the 64 KiB that browsers allow a request sent as the page closes (keepalive).
EVALSITE_LISTENER_MAX_BODY_BYTES = env_int("EVALSITE_LISTENER_MAX_BODY_BYTES", 64 * 1024)
# A listener's unfinished trials count towards votes_target this long after they joined; then only
# finished trials do, so people who open the link and leave cannot fill a test (assignment engine).
EVALSITE_ASSIGNMENT_HOLD_MIN = env_int("EVALSITE_ASSIGNMENT_HOLD_MIN", 120)
# "Play every sound" and the level calibration are decided from what the server sent: all of a
# sound's bytes, and this fraction of its duration in wall time since they were first sent.
EVALSITE_LISTENING_MIN_PLAY_FRACTION = env_float("EVALSITE_LISTENING_MIN_PLAY_FRACTION", 0.8)
if not 0 <= EVALSITE_LISTENING_MIN_PLAY_FRACTION <= 10:
    raise ImproperlyConfigured(
        "EVALSITE_LISTENING_MIN_PLAY_FRACTION must be from 0 to 10 (a fraction of each sound's duration); "
        f"got {EVALSITE_LISTENING_MIN_PLAY_FRACTION}"
    )
# An active listener with no answer for this long shows as "abandoned" on the researcher's pages
# (a read-time notion: nothing changes their row, and they may still come back and finish).
EVALSITE_ABANDONED_AFTER_MIN = env_int("EVALSITE_ABANDONED_AFTER_MIN", 60)
SPECTACULAR_SETTINGS = {
    "TITLE": "evalsite API",
    "DESCRIPTION": "Runs, checkpoints, evaluations, listening tests and alerts for researchers and training jobs. "
    'Errors are {"message", "extra": {"fields": {field: [why]}}}.',
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # /api/v1/schema/ is public on purpose: it describes the operations (as the source does) and holds
    # no data, and clients read it before they hold a token; anonymous requests count against the
    # per-IP limit (EVALSITE_API_ANON_RATE) like any other (tests/security/test_headers.py).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # /api/v1/docs/ renders the schema with Swagger UI from this installation's static files, nothing
    # from a CDN; its script is a separate same-origin file, so the Content-Security-Policy holds.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Three choice sets are called "kind" (runs, listening tests, alert rules): each gets its own name
    # instead of a generated hash suffix, so the schema's names stay stable for generated clients.
    "ENUM_NAME_OVERRIDES": {
        "RunKindEnum": "evalsite.runs.models.Run.Kind",
        "ListeningTestKindEnum": "evalsite.listening.models.ListeningTest.Kind",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Model plug-ins given as dotted paths ("package.module:attribute", comma-separated). A run may name
# one only when it is listed here: the API, a run token and a checkpoint file never choose code.
# Built-in families and installed "evalsite.models" entry points need no listing.
EVALSITE_MODEL_PLUGINS = [
    p.strip() for p in os.environ.get("EVALSITE_MODEL_PLUGINS", "").split(",") if p.strip()
]
for _plugin in EVALSITE_MODEL_PLUGINS:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", _plugin):
        raise ImproperlyConfigured(
            f"EVALSITE_MODEL_PLUGINS: {_plugin!r} is not of the form 'package.module:attribute'"
        )

# Audio ingestion limits: a file outside them is reported with its path and the reason.
EVALSITE_MAX_AUDIO_DURATION_S = env_float("EVALSITE_MAX_AUDIO_DURATION_S", 600.0)
EVALSITE_MIN_SAMPLE_RATE = env_int("EVALSITE_MIN_SAMPLE_RATE", 8000)
EVALSITE_MAX_SAMPLE_RATE = env_int("EVALSITE_MAX_SAMPLE_RATE", 192000)
EVALSITE_MAX_CHANNELS = env_int("EVALSITE_MAX_CHANNELS", 2)

# Webhook policy (evalsite.alerts.webhooks): a run token chooses the URL, so by default only https to
# public addresses. http:// and networks that are otherwise refused (loopback, private: a receiver on
# this machine or the lab's network) must be allowed by the operator, e.g. "127.0.0.1/32,10.1.0.0/16".
EVALSITE_WEBHOOK_ALLOW_HTTP = env_bool("EVALSITE_WEBHOOK_ALLOW_HTTP", False)
EVALSITE_WEBHOOK_ALLOWED_NETWORKS = [
    n.strip() for n in os.environ.get("EVALSITE_WEBHOOK_ALLOWED_NETWORKS", "").split(",") if n.strip()
]
for _network in EVALSITE_WEBHOOK_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"EVALSITE_WEBHOOK_ALLOWED_NETWORKS: {_exc}") from None

# The largest listening test one request may build (evalsite.listening.services.listening_test_build):
# checkpoints rated (MUSHRA allows 9 anyway: 12 signals with the hidden reference and two anchors), eval
# items, and trials in all (an AB test has one per pair of checkpoints per item). At these caps a build
# holds its web worker for seconds, not minutes (benchmarks/listening_build.py).
EVALSITE_LISTENING_MAX_SYSTEMS = env_int("EVALSITE_LISTENING_MAX_SYSTEMS", 12)
EVALSITE_LISTENING_MAX_ITEMS = env_int("EVALSITE_LISTENING_MAX_ITEMS", 300)
EVALSITE_LISTENING_MAX_TRIALS = env_int("EVALSITE_LISTENING_MAX_TRIALS", 5000)

# Importing a test run on another platform (evalsite.listening.services.imports): the largest file read,
# its rows and header columns (a webMUSHRA file has one column per questionnaire answer), and how many of
# the problems found are listed back (all are counted). Writing costs about 1.5 ms a row (10 000 rows in
# 13-16 s on the shared 2-core development machine, SQLite): 50 000 rows hold a web worker for over a minute,
# so larger files belong to the management command with a raised limit.
EVALSITE_IMPORT_MAX_BYTES = env_int("EVALSITE_IMPORT_MAX_BYTES", 20 * 1024 * 1024)
EVALSITE_IMPORT_MAX_ROWS = env_int("EVALSITE_IMPORT_MAX_ROWS", 50_000)
EVALSITE_IMPORT_MAX_COLUMNS = env_int("EVALSITE_IMPORT_MAX_COLUMNS", 50)
EVALSITE_IMPORT_MAX_ERRORS = env_int("EVALSITE_IMPORT_MAX_ERRORS", 50)

# Generation params may name "cuda:N" only for N below this (the GPUs each worker has); "cuda" and "auto"
# always work. Checked at the API and again by the worker (evalsite.runs.params).
EVALSITE_GENERATION_CUDA_DEVICES = env_int("EVALSITE_GENERATION_CUDA_DEVICES", 1)

# One module per integration; each reads the environment itself (evalsite.settings.env), none imports this one.
from evalsite.settings.celery import *  # noqa: E402,F401,F403
from evalsite.settings.storage import *  # noqa: E402,F401,F403
