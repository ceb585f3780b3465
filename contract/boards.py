"""Board naming: which boards exist, what a name means, and which boards an action updates.

A board name is one of ``global``, ``weekly:<ISO year>-W<week>``, ``monthly:<year>-<month>``,
``region:<code>`` or ``course:<courseId>``. ``weekly`` and ``monthly`` alone name the current
period and are resolved with :func:`resolve` before any key is built.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection

from contract.errors import BoardNameError, UnknownBoard

_ID = r"[A-Za-z0-9_.\-]{1,64}"
_REGION = r"[A-Za-z0-9_\-]{1,32}"
_CANONICAL = re.compile(
    rf"^(?:global|weekly:\d{{4}}-W\d{{2}}|monthly:\d{{4}}-\d{{2}}|region:{_REGION}|course:{_ID})$"
)
ID_PATTERN = re.compile(rf"^{_ID}$")
REGION_PATTERN = re.compile(rf"^{_REGION}$")


def weekly_name(when: dt.datetime) -> str:
    year, week, _ = when.astimezone(dt.UTC).isocalendar()
    return f"weekly:{year}-W{week:02d}"


def monthly_name(when: dt.datetime) -> str:
    when = when.astimezone(dt.UTC)
    return f"monthly:{when.year}-{when.month:02d}"


def region_name(region: str) -> str:
    return f"region:{region.upper()}"


def course_name(course_id: str) -> str:
    return f"course:{course_id}"


def resolve(name: str, now: dt.datetime | None = None) -> str:
    """Return the canonical name of ``name`` (``weekly``/``monthly`` become the current period).

    Raises BoardNameError for anything that is not a known board.
    """
    now = now or dt.datetime.now(dt.UTC)
    if name == "weekly":
        return weekly_name(now)
    if name == "monthly":
        return monthly_name(now)
    if name.startswith("region:"):
        name = region_name(name.removeprefix("region:"))
    if not _CANONICAL.match(name):
        raise BoardNameError(
            f"unknown board {name[:80]!r}: use global, weekly, monthly, weekly:YYYY-Www, "
            "monthly:YYYY-MM, region:<code> or course:<courseId>"
        )
    if name.startswith("weekly:"):
        year, week = name.removeprefix("weekly:").split("-W")
        try:
            dt.date.fromisocalendar(int(year), int(week), 1)
        except ValueError:
            raise BoardNameError(f"no ISO week {name!r}") from None
    if name.startswith("monthly:") and not 1 <= int(name[-2:]) <= 12:
        raise BoardNameError(f"no month {name!r}")
    return name


def regions_of(setting: str) -> frozenset[str]:
    """The region codes of a comma-separated setting (``board_regions``), upper-cased."""
    return frozenset(code.strip().upper() for code in setting.split(",") if code.strip())


def course_of(board: str) -> str | None:
    """The course id of a canonical ``course:<id>`` board, else None."""
    return board.removeprefix("course:") if board.startswith("course:") else None


def followable(
    name: str,
    *,
    regions: Collection[str],
    weeks_back: int,
    months_back: int,
    now: dt.datetime | None = None,
) -> str:
    """The canonical name of ``name`` if a client may follow it, as far as names tell.

    ``global``; ``region:<code>`` for a code in ``regions``; the current week or month and the
    ``weeks_back`` / ``months_back`` before it; ``course:<id>`` (whether the course exists is the
    caller's question: it needs the catalog). Each followed board costs a gateway a loop and a
    Pub/Sub channel, and Redis a version key, so nothing else is followed.

    Raises BoardNameError for a malformed name, UnknownBoard for a well-formed one outside that set.
    """
    now = now or dt.datetime.now(dt.UTC)
    board = resolve(name, now)
    kind, _, value = board.partition(":")
    if kind == "region" and value not in regions:
        raise UnknownBoard(f"no region {value!r}: the regions are {', '.join(sorted(regions))}")
    if kind == "weekly":
        iso_year, iso_week = value.split("-W")
        monday = dt.date.fromisocalendar(int(iso_year), int(iso_week), 1)
        this_monday = dt.date.fromisocalendar(*now.astimezone(dt.UTC).isocalendar()[:2], 1)
        if not 0 <= (this_monday - monday).days // 7 <= weeks_back:
            raise UnknownBoard(f"{board} is not this week or one of the {weeks_back} before it")
    if kind == "monthly":
        first = dt.date.fromisoformat(f"{value}-01")
        current = now.astimezone(dt.UTC)
        if not 0 <= (current.year * 12 + current.month) - (first.year * 12 + first.month) <= months_back:
            raise UnknownBoard(f"{board} is not this month or one of the {months_back} before it")
    return board


def segments_for(when: dt.datetime, *, region: str | None, course_id: str | None) -> list[str]:
    """Every board one score action at ``when`` belongs to, in a stable order."""
    boards = ["global", weekly_name(when), monthly_name(when)]
    if region:
        boards.append(region_name(region))
    if course_id:
        boards.append(course_name(course_id))
    return boards
