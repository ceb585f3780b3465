"""Streaks of active days, in the learner's time zone (I/O-free).

A day is active when the learner completed a lecture or marked activity (one ``activity``
document per user per day). Streaks are derived from that SET of days, never kept as a counter
moved by each event, so they do not depend on the order events arrive in, on redelivery, or on
concurrent writers: the current streak counts consecutive active days ending at the last active
day, read as 0 once a whole day passed without activity (evaluated at read time, in the learner's
zone); the longest streak is the longest run in the set.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contract.errors import BadRequest

ONE_DAY = dt.timedelta(days=1)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``. Raises BadRequest (``bad_timezone``) for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {name!r}", code="bad_timezone") from None


def local_day(ts_ms: int, tz: str) -> dt.date:
    """The calendar day in ``tz`` of an instant given in epoch milliseconds."""
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).astimezone(ZoneInfo(tz)).date()


def run_of(days: Collection[dt.date], day: dt.date) -> tuple[dt.date, dt.date] | None:
    """(first, last) day of the run of consecutive days in ``days`` that contains ``day``; None
    when ``day`` is not active. A caller holding only a window of the days must look wider when
    the run reaches the window's edge."""
    if day not in days:
        return None
    first = last = day
    while first - ONE_DAY in days:
        first -= ONE_DAY
    while last + ONE_DAY in days:
        last += ONE_DAY
    return first, last


def length(run: tuple[dt.date, dt.date] | None) -> int:
    return (run[1] - run[0]).days + 1 if run else 0


def current_streak(days: Collection[dt.date], last_active: dt.date | None, today: dt.date) -> int:
    """The current streak on ``today``: the run ending at the last active day, or 0 once a whole
    day passed without activity (``days`` must reach back to the run's start)."""
    if last_active is None or today - last_active > ONE_DAY:
        return 0
    return length(run_of(days, last_active))
