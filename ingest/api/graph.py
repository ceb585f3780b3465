"""The GraphQL schema of seed 004: the REST API's reads and actions, typed, over one service layer.

Every resolver validates its arguments with the REST API's own checks and calls the same service
function as the REST handler (``ingest.api.leaderboards``, ``quiz``, ``progress``, ``stats``); what it
raises (``ScorecastError``) becomes a GraphQL error whose ``extensions.code`` is the REST code
(``ingest.api.graph_http``). Nothing here reads Redis or MongoDB itself, except through the
per-request profile DataLoader: member names and avatars of every entry a request shows are
loaded in one batch (``leaderboards.load_profiles``: one pipelined Redis read, MongoDB for misses).

Who may ask what is REST's rule too: the board reads (``leaderboard``, ``rank``, ``around``) are
public, everything about the caller (``progress``, ``studentStats``, ``courseProgress``) and both
mutations need an access token (``Authorization: Bearer``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import strawberry
from starlette.requests import Request
from strawberry.dataloader import DataLoader
from strawberry.types import Info

from contract import bodies
from contract.auth import Claims
from contract.boards import resolve
from contract.bodies import ProgressCompleteRequest, QuizSubmitRequest
from contract.errors import BadRequest
from contract.http import checked_id
from contract.wire import KeyId
from ingest.api import leaderboards, quiz, scores, stats
from ingest.api import progress as progress_api
from ingest.api.metrics import IngestMetrics, outcome_of, outcome_of_status
from ingest.api.state import IngestState, authenticate
from store.board_results import Profile, Row


@dataclasses.dataclass(kw_only=True)
class Context:
    """One request's context: its state, its profile loader, the verified caller (at most once)."""

    request: Request
    st: IngestState
    metrics: IngestMetrics
    profiles: DataLoader[str, Profile | None]
    _claims: Claims | None = None

    @classmethod
    def of(cls, request: Request) -> Context:
        st: IngestState = request.app.state.ingest

        async def batch(user_ids: list[str]) -> list[Profile | None]:
            found = await leaderboards.load_profiles(st, user_ids)
            return [found.get(u) for u in user_ids]

        return cls(
            request=request,
            st=st,
            metrics=request.app.state.metrics,
            profiles=DataLoader(load_fn=batch),
        )

    async def claims(self) -> Claims:
        """The caller's verified claims (REST's ``authenticate``). Raises AuthError."""
        if self._claims is None:
            self._claims = await authenticate(self.request)
        return self._claims


GraphInfo = Info[Context, None]


def decoded(type_: type[Any], fields: dict[str, Any]) -> Any:
    """``fields`` (camelCase, as REST bodies) validated as the REST body ``type_``: the same
    Structs and bounds. Raises BadRequest (``invalid_body``)."""
    try:
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc), code="invalid_body") from None


# ---------------------------------------------------------------- boards
@strawberry.type(description="A ranked member; name and avatar come from one batch per request.")
class LeaderboardEntry:
    rank: int
    user_id: str
    score: int
    row: strawberry.Private[Row]
    # An archived entry (a closed period's) keeps its name and avatar as they were at the close.
    archived: strawberry.Private[bodies.LeaderboardEntry | None] = None

    async def shown(self, info: GraphInfo) -> bodies.LeaderboardEntry:
        if self.archived is not None:
            return self.archived
        return leaderboards.entry_of(self.row, await info.context.profiles.load(self.user_id))

    @strawberry.field(description="Display name (the user id when no profile is known).")
    async def name(self, info: GraphInfo) -> str:
        return (await self.shown(info)).name

    @strawberry.field
    async def avatar_url(self, info: GraphInfo) -> str | None:
        return (await self.shown(info)).avatar_url


def entry(row: Row | bodies.LeaderboardEntry) -> LeaderboardEntry:
    if isinstance(row, Row):
        return LeaderboardEntry(rank=row.rank, user_id=row.user_id, score=row.score, row=row)
    live = Row(rank=row.rank, user_id=row.user_id, score=row.score)
    return LeaderboardEntry(rank=row.rank, user_id=row.user_id, score=row.score, row=live, archived=row)


@strawberry.type
class LeaderboardPage:
    board: str
    version: int
    updated_at: str
    entries: list[LeaderboardEntry]
    closed_at: str | None = strawberry.field(default=None, description="A closed period's close.")
    ranked_users: int | None = strawberry.field(default=None, description="A closed period's count.")


@strawberry.type
class RankAnswer:
    board: str
    user_id: str
    rank: int
    score: int


@strawberry.type
class AroundAnswer:
    board: str
    self_: LeaderboardEntry = strawberry.field(name="self")
    above: list[LeaderboardEntry]
    below: list[LeaderboardEntry]


# ---------------------------------------------------------------- progress and stats
@strawberry.type
class LectureWatchTime:
    lecture_id: str
    seconds: float


@strawberry.type(description="The resume view of GET /api/v1/progress/{courseId}.")
class Progress:
    course_id: str
    last_watched_lecture: str | None
    last_position: float
    watch_times: list[LectureWatchTime]
    completed_lectures: list[str]
    completion_percentage: float
    unlocked_lectures: list[str]
    marks_obtained: int
    total_marks: int


@strawberry.type
class StudentStats:
    current_streak: int
    longest_streak: int
    last_active_date: str | None
    total_completed: int


@strawberry.type
class CourseProgress:
    course_id: str
    progress: float


# ---------------------------------------------------------------- actions
@strawberry.input
class QuizAnswerInput:
    question_id: str
    selected_option: str


