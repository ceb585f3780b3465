"""What Scorecast promises, as the oracle needs it: the ONE place to adapt when a policy changes.

The simulator's actors and the oracle ask this module how the system is supposed to behave:
who may write a score and how, how repeated quiz submissions count, when watching completes a
lecture, what a completion is worth, and the bounds the checks hold the system to. Everything
else in :mod:`sim` is mechanism.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Literal


class Tri(enum.Enum):
    """A verdict the oracle may not be able to make: yes, no, or either (both are accepted, and
    the rest of the state must then agree with whichever the system chose)."""

    NO = 0
    YES = 1
    MAYBE = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    # Direct score writes. "own_token": a learner's own token raises its own score (the API before
    # issue #10). "scorer": a token with role scorer names the user in the body (issue #10).
    score_writes: Literal["own_token", "scorer"] = "scorer"
    # Repeated submissions of one quiz by one user: "every" counts each graded submission with a
    # fresh actionId; "best" counts the best attempt only (issue #10: only the improvement).
    quiz_counts: Literal["every", "best"] = "best"
    # When watching completes a lecture: "playhead" when the newest watched position reached the
    # threshold; "coverage" when consecutive pings of one device covered the threshold's share of
    # the lecture at a plausible pace (issue #10).
    completion_by: Literal["playhead", "coverage"] = "coverage"
    # Whether a lecture whose predecessor is not completed can complete (issue #10: no).
    locked_can_complete: bool = False
    complete_threshold: float = 0.95
    # A completion is worth max(lecture marks, this) on every board of the learner.
    completion_score: int = 10
    # Coverage plausibility (issue #10): an advance counts when it is at most the wall-clock time
    # between two pings times this rate, plus the slack. Only used to tell a forward seek, which
    # must NOT count, from playback; honest playback never advances faster than real time.
    max_playback_rate: float = 2.0
    coverage_slack_s: float = 2.0
    # The system stores watched intervals rounded (to 0.1 s): coverage this close to the threshold
    # may land on either side of it.
    coverage_rounding_s: float = 0.25
    # Stream entries left after every consumer group processed everything (issue #8 defect 3:
    # processed entries are trimmed). None: not checked.
    stream_len_bound: int | None = 500
    # A 503 or an ``unavailable`` is allowed while Redis or MongoDB is down and this long after.
    outage_grace_s: float = 5.0


# Issue #10: direct writes need a scorer token naming the user; a quiz counts its best attempt
# per user; watching completes a lecture by the coverage of one device's consecutive pings (at the
# server's default MAX_PLAYBACK_RATE and COVERAGE_SLACK_S), never a locked one.
CURRENT = Policy(
    score_writes="scorer",
    quiz_counts="best",
    completion_by="coverage",
    locked_can_complete=False,
    coverage_slack_s=2.0,
)


def quiz_points(policy: Policy, grades: Sequence[int]) -> int:
    """What a user's accepted submissions of ONE quiz add to each of its boards."""
    if policy.quiz_counts == "best":
        return max(grades, default=0)
    return sum(grades)


def completion_points(policy: Policy, marks: int) -> int:
    return max(marks, policy.completion_score)


def seek_counts(policy: Policy, advance_s: float, least_gap_s: float, most_gap_s: float) -> Tri:
    """Whether a forward seek of ``advance_s`` seconds counts as watched, when the server's clock
    saw between ``least_gap_s`` and ``most_gap_s`` seconds between it and the ping before it.

    The server takes a ping's time when it handles it, somewhere between its send and its ack:
    the gap it measures lies between (this send - that ack) and (this ack - that send). A seek
    sent at once after a slow ack (an outage delays acks by seconds) may thus be seen long after
    the previous ping was: within that gap's credit it counts; either verdict is then correct.
    """
    if policy.completion_by == "playhead":
        return Tri.YES
    if advance_s > most_gap_s * policy.max_playback_rate + policy.coverage_slack_s + CLOCK_MARGIN_S:
        return Tri.NO
    if advance_s <= least_gap_s:
        return Tri.YES
    return Tri.MAYBE


# The server's clock in whole milliseconds, and the floating-point sums on both sides.
CLOCK_MARGIN_S = 0.01


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """One advance between two consecutive stored pings of one connection on one lecture."""

    start: float
    end: float
    counts: Tri
    # Whether the lecture was surely unlocked (its predecessor surely completed) when the later
    # ping was sent: YES, NO or MAYBE.
    unlocked: Tri


def watched(policy: Policy, duration: float, max_position: float, spans: Sequence[Span]) -> Tri:
    """Whether a lecture is completed by watching, from what the learner's devices were TOLD.

    ``max_position`` is the furthest acknowledged position, ``spans`` the advances between
    consecutive acknowledged pings of one connection.
    """
    need = policy.complete_threshold * duration
    if policy.completion_by == "playhead":
        if abs(max_position - need) < 1e-6:
            return Tri.MAYBE
        return Tri.YES if max_position >= need else Tri.NO
    sure = _covered([s for s in spans if s.counts is Tri.YES and _usable(policy, s, strict=True)])
    possible = _covered([s for s in spans if s.counts is not Tri.NO and _usable(policy, s, strict=False)])
    margin = policy.coverage_rounding_s
    if sure >= need + margin:
        return Tri.YES
    if possible < need - margin:
        return Tri.NO
    return Tri.MAYBE


def _usable(policy: Policy, span: Span, *, strict: bool) -> bool:
    if policy.locked_can_complete:
        return True
    return span.unlocked is Tri.YES if strict else span.unlocked is not Tri.NO


def _covered(spans: Sequence[Span]) -> float:
    """Length of the union of the spans' intervals."""
    total, reach = 0.0, -1.0
    for span in sorted(spans, key=lambda s: s.start):
        if span.end <= reach:
            continue
        total += span.end - max(span.start, reach)
        reach = span.end
    return total
