"""Reading the environment, shared by every settings module (none of which imports another half-loaded).

Hand-written rather than django-environ because of two rules of ours: an empty value means "use the
default" (``VAR=`` in a compose file or a systemd unit), and a rate limit is checked when read and may be
``off``.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from evalsite.core.rates import OFF, parse_rate

BASE_DIR = Path(__file__).resolve().parents[2]


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def env_rate(name: str, default: str) -> str | None:
    """A rate limit such as ``1200/min`` or ``30/10min``; ``off`` turns it off (None)."""
    value = (os.environ.get(name) or default).strip()
    if value.lower() == OFF:
        return None
    try:
        parse_rate(value, name)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    return value


VAR_DIR = Path(os.environ.get("EVALSITE_VAR_DIR") or BASE_DIR / "var").resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)
