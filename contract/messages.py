"""Every message on the wire, as msgspec Structs, with encoders and decoders built once.

Wire names are camelCase (``rename="camel"``); inputs forbid unknown fields and carry bounds,
so a ``msgspec.ValidationError`` at a boundary becomes a 4xx or a WebSocket ``error`` message.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"

Id = Annotated[str, Meta(pattern=ID_PATTERN)]
# Course and lecture ids become MongoDB field names (``w_<lectureId>``): no dots, no dollars.
KEY_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
KeyId = Annotated[str, Meta(pattern=KEY_PATTERN)]
ActionId = Annotated[str, Meta(pattern=UUID_PATTERN)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=64)]
Region = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]{1,32}$")]
Url = Annotated[str, Meta(max_length=512)]
Seconds = Annotated[float, Meta(ge=0, le=86_400)]
Seq = Annotated[int, Meta(ge=0, le=2**53)]
BoardName = Annotated[str, Meta(min_length=1, max_length=100)]


class Input(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Base of every message a client sends."""


class Output(msgspec.Struct, rename="camel", omit_defaults=True):
    """Base of every message Scorecast sends."""


# ---------------------------------------------------------------- auth (HTTP)
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


# ---------------------------------------------------------------- scores (HTTP)
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


# ---------------------------------------------------------------- admin (HTTP)
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


# ---------------------------------------------------------------- internal (stream, Pub/Sub)
class StreamEntry(msgspec.Struct, rename="camel", forbid_unknown_fields=True, tag_field="kind"):
    """One entry of the score stream (field ``d`` of the stream entry holds its JSON)."""


class ScoreAction(StreamEntry, tag="score"):
    """One accepted score action."""

    action_id: str
    user_id: str
    name: str
    increment: int
    ts_ms: int
    region: str | None = None
    avatar_url: str | None = None
    course_id: str | None = None
    source: str = "score"
    # Who sent it (audit log); absent on actions the server makes itself (completions).
    ip: str | None = None
    user_agent: str | None = None
    # A quiz's time from its fetch to this submission (server clock), and its question count:
    # the quiz_too_fast rule. Absent when the quiz was submitted without a recorded fetch.
    quiz_elapsed_ms: int | None = None
    quiz_questions: int | None = None
    # A completion's seconds of video needed to complete the lecture, and the wall-clock time
    # from its first counted second to the completion: the coverage_too_fast rule.
    covered_s: float | None = None
    watch_ms: int | None = None
    client_ts_ms: int | None = None  # the client's own timestamp (seed 004), audit only


class RebuildRequest(StreamEntry, tag="rebuild"):
    """Rebuild a board from MongoDB: when its keys are missing, or always with ``force``."""

    board: str
    force: bool = False


