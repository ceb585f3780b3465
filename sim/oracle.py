"""The oracle: what the simulation was TOLD, kept apart from the system, and what follows from it.

Actors report every definite answer here (a 202/200 for a score action or quiz submission, an
``ack`` for a ping, a 200 for a heatmap mark) and every request that never got one (its effect
is then unknown: either outcome is accepted). From that record and :mod:`sim.policy` the oracle
derives the expected end state: each user's total on each board segment (as the set of totals
the unknown outcomes allow), each learner's resume point, completed lectures, marks, activity.

Weekly and monthly boards are placed by time (:func:`placed`): the server files an action under
the period of its own clock when it accepted it, and a period that ends during a run is frozen
by the worker's rollover (a late action no longer counts there). So a run that crosses Monday
00:00 UTC or a month's start accepts either outcome on the periods it crossed, for what was sent
before the end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from contract.boards import monthly_name, segments_for, weekly_name
from contract.seasons import period_end
from sim import policy as pol
from sim.policy import Policy, Span, Tri

MAX_OPTIONS = 4096
# Per lecture: verdict, when it surely completed, when it possibly completed (epoch seconds).
Lectures = tuple[dict[str, "Tri"], dict[str, float], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Course:
    course_id: str
    order: list[str]
    durations: dict[str, float]
    marks: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Quiz:
    quiz_id: str
    course_id: str | None
    key: dict[str, str]
    points: dict[str, int]

    def grade(self, answers: dict[str, str]) -> int:
        return sum(self.points[q] for q, option in self.key.items() if answers.get(q) == option)


@dataclasses.dataclass
class Write:
    """A score action or quiz submission, by actionId."""

    user_id: str
    amount: int
    boards: tuple[str, ...]
    quiz_id: str | None = None
    outcome: Tri = Tri.MAYBE  # YES once a definite 2xx came, NO for a definite refusal
    sent_at: float = dataclasses.field(default_factory=time.time)  # epoch s, before the first send


@dataclasses.dataclass
class PingRecord:
    device: str
    conn: int  # the connection it was acked on (per device, counting reconnects)
    lecture_id: str
    position: float
    seq: int
    sent_at: float
    # How the player got from its previous acked ping on this connection to this one:
    # "play" (honest playback: the advance is at most the time since that ack), "seek",
    # "start" (first on the connection or another lecture), "resume" (a resend after a reconnect).
    kind: str
    gap_s: float = 0.0
    acked_at: float | None = None  # epoch seconds, like ``sent_at``
    refused: bool = False  # a definite refusal (an error other than unavailable)


@dataclasses.dataclass
class Learner:
    user_id: str
    region: str | None
    tz: str
    marks_sure: int = 0
    marks_maybe: int = 0
    active_times: list[float] = dataclasses.field(default_factory=list)  # epoch s of activity


def boards_now(region: str | None, course_id: str | None) -> tuple[str, ...]:
    return tuple(segments_for(dt.datetime.now(dt.UTC), region=region, course_id=course_id))


def placed(boards: Iterable[str], since: float, now: float) -> tuple[list[str], list[str]]:
    """Where something the server accepted between ``since`` and ``now`` (epoch s) counts: the
    boards it surely reaches, and the period boards it may or may not reach.

    ``boards``' weekly/monthly ones are replaced by the periods of ``since`` and ``now``: the same
    period at both is sure (the current one: it has not closed); two different ones are both
    unsure (the server may have filed it under either, and the old one may have been frozen
    before the action was applied).
    """
    fixed = [b for b in boards if period_end(b) is None]
    start, end = (dt.datetime.fromtimestamp(t, dt.UTC) for t in (since, now))
    at_start = {weekly_name(start), monthly_name(start)}
    at_end = {weekly_name(end), monthly_name(end)}
    return fixed + sorted(at_start & at_end), sorted(at_start ^ at_end)


class Oracle:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.courses: dict[str, Course] = {}
        self.quizzes: dict[str, Quiz] = {}
        self.learners: dict[str, Learner] = {}
        self.writes: dict[str, Write] = {}
        self.pings: dict[tuple[str, str], list[PingRecord]] = {}
        # Completions the system reported for MAYBE verdicts, set by the checks.
        self.resolved: dict[tuple[str, str, str], bool] = {}
        self._cache: dict[tuple[str, str], tuple[tuple[int, int, int], Lectures]] = {}

    # ------------------------------------------------------------ what actors report
    def write(self, action_id: str, w: Write) -> Write:
        return self.writes.setdefault(action_id, w)

    def ping(self, user_id: str, course_id: str, record: PingRecord) -> None:
        self.pings.setdefault((user_id, course_id), []).append(record)

    # ------------------------------------------------------------ completions
    def completion(self, user_id: str, course_id: str, lecture_id: str) -> Tri:
        """The verdict on one lecture, from the learner's pings (see ``policy.watched``)."""
        verdicts, _, _ = self._lectures(user_id, course_id)
        return verdicts.get(lecture_id, Tri.NO)

    def completed_for_sure(self, user_id: str, course_id: str) -> set[str]:
        verdicts, _, _ = self._lectures(user_id, course_id)
        return {lec for lec, v in verdicts.items() if v is Tri.YES}

    def _lectures(self, user_id: str, course_id: str) -> Lectures:
        """Per lecture: the verdict, when it surely completed, when it possibly completed.
        Cached until a ping of the learner in the course is acked or a verdict is resolved."""
        pings = self.pings.get((user_id, course_id), [])
        acked = [p for p in pings if p.acked_at is not None]
        stamp = (len(pings), len(acked), len(self.resolved))
        cached = self._cache.get((user_id, course_id))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        course = self.courses[course_id]
        # The previous acked ping of the same connection: the server's "consecutive pings of one
        # device" (a connection's pings are acked in seq order, one in flight at a time).
        previous: dict[int, PingRecord] = {}
        last: dict[tuple[str, int], PingRecord] = {}
        for p in sorted(acked, key=lambda q: q.seq):
            before = last.get((p.device, p.conn))
            if before is not None:
                previous[id(p)] = before
            last[(p.device, p.conn)] = p
        verdicts: dict[str, Tri] = {}
        sure_at: dict[str, float] = {}
        maybe_at: dict[str, float] = {}
        for i, lecture in enumerate(course.order):
            before_lecture = course.order[i - 1] if i else None
            mine = sorted((p for p in acked if p.lecture_id == lecture), key=lambda p: p.acked_at or 0.0)
            spans: list[Span] = []
            max_pos = 0.0
            verdict = Tri.NO
            for p in mine:
                max_pos = max(max_pos, p.position)
                span = self._span(p, previous.get(id(p)), before_lecture, sure_at, maybe_at)
                if span is not None:
                    spans.append(span)
                verdict = pol.watched(self.policy, course.durations[lecture], max_pos, spans)
                assert p.acked_at is not None
                if verdict is Tri.YES:
                    sure_at.setdefault(lecture, p.acked_at)
                if verdict is not Tri.NO:
                    maybe_at.setdefault(lecture, p.acked_at)
            resolved = self.resolved.get((user_id, course_id, lecture))
            if verdict is Tri.MAYBE and resolved is not None:
                verdict = Tri.YES if resolved else Tri.NO
            verdicts[lecture] = verdict
        result = (verdicts, sure_at, maybe_at)
        self._cache[(user_id, course_id)] = (stamp, result)
        return result

    def _span(
        self,
        p: PingRecord,
        prev: PingRecord | None,
        before: str | None,
        sure_at: dict[str, float],
        maybe_at: dict[str, float],
    ) -> Span | None:
        if p.kind == "start" or prev is None or prev.lecture_id != p.lecture_id:
            return None
        if p.position <= prev.position:
            return None
        if p.kind == "play":
            counts = Tri.YES
        elif p.kind == "seek":
            assert p.acked_at is not None and prev.acked_at is not None
            counts = pol.seek_counts(
                self.policy, p.position - prev.position, p.gap_s, p.acked_at - prev.sent_at
            )
        else:
            counts = Tri.MAYBE
        if before is None or (before in sure_at and sure_at[before] < p.sent_at):
            unlocked = Tri.YES
        elif before in maybe_at and maybe_at[before] < p.sent_at:
            unlocked = Tri.MAYBE
        else:
            unlocked = Tri.NO
        return Span(prev.position, p.position, counts, unlocked)

    # ------------------------------------------------------------ resume points
    def resume_options(self, user_id: str, course_id: str) -> list[tuple[str, float]]:
        """The resume points the system may answer: the newest acked ping by seq, or a newer
        ping whose outcome is unknown. Empty when the learner never had a ping acked there."""
        pings = self.pings.get((user_id, course_id), [])
        acked = [p for p in pings if p.acked_at is not None]
        if not acked:
            return []
        newest = max(acked, key=lambda p: p.seq)
        options = [(newest.lecture_id, newest.position)]
        options += [
            (p.lecture_id, p.position)
            for p in pings
            if p.acked_at is None and not p.refused and p.seq > newest.seq
        ]
        return options

    def max_position(self, user_id: str, course_id: str, lecture_id: str) -> float:
        return max(
            (p.position for p in self.pings.get((user_id, course_id), []) if p.lecture_id == lecture_id),
            default=0.0,
        )

    # ------------------------------------------------------------ totals
    def expected_totals(self, now: float | None = None) -> dict[tuple[str, str], set[int] | None]:
        """(userId, board) -> the totals the record allows (None: too many unknowns to list).

        ``now``: epoch s of the check (the periods a contribution may count on, see :func:`placed`).
        """
        now = time.time() if now is None else now
        parts: dict[tuple[str, str], list[set[int] | None]] = {}

        def add(
            user_id: str, boards: Iterable[str], options: set[int], since: float, split: bool = False
        ) -> None:
            on, maybe_on = placed(boards, since, now)
            for board in on:
                parts.setdefault((user_id, board), []).append(options)
            for board in maybe_on:
                parts.setdefault((user_id, board), []).append(None if split else options | {0})

        quiz_grades: dict[tuple[str, str], list[Write]] = {}
        for w in self.writes.values():
            if w.quiz_id is not None:
                quiz_grades.setdefault((w.user_id, w.quiz_id), []).append(w)
            elif w.outcome is Tri.YES:
                add(w.user_id, w.boards, {w.amount}, w.sent_at)
            elif w.outcome is Tri.MAYBE:
                add(w.user_id, w.boards, {0, w.amount}, w.sent_at)
        for (user_id, _), subs in quiz_grades.items():
            sure = [w.amount for w in subs if w.outcome is Tri.YES]
            maybe = [w.amount for w in subs if w.outcome is Tri.MAYBE][:8]
            options = {
                pol.quiz_points(self.policy, sure + list(extra))
                for r in range(len(maybe) + 1)
                for extra in itertools.combinations(maybe, r)
            }
            boards = next(w.boards for w in subs)
            if options != {0}:
                # The improvements of retakes may split over two periods: unknown on those.
                add(user_id, boards, options, min(w.sent_at for w in subs), split=True)
        for (user_id, course_id), pings in self.pings.items():
            learner = self.learners[user_id]
            course = self.courses[course_id]
            verdicts, _, _ = self._lectures(user_id, course_id)
            for lecture, verdict in verdicts.items():
                points = pol.completion_points(self.policy, course.marks[lecture])
                boards = boards_now(learner.region, course_id)
                # Completed at some ping of the lecture: none was sent before the first.
                since = min((p.sent_at for p in pings if p.lecture_id == lecture), default=now)
                if verdict is Tri.YES:
                    add(user_id, boards, {points}, since)
                elif verdict is Tri.MAYBE:
                    add(user_id, boards, {0, points}, since)
        out: dict[tuple[str, str], set[int] | None] = {}
        for key, option_sets in parts.items():
            totals: set[int] | None = {0}
            for added in option_sets:
                assert totals is not None
                if added is None:
                    totals = None
                    break
                totals = {t + o for t in totals for o in added}
                if len(totals) > MAX_OPTIONS:
                    totals = None
                    break
            if totals is not None and totals == {0}:
                continue  # nothing can have reached the board
            out[key] = totals
        return out

    # ------------------------------------------------------------ activity
    def active_days(self, user_id: str) -> tuple[set[dt.date], bool]:
        """Local days with activity (marks and completions), and whether a day is uncertain
        (activity within a minute of local midnight, where the system's clock may disagree)."""
        learner = self.learners[user_id]
        tz = ZoneInfo(learner.tz)
        times = list(learner.active_times)
        for uid, course_id in self.pings:
            if uid != user_id:
                continue
            verdicts, sure_at, maybe_at = self._lectures(user_id, course_id)
            times += [
                sure_at.get(lecture, maybe_at.get(lecture, 0.0))
                for lecture, verdict in verdicts.items()
                if verdict is Tri.YES
            ]
        days = set()
        uncertain = False
        for t in times:
            local = dt.datetime.fromtimestamp(t, tz)
            days.add(local.date())
            seconds = local.hour * 3600 + local.minute * 60 + local.second
            if seconds < 60 or seconds > 86_340:
                uncertain = True
        return days, uncertain
