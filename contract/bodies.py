"""The bodies of the ingest HTTP API (API.md's "ingest (HTTP)"): what clients, scorers and
operators send, and what they are answered, as msgspec Structs.

Inputs forbid unknown fields and carry bounds (:mod:`contract.wire`); ``contract.http.decode_body``
turns a ``msgspec.ValidationError`` into a 400.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from msgspec import Meta

from contract.wire import ActionId, DisplayName, Id, Input, KeyId, Output, Region, Seconds, Seq, Url


# ---------------------------------------------------------------- auth
class LoginRequest(Input):
    user_id: Id
    name: DisplayName
    region: Region | None = None
    avatar_url: Url | None = None
    roles: Annotated[list[Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")]], Meta(max_length=8)] = []
    time_zone: Annotated[str, Meta(min_length=1, max_length=64)] = "UTC"


class RefreshRequest(Input):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=4096)]


class TokenPair(Output):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


# ---------------------------------------------------------------- scores
class ScoreUpdateRequest(Input):
    """A direct increment by a caller with role ``scorer`` or ``admin``, for the user it names."""

    user_id: Id
    score_increment: Annotated[int, Meta(gt=0)]
    action_id: ActionId
    course_id: Id | None = None


class QuizAnswer(Input):
    question_id: Id
    selected_option: Annotated[str, Meta(min_length=1, max_length=64)]


# Seed 004's client timestamp: RFC 3339 with an offset, or epoch milliseconds.
ClientTimestamp = Annotated[dt.datetime, Meta(tz=True)] | Annotated[int, Meta(ge=0, le=2**53)]


class QuizSubmitRequest(Input):
    quiz_id: Id
    action_id: ActionId
    answers: Annotated[list[QuizAnswer], Meta(min_length=1, max_length=200)]
    # When the client says it submitted (seed 004): stored with the action for the audit trail,
    # never used for scoring, ordering or a board's period (the server's clock decides those).
    timestamp: ClientTimestamp | None = None

    def client_ts_ms(self) -> int | None:
        """The client timestamp as epoch milliseconds (None when not sent)."""
        if self.timestamp is None or isinstance(self.timestamp, int):
            return self.timestamp
        return int(self.timestamp.timestamp() * 1000)


class QuestionIn(Input):
    question_id: Id
    correct_option: Annotated[str, Meta(min_length=1, max_length=64)]
    points: Annotated[int, Meta(ge=0, le=1000)] = 1


class QuizIn(Input):
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    questions: Annotated[list[QuestionIn], Meta(min_length=1, max_length=200)]
    course_id: Id | None = None
    # Attempts per learner; the last one is told how many answers were right. None: unlimited,
    # and the count is never told (it would give the key away one question at a time).
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] | None = None


class QuizGraded(Output):
    """The answer to a quiz submission. ``scoreDelta`` is what the boards gained (the improvement
    over the counted attempt); ``correct``/``total``/``score`` only after the last allowed attempt."""

    status: str  # queued (points on their way), graded (stored, nothing to add), duplicate
    score_delta: int
    action_id: str
    attempt: int
    attempts_left: int | None = None
    correct: int | None = None
    total: int | None = None
    score: int | None = None


class ScoreAccepted(Output):
    status: str
    action_id: str


class LeaderboardEntry(Output):
    rank: int
    user_id: str
    name: str
    score: int
    avatar_url: str | None  # no default: always on the wire, ``null`` when the user has none


class LeaderboardPage(Output):
    board: str
    version: int
    updated_at: str
    entries: list[LeaderboardEntry]
    # A closed period answered from its archive: when it closed, and how many users it ranked
    # (the archive keeps the top ``season_archive_size``).
    closed_at: str | None = None
    ranked_users: int | None = None


class RankAnswer(Output):
    board: str
    user_id: str
    rank: int
    score: int


class AroundAnswer(Output):
    board: str
    self: LeaderboardEntry
    above: list[LeaderboardEntry]
    below: list[LeaderboardEntry]


# ---------------------------------------------------------------- admin
class AuditItem(Output):
    """One score change: ``oldScore``/``newScore`` are the user's totals on ``boards[0]``."""

    action_id: str | None
    user_id: str
    type: str
    boards: list[str]
    increment: int
    old_score: int
    new_score: int
    ip: str | None
    user_agent: str | None
    ts: str


class AuditPage(Output):
    items: list[AuditItem]
    next: str | None


class FlagItem(Output):
    user_id: str
    rule: str
    evidence: dict[str, str | int | float | None]
    ts: str
    status: str
    blocked_until: str | None = None


class FlagPage(Output):
    items: list[FlagItem]


class QuizQuestionOut(Output):
    question_id: str
    points: int


class QuizOut(Output):
    quiz_id: str
    title: str
    questions: list[QuizQuestionOut]
    course_id: str | None = None


# ---------------------------------------------------------------- progress (HTTP fallback)
class ProgressSaveRequest(Input):
    """Exactly one of ``position`` and ``watchTime`` (seed 001's name for the same playhead)."""

    course_id: KeyId
    lecture_id: KeyId
    position: Seconds | None = None
    watch_time: Seconds | None = None
    duration: Annotated[float, Meta(gt=0, le=86_400)] | None = None
    seq: Seq | None = None
    # The device whose consecutive saves make watched coverage (default: the token's jti).
    device_id: KeyId | None = None

    def __post_init__(self) -> None:
        # A ValueError here is a msgspec.ValidationError to the decoder: 400 invalid_body.
        if (self.position is None) == (self.watch_time is None):
            raise ValueError("exactly one of `position` and `watchTime` is required")

    @property
    def playhead(self) -> float:
        """Where the learner is in the lecture, in seconds, whichever name the client used."""
        found = self.position if self.position is not None else self.watch_time
        assert found is not None  # __post_init__ made sure
        return found


class ProgressCompleteRequest(Input):
    course_id: KeyId
    lecture_id: KeyId


# ---------------------------------------------------------------- courses
class LectureIn(Input):
    lecture_id: KeyId
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    duration_seconds: Annotated[float, Meta(gt=0, le=86_400)]
    marks: Annotated[int, Meta(ge=0, le=10_000)] = 0
    # Completed by POST /api/v1/progress/complete once unlocked, without watching (no video).
    completable: bool = False


class SectionIn(Input):
    section_id: KeyId
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    lectures: Annotated[list[LectureIn], Meta(max_length=1000)]


class CourseIn(Input):
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    sections: Annotated[list[SectionIn], Meta(max_length=200)]
