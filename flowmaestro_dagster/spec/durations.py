"""Durations as the builder writes them: one table of units, one parser.

A wait node says `duration: 5, durationUnit: "min"`; a checkpoint says `expiresIn: "7d"`. Both
go through `UNIT_MS`, so `m`, `min` and `minutes` mean the same everywhere.
"""

import math
import re
from typing import Any

MS_PER = {"ms": 1, "seconds": 1000, "minutes": 60_000, "hours": 3_600_000, "days": 86_400_000}

UNIT_ALIASES = {
    **{alias: "ms" for alias in ("ms", "millisecond", "milliseconds")},
    **{alias: "seconds" for alias in ("s", "sec", "second", "seconds")},
    **{alias: "minutes" for alias in ("m", "min", "minute", "minutes")},
    **{alias: "hours" for alias in ("h", "hour", "hours")},
    **{alias: "days" for alias in ("d", "day", "days")},
}

_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def canonical_unit(unit: str) -> str | None:
    """`min` → `minutes`; None for a unit the builder does not have."""
    return UNIT_ALIASES.get(unit.strip().lower())


def to_milliseconds(number: float, unit: str) -> float:
    """`number` of `unit` (any alias) in milliseconds; ValueError for an unknown unit."""
    canonical = canonical_unit(unit)
    if canonical is None:
        raise ValueError(f"unknown duration unit {unit!r}")
    return number * MS_PER[canonical]


def parse_duration_seconds(text: str) -> float:
    """`30m`, `1h`, `24h`, `7d`, `90 seconds` → seconds; ValueError otherwise."""
    match = _TEXT.match(str(text).lower())
    if match is None:
        raise ValueError("must be a number with a unit such as 30m, 1h, 24h or 7d")
    return to_milliseconds(float(match.group(1)), match.group(2)) / 1000


MAX_WAIT_DAYS = 366  # a year: a longer wait is a unit slip (ms written as seconds), not a plan
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def wait_problem(value: Any, unit: str) -> str | None:
    """Why a wait of `value` `unit`s cannot run (not a number, NaN, negative, longer than
    MAX_WAIT_DAYS), or None. For literal durations; a `{{reference}}` is checked when it runs."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return f"must be a number, got {value!r}"
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value.strip()):
            return f"must be a number, got {value!r}"
        value = float(value)
    if math.isnan(value):
        return "must be a number, got NaN"
    if value < 0:
        return f"must be 0 or more, got {value!r}"
    canonical = canonical_unit(unit)
    if canonical is None:
        return f"unknown duration unit {unit!r}"
    if value * MS_PER[canonical] > MAX_WAIT_DAYS * MS_PER["days"]:
        return f"{value!r} {canonical} is longer than the {MAX_WAIT_DAYS} days a wait may last"
    return None
