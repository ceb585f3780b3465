"""Streaks of active days, in the learner's time zone (I/O-free).

A day is active when the learner completed a lecture or marked activity. The current streak
counts consecutive active days ending at the last active day; it reads as 0 once a whole day
passed without activity (evaluated at read time, in the learner's zone).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contract.errors import BadRequest


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``. Raises BadRequest (``bad_timezone``) for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {name!r}", code="bad_timezone") from None


def local_day(ts_ms: int, tz: str) -> dt.date:
    """The calendar day in ``tz`` of an instant given in epoch milliseconds."""
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).astimezone(ZoneInfo(tz)).date()


@dataclasses.dataclass(frozen=True, slots=True)
class Streak:
    current: int = 0
    longest: int = 0
    last_active: dt.date | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Streak:
        last = doc.get("lastActiveDate")
        return cls(
            current=int(doc.get("currentStreak", 0)),
            longest=int(doc.get("longestStreak", 0)),
            last_active=dt.date.fromisoformat(last) if last else None,
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "currentStreak": self.current,
            "longestStreak": self.longest,
            "lastActiveDate": self.last_active.isoformat() if self.last_active else None,
        }

    def on_active(self, day: dt.date) -> Streak:
        """The streak after activity on ``day``. Idempotent for a day already counted; a day
        older than the last active one (a late event) changes nothing."""
        if self.last_active is not None and day <= self.last_active:
            return self
        if self.last_active is not None and day == self.last_active + dt.timedelta(days=1):
            current = self.current + 1
        else:
            current = 1
        return Streak(current=current, longest=max(self.longest, current), last_active=day)

    def current_on(self, today: dt.date) -> int:
        """The current streak as seen on ``today``: 0 when yesterday had no activity."""
        if self.last_active is None or today - self.last_active > dt.timedelta(days=1):
            return 0
        return self.current
