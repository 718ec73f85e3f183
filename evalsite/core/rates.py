"""Rate-limit budgets written as text ("1200/min"): parsed and described for people.

No Django here: the settings read the budgets from the environment with :func:`parse_rate`, so a
mistyped one stops the start-up with the variable's name instead of failing every request.
"""

from __future__ import annotations

import math
import re

# N/period, the period s, m, h or d, spelled out or not (min, hour), optionally a multiple (10min).
RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*$")
PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PERIOD_NAMES = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
OFF = "off"
BAD_RATE = (
    "{name} is {rate!r}; write it as N/s, N/min, N/hour or N/day (N/10min for a ten-minute window), or off"
)


def parse_rate(rate: str, name: str = "the rate") -> tuple[int, int]:
    """``"1200/min"`` → (1200, 60), ``"30/10min"`` → (30, 600); ``ValueError`` naming ``name`` otherwise."""
    match = RATE.match(rate or "")
    if match is None:
        raise ValueError(BAD_RATE.format(name=name, rate=rate))
    count, multiple, period = match.groups()
    seconds = PERIOD_SECONDS[period[0]] * int(multiple or 1)
    if seconds == 0:
        raise ValueError(BAD_RATE.format(name=name, rate=rate))
    return int(count), seconds


def describe_rate(count: int, period: int) -> str:
    """(1200, 60) → "1200 a minute"; (30, 600) → "30 in 10 minutes"."""
    if period in PERIOD_NAMES:
        return f"{count} {'an' if period == 3600 else 'a'} {PERIOD_NAMES[period]}"
    return f"{count} in {period // 60} minutes" if period % 60 == 0 else f"{count} in {period} seconds"


def describe_wait(seconds: int) -> str:
    """37 → "37 s"; 840 → "14 min"."""
    return f"{seconds} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"
