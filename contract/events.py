"""What services put on Redis streams and Pub/Sub for each other, with their decoders (built once).

The score stream carries :class:`ScoreAction` and :class:`RebuildRequest` (a tagged union, field
``kind``); the completion stream :class:`CompletionEvent`; ``stream:board_closed``
:class:`BoardClosed`; a board's channel :class:`BoardEvent`; a user's channel
:class:`ProgressEvent`. Each is the JSON of an entry's field ``d`` or of a published message.
"""

from __future__ import annotations

import msgspec

from contract.bodies import LeaderboardEntry


# ---------------------------------------------------------------- streams
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


# ---------------------------------------------------------------- Pub/Sub
class BoardEvent(msgspec.Struct, rename="camel"):
    """Published on a board's channel after its version moved.

    ``users``: whose score changed since the previous event (the worker's batch), so gateways
    look up those viewers' own ranks first; empty when unknown (a rebuild).
    """

    board: str
    version: int
    users: list[str] = []


class ProgressEvent(msgspec.Struct, rename="camel"):
    """Published on a user's channel when one of their devices saved a position."""

    course_id: str
    lecture_id: str
    position: float
    seq: int
    origin: str = ""


# Built once, reused for every entry and message.
stream_entry_decoder = msgspec.json.Decoder(ScoreAction | RebuildRequest)
board_event_decoder = msgspec.json.Decoder(BoardEvent)
progress_event_decoder = msgspec.json.Decoder(ProgressEvent)
completion_event_decoder = msgspec.json.Decoder(CompletionEvent)
