"""Production mode: SECRET_KEY must come from the environment; cookies and headers locked down."""

import os

from django.core.exceptions import ImproperlyConfigured

if not os.environ.get("SECRET_KEY"):
    raise ImproperlyConfigured("SECRET_KEY must be set in the environment in production mode.")

from evalsite.settings.base import *  # noqa: E402,F401,F403
from evalsite.settings.base import REST_FRAMEWORK
from evalsite.settings.env import env_bool, env_int

DEBUG = False
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = True
# Not HttpOnly: the listening page's script reads it to send X-CSRFToken (static/listening/api.js).
# Per Django's docs HttpOnly here protects nothing: script able to read it is already same-origin.
CSRF_COOKIE_HTTPONLY = False
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 30)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    # Preload-list submission is hard to undo and a deployment decision, not a default.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Behind the TLS proxy (see SECURE_PROXY_SSL_HEADER) the client's IP for the per-IP rate limit is the
# last X-Forwarded-For entry, the one that proxy appended; set 0 when clients connect directly.
REST_FRAMEWORK = {**REST_FRAMEWORK, "NUM_PROXIES": env_int("EVALSITE_NUM_PROXIES", 1)}
