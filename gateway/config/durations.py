"""Human durations ("90s", "15m", "8h", "1d") to seconds, and moments given as a time or a duration ago."""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*\Z")


def parse_duration(value: Any) -> float:
    """Return `value` in seconds.

    Raises:
        ValueError: not a positive number of seconds or a `<number><s|m|h|d>` string.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 15m, 8h or 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration like 30s, 15m, 8h or 1d")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def parse_moment(text: str, now: float) -> float:
    """An ISO 8601 date or time (UTC unless it says otherwise), or a duration ago (`15m`, `7d`) -> a timestamp.

    Raises:
        ValueError: none of those.
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or time, or a duration like 24h or 7d") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def moment_argument(value: str) -> float:
    """`parse_moment` as an argparse type, from now."""
    try:
        return parse_moment(value, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A config field holding seconds, written as a number or a `15m`-style string."""


def parse_instant(value: Any) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) or date (its 00:00 UTC) -> a timestamp.

    YAML reads an unquoted `2027-01-31` as a date and `2027-01-31T12:00:00Z` as a datetime: both are taken.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO 8601 date or time, like 2027-01-31 or 2027-01-31T12:00Z"
            ) from None
    else:
        raise ValueError("expected an ISO 8601 date or time, like 2027-01-31 or 2027-01-31T12:00Z")
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


Instant = Annotated[float, BeforeValidator(parse_instant)]
"""A config field holding a moment, written as an ISO 8601 date or time."""