@strawberry.input(description="Seed 004's QuizActionInput; the server grades, never the client.")
class QuizActionInput:
    quiz_id: str
    action_id: str = strawberry.field(description="A UUID: the same one again answers `duplicate`.")
    answers: list[QuizAnswerInput]
    timestamp: str | None = strawberry.field(
        default=None, description="The client's clock, RFC 3339 with an offset: audit only."
    )


@strawberry.type(description="POST /api/v1/quiz/submit's answer.")
class QuizSubmissionResult:
    status: str = strawberry.field(description="queued (points on their way), graded or duplicate.")
    score_delta: int
    action_id: str
    attempt: int
    attempts_left: int | None
    correct: int | None
    total: int | None
    score: int | None


@strawberry.type
class LectureCompleted:
    message: str
    completion_percentage: float


# ---------------------------------------------------------------- root types
@strawberry.type
class Query:
    @strawberry.field(description="The first `limit` (1..100) members of `board`.")
    async def leaderboard(
        self, info: GraphInfo, board: str = "global", limit: int = leaderboards.LIMIT_DEFAULT
    ) -> LeaderboardPage:
        name = resolve(board)
        found = await leaderboards.top_of(
            info.context.st, name, leaderboards.bounded("limit", limit, 1, leaderboards.LIMIT_MAX)
        )
        if isinstance(found, bodies.LeaderboardPage):  # a closed period, from its archive
            return LeaderboardPage(
                board=found.board,
                version=found.version,
                updated_at=found.updated_at,
                entries=[entry(e) for e in found.entries],
                closed_at=found.closed_at,
                ranked_users=found.ranked_users,
            )
        entries = [entry(r) for r in found.rows]
        return LeaderboardPage(
            board=found.board, version=found.version, updated_at=leaderboards.now_iso(), entries=entries
        )

    @strawberry.field(description="`userId`'s place on `board`; error `not_ranked` when unranked.")
    async def rank(self, info: GraphInfo, user_id: str, board: str = "global") -> RankAnswer:
        found = await leaderboards.rank_of(info.context.st, resolve(board), user_id)
        return RankAnswer(board=found.board, user_id=found.user_id, rank=found.rank, score=found.score)

    @strawberry.field(description="`userId`'s row with `range` (1..50) rows either side.")
    async def around(
        self, info: GraphInfo, user_id: str, board: str = "global", range: int = leaderboards.RANGE_DEFAULT
    ) -> AroundAnswer:
        name = resolve(board)
        window = leaderboards.bounded("range", range, 1, leaderboards.RANGE_MAX)
        found = await leaderboards.around_of(info.context.st, name, user_id, window)
        mine = found.self if isinstance(found, bodies.AroundAnswer) else found.self_row
        assert mine is not None  # around_of refuses an unranked user
        return AroundAnswer(
            board=name,
            self_=entry(mine),
            above=[entry(r) for r in found.above],
            below=[entry(r) for r in found.below],
        )

    @strawberry.field(description="The caller's resume view of a course (token required).")
    async def progress(self, info: GraphInfo, course_id: str) -> Progress:
        claims = await info.context.claims()
        view = await progress_api.progress_of(
            info.context.st, claims.sub, checked_id("courseId", course_id, KeyId)
        )
        fields = msgspec.structs.asdict(view)
        fields["watch_times"] = [
            LectureWatchTime(lecture_id=k, seconds=v) for k, v in view.watch_times.items()
        ]
        return Progress(**fields)

    @strawberry.field(description="The caller's streaks and completions (token required).")
    async def student_stats(self, info: GraphInfo) -> StudentStats:
        found = await stats.student_stats(info.context.st, await info.context.claims())
        return StudentStats(
            current_streak=found["currentStreak"],
            longest_streak=found["longestStreak"],
            last_active_date=found["lastActiveDate"],
            total_completed=found["totalCompleted"],
        )

    @strawberry.field(description="The caller's share of every course they started (token required).")
    async def course_progress(self, info: GraphInfo) -> list[CourseProgress]:
        claims = await info.context.claims()
        found = await stats.course_progress_of(info.context.st, claims.sub)
        return [CourseProgress(course_id=c["courseId"], progress=c["progress"]) for c in found]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Submit a quiz attempt (POST /api/v1/quiz/submit).")
    async def submit_quiz_action(self, info: GraphInfo, input: QuizActionInput) -> QuizSubmissionResult:
        ctx = info.context
        try:
            claims = await ctx.claims()
            body: QuizSubmitRequest = decoded(
                QuizSubmitRequest,
                {
                    "quizId": input.quiz_id,
                    "actionId": input.action_id,
                    "answers": [
                        {"questionId": a.question_id, "selectedOption": a.selected_option}
                        for a in input.answers
                    ],
                    "timestamp": input.timestamp,
                },
            )
            graded = await quiz.submit_quiz(ctx.st, claims, body, scores.request_client(ctx.request))
        except Exception as exc:
            ctx.metrics.score_writes.labels("quiz", outcome_of(None, exc)).inc()
            raise
        ctx.metrics.score_writes.labels("quiz", outcome_of_status(graded.status)).inc()
        return QuizSubmissionResult(**msgspec.structs.asdict(graded))

    @strawberry.mutation(description="Complete a lecture (POST /api/v1/progress/complete).")
    async def complete_lecture(self, info: GraphInfo, course_id: str, lecture_id: str) -> LectureCompleted:
        claims = await info.context.claims()
        body = decoded(ProgressCompleteRequest, {"courseId": course_id, "lectureId": lecture_id})
        percentage = await progress_api.complete_lecture(info.context.st, claims, body)
        return LectureCompleted(message="completed", completion_percentage=percentage)
