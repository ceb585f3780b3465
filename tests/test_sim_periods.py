"""The simulation's oracle across a real period boundary (no I/O): what was sent before Monday
00:00 UTC (or a month's start) and checked after it may count on the old period or the new one,
and the old one may have been frozen before it was applied; what stayed within one period is
checked exactly, as are the boards without a period."""

from __future__ import annotations

import datetime as dt

from contract.boards import segments_for
from sim.oracle import Oracle, Write, placed
from sim.policy import CURRENT, Tri


def at(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()


SUNDAY_LATE = at(2026, 11, 22, 23, 59, 59)
MONDAY = at(2026, 11, 23, 0, 1)
CHECK = at(2026, 11, 23, 0, 5)


def write(user: str, amount: int, sent_at: float, quiz_id: str | None = None) -> Write:
    boards = tuple(segments_for(dt.datetime.fromtimestamp(sent_at, dt.UTC), region="EU", course_id=None))
    return Write(user, amount, boards, quiz_id=quiz_id, outcome=Tri.YES, sent_at=sent_at)


def test_placed_splits_only_the_periods_that_changed() -> None:
    boards = ("global", "weekly:2026-W47", "monthly:2026-11", "region:EU")
    assert placed(boards, SUNDAY_LATE, SUNDAY_LATE + 0.5) == (
        ["global", "region:EU", "monthly:2026-11", "weekly:2026-W47"],
        [],
    )
    assert placed(boards, SUNDAY_LATE, CHECK) == (
        ["global", "region:EU", "monthly:2026-11"],
        ["weekly:2026-W47", "weekly:2026-W48"],
    )
    month_end = at(2026, 11, 30, 23, 59, 58)  # a Monday: the week does not change
    assert placed(["global"], month_end, at(2026, 12, 1, 0, 0, 30)) == (
        ["global", "weekly:2026-W49"],
        ["monthly:2026-11", "monthly:2026-12"],
    )


def test_totals_across_a_week_boundary() -> None:
    oracle = Oracle(CURRENT)
    oracle.write("a", write("ada", 30, SUNDAY_LATE))
    oracle.write("b", write("ada", 5, MONDAY))
    assert oracle.expected_totals(now=SUNDAY_LATE + 0.5)["ada", "weekly:2026-W47"] == {30, 35}
    expected = oracle.expected_totals(now=CHECK)
    assert expected["ada", "global"] == {35}
    assert expected["ada", "region:EU"] == {35}
    assert expected["ada", "monthly:2026-11"] == {35}
    assert expected["ada", "weekly:2026-W47"] == {0, 30}  # late, or frozen before it was applied
    assert expected["ada", "weekly:2026-W48"] == {5, 35}  # "b" was sent in the new week


def test_a_quiz_retaken_across_a_week_boundary() -> None:
    oracle = Oracle(CURRENT)
    oracle.write("q1", write("bob", 4, SUNDAY_LATE, quiz_id="quiz-1"))
    oracle.write("q2", write("bob", 7, MONDAY, quiz_id="quiz-1"))
    expected = oracle.expected_totals(now=CHECK)
    assert expected["bob", "global"] == {7}  # the best attempt
    # The improvement (+3) may have landed in the new week and the first 4 in the old one.
    assert expected["bob", "weekly:2026-W47"] is None
    assert expected["bob", "weekly:2026-W48"] is None
    same_week = Oracle(CURRENT)
    same_week.write("q1", write("bob", 4, MONDAY, quiz_id="quiz-1"))
    same_week.write("q2", write("bob", 7, MONDAY + 60, quiz_id="quiz-1"))
    assert same_week.expected_totals(now=CHECK)["bob", "weekly:2026-W48"] == {7}
