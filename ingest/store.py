"""MongoDB collections of Scorecast and their indexes. Documents stay flat (see DESIGN.md's
note on nx-27017 and dotted upserts).

- ``users``        {_id: userId, name, avatarUrl, region, updatedAt}
- ``score_events`` {_id: "<userId>|<actionId>", userId, actionId, increment, boards, tsMs, source,
                   courseId, clientTsMs, applied}: the audit log; its _id makes an actionId count
                   once per user, ever (events stored before actionIds were per user keep the bare
                   actionId as _id).
- ``board_totals`` {_id: "<board>|<userId>", board, userId, score, seq}: durable truth of
                   every board, what REBUILD reads (with the actions still in flight).
- ``courses``      {_id: courseId, title, sections, lectureCount, totalMarks} (contract.courses)
- ``progress``     {_id: "<userId>|<courseId>", userId, courseId, resume (contract.progress.
                   ResumePoint; older documents have lastWatchedLecture, lastPosition, lastSeq),
                   w_<lectureId> (seconds covered), i_<lectureId> (watched intervals),
                   f_<lectureId> (first counted ms), x_<lectureId> (implausible advances),
                   completedLectures, unlockedLectures}
- ``activity``     {_id: "<userId>|<YYYY-MM-DD>", userId, date, events: [eventId, ...]}
- ``student_stats`` {_id: userId, longestStreak ($max), totalCompleted, tz}; the current streak
                   and last active day are read from ``activity`` (contract.streaks)
- ``completions``  {_id: eventId, userId, courseId, lectureId, tsMs}: each lecture completion once
- ``quizzes``      {_id: quizId, title, courseId, key, points, maxAttempts} (ingest.api.quiz)
- ``quiz_attempts`` {_id: "<userId>|<actionId>", userId, quizId, attempt, score, correct, delta,
                   answers: [[questionId, option], ...], tsMs, clientTsMs}: every graded submission
- ``audit``        {_id, actionId, userId, type, boards, oldScores, newScores, increment, ip,
                   userAgent, tsMs}: every change of a score (ingest.audit)
- ``flags``        {_id: "<userId>|<rule>|<window>", userId, rule, evidence, tsMs, status,
                   blockedUntilMs}: anomaly rule hits (ingest.anomaly)
- ``board_archive`` {_id: board, board, periodEnd, version, rankedUsers, closedAtMs, entries:
                   [{rank, userId, name, avatarUrl, score}]}: the final standings of a closed
                   weekly/monthly board, written once (store.archive, ingest.seasons)
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

# Re-exported: the progress store needs them too, to refill an expired hash.
from contract.progress import PROGRESS as PROGRESS
from contract.progress import progress_id as progress_id

USERS = "users"
SCORE_EVENTS = "score_events"
BOARD_TOTALS = "board_totals"
ACTIVITY = "activity"
STATS = "student_stats"
COMPLETIONS = "completions"
QUIZ_ATTEMPTS = "quiz_attempts"
AUDIT = "audit"
FLAGS = "flags"


def total_id(board: str, user_id: str) -> str:
    return f"{board}|{user_id}"


async def ensure_indexes(db: Any) -> None:
    """Create every index the code relies on. Idempotent; call at process start."""
    await db[BOARD_TOTALS].create_index([("board", 1), ("score", -1), ("seq", 1)])
    await db[SCORE_EVENTS].create_index([("userId", 1), ("tsMs", -1)])
    await db[SCORE_EVENTS].create_index([("boards", 1), ("applied", 1)])
    await db[PROGRESS].create_index([("userId", 1)])
    await db[ACTIVITY].create_index([("userId", 1), ("date", 1)])
    await db[COMPLETIONS].create_index([("userId", 1)])
    await db[QUIZ_ATTEMPTS].create_index([("userId", 1), ("quizId", 1)])
    # The admin audit query: newest first, all users or one, keyset-paginated on (tsMs, _id).
    # (_id is left out of the keys: nx-27017 cannot index it as a path; tsMs ties are few.)
    await db[AUDIT].create_index([("tsMs", -1)])
    await db[AUDIT].create_index([("userId", 1), ("tsMs", -1)])
    await db[FLAGS].create_index([("status", 1), ("tsMs", -1)])
    await db[FLAGS].create_index([("userId", 1), ("status", 1)])
    await db[FLAGS].create_index([("rule", 1)])


# The array fields of a ``progress`` document, created by whichever upsert inserts the document
# (``$setOnInsert``, except a field that upsert's own ``$addToSet`` creates): on nx-27017 a later
# ``$addToSet`` on a document that lacks the array changes nothing, where MongoDB creates it.
PROGRESS_ARRAYS = ("completedLectures", "unlockedLectures")


def progress_on_insert(user_id: str, course_id: str, added: Collection[str] = ()) -> dict[str, Any]:
    """The ``$setOnInsert`` of a ``progress`` upsert whose ``$addToSet`` touches ``added``."""
    arrays: dict[str, Any] = {field: [] for field in PROGRESS_ARRAYS if field not in added}
    return {"userId": user_id, "courseId": course_id, **arrays}


def user_doc(name: str, avatar_url: str | None, region: str | None) -> dict[str, Any]:
    """The ``$set`` part of a ``users`` upsert (flat fields)."""
    return {"name": name, "avatarUrl": avatar_url, "region": region, "updatedAt": time.time()}