class CompletionEvent(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A learner completed a lecture (field ``d`` of an entry of the completion stream).

    ``event_id`` is UUID5 of (userId, courseId, lectureId), so one lecture completes once, ever:
    the achievement consumer counts it once, and the score it grants on the course board uses
    the same id as its actionId.
    """

    event_id: str
    user_id: str
    course_id: str
    lecture_id: str
    ts_ms: int
    tz: str = "UTC"
    name: str = ""
    region: str | None = None
    marks: int = 0
    # When the first counted second of the lecture was watched (epoch ms; 0: never watched, as a
    # ``completable`` lecture). With ``ts_ms`` and the lecture's duration, anomaly rules see how
    # fast it was covered (the score action's ``covered_s`` and ``watch_ms``).
    first_watch_ms: int = 0


class BoardEvent(msgspec.Struct, rename="camel"):
    """Published on a board's channel after its version moved.

    ``users``: whose score changed since the previous event (the worker's batch), so gateways
    look up those viewers' own ranks first; empty when unknown (a rebuild).
    """

    board: str
    version: int
    users: list[str] = []


class RankUpdate(Output):
    """The data of an SSE ``rank`` event: the viewer's own place on a board it follows.

    ``rank`` and ``score`` are null while the viewer is not ranked; ``gapToNext`` (points to the
    next rank up) is null then and at #1. No field has a default: nulls are always sent.
    """

    board: str
    version: int
    rank: int | None
    score: int | None
    gap_to_next: int | None


class BoardClosed(msgspec.Struct, rename="camel"):
    """On ``stream:board_closed`` (field ``d``) once per period board, after its archive was
    written: ``top`` is the podium and more (the archive's first entries), ``rankedUsers`` how many
    the board ranked. Consumed by nothing yet (rewards)."""

    board: str
    period_end: str  # ISO 8601 UTC: the end of the period
    version: int  # the board's final version
    ranked_users: int
    top: list[LeaderboardEntry]
    closed_at_ms: int  # when the worker rolled it over (epoch ms)


class ProgressEvent(msgspec.Struct, rename="camel"):
    """Published on a user's channel when one of their devices saved a position."""

    course_id: str
    lecture_id: str
    position: float
    seq: int
    origin: str = ""


# ---------------------------------------------------------------- leaderboard frames (SSE, WS)
class FrameEntry(Output):
    rank: int
    user_id: str
    name: str
    score: int


class BoardSnapshot(Output):
    """The payload of an SSE snapshot/update event."""

    board: str
    version: int
    timestamp: str
    leaderboard: list[FrameEntry]


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


# ---------------------------------------------------------------- WebSocket, client → gateway
class WsInput(Input, tag_field="type"):
    pass


class Subscribe(WsInput, tag="subscribe"):
    board: BoardName


class Unsubscribe(WsInput, tag="unsubscribe"):
    board: BoardName


class ProgressPing(WsInput, tag="progress"):
    course_id: KeyId
    lecture_id: KeyId
    position: Seconds
    seq: Seq
    duration: Annotated[float, Meta(gt=0, le=86_400)] | None = None


class Ping(WsInput, tag="ping"):
    pass


class PingSeq(msgspec.Struct):
    """What can be read of a refused message that looks like a progress ping: its seq."""

    type: str
    seq: Seq


ClientMessage = Subscribe | Unsubscribe | ProgressPing | Ping


# ---------------------------------------------------------------- WebSocket, gateway → client
class WsOutput(Output, tag_field="type"):
    pass


class LeaderboardMessage(WsOutput, tag="leaderboard"):
    board: str
    version: int
    timestamp: str
    leaderboard: list[FrameEntry]


class RankMessage(WsOutput, tag="rank"):
    """The WebSocket form of :class:`RankUpdate`."""

    board: str
    version: int
    rank: int | None
    score: int | None
    gap_to_next: int | None


class ProgressMessage(WsOutput, tag="progress"):
    course_id: str
    lecture_id: str
    position: float
    seq: int


class Ack(WsOutput, tag="ack"):
    seq: int


class Pong(WsOutput, tag="pong"):
    pass


class ErrorMessage(WsOutput, tag="error"):
    code: str
    message: str
    seq: int | None = None  # the refused progress ping's seq, so the client stops resending it


class Unsubscribed(WsOutput, tag="unsubscribed"):
    board: str


class ReconnectMessage(WsOutput, tag="reconnect"):
    after_ms: int


ServerMessage = (
    LeaderboardMessage
    | RankMessage
    | ProgressMessage
    | Ack
    | Pong
    | ErrorMessage
    | Unsubscribed
    | ReconnectMessage
)

# Built once, reused everywhere.
json_encoder = msgspec.json.Encoder()
client_message_decoder = msgspec.json.Decoder(ClientMessage)
ping_seq_decoder = msgspec.json.Decoder(PingSeq)
server_message_decoder = msgspec.json.Decoder(ServerMessage)
stream_entry_decoder = msgspec.json.Decoder(ScoreAction | RebuildRequest)
board_event_decoder = msgspec.json.Decoder(BoardEvent)
progress_event_decoder = msgspec.json.Decoder(ProgressEvent)
completion_event_decoder = msgspec.json.Decoder(CompletionEvent)

ErrorCode = Literal[
    "bad_request",
    "invalid_json",
    "invalid_message",
    "invalid_board",
    "message_too_large",
    "rate_limited",
    "forbidden",
    "unauthorized",
    "token_expired",
    "unavailable",
]
