"""Seasons: when a period board (``weekly:<ISO week>``, ``monthly:<month>``) closes, without I/O.

A period closes at the first instant after it (Monday 00:00 UTC, the 1st 00:00 UTC). The worker
rolls it over ``season_grace_s`` later, so actions queued before the close are applied first
(``ingest.seasons``); gateways move followers of ``weekly``/``monthly`` to the new period at the
close itself (``gateway.hub``). Both ask these functions with their own clock.
"""

from __future__ import annotations

import datetime as dt

from contract.boards import monthly_name, resolve, weekly_name

ALIASES = ("weekly", "monthly")


def period_end(board: str) -> dt.datetime | None:
    """When the canonical period ``board`` closes (UTC); None for a board without a period."""
    kind, _, value = board.partition(":")
    if kind == "weekly":
        iso_year, iso_week = value.split("-W")
        monday = dt.date.fromisocalendar(int(iso_year), int(iso_week), 1)
        return dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(), dt.UTC)
    if kind == "monthly":
        year, month = int(value[:4]), int(value[5:])
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return dt.datetime(year, month, 1, tzinfo=dt.UTC)
    return None


def is_closed(board: str, now: dt.datetime, *, grace_s: float = 0.0) -> bool:
    """Whether ``board`` is a period board that closed at least ``grace_s`` before ``now``."""
    end = period_end(board)
    return end is not None and end + dt.timedelta(seconds=grace_s) <= now


def alias_of(raw: str) -> str | None:
    """``weekly``/``monthly`` when a client named the current period by its alias, else None."""
    return raw if raw in ALIASES else None


def current(alias: str, now: dt.datetime) -> str:
    """The period ``alias`` names at ``now``."""
    return resolve(alias, now)


def recent_periods(now: dt.datetime, *, weeks: int, months: int) -> list[str]:
    """The ``weeks`` weeks and ``months`` months before the current ones, newest first: where a
    worker looks for period boards that closed before it kept a registry of them."""
    boards = [weekly_name(now - dt.timedelta(weeks=i)) for i in range(1, weeks + 1)]
    year, month = now.astimezone(dt.UTC).year, now.astimezone(dt.UTC).month
    for _ in range(months):
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        boards.append(monthly_name(dt.datetime(year, month, 15, tzinfo=dt.UTC)))
    return boards
