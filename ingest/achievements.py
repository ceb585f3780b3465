"""The achievement consumer: what a completed lecture adds to a learner's durable history.

Consumes the completion stream (run inside ``python -m ingest.worker``). Per event, every step
is idempotent, so a redelivery after a crash changes nothing twice:

1. the ``progress`` document: ``completedLectures`` and the next lecture in
   ``unlockedLectures`` (``$addToSet``: incremental, the course is never re-read lecture by
   lecture; marks obtained follow from the completed set and the course's marks);
2. the activity heatmap: one document per user per local day, counting each event once
   (the day's ``events`` set);
3. the longest streak (``$max``) and totals in ``student_stats``, in the learner's time zone;
   streaks come from the set of active days (``contract.streaks``), so a late or redelivered
   event of an earlier day counts, and concurrent writers cannot lose a day;
4. a score on the course board: a ScoreAction whose actionId is the event id (the score worker
   counts an actionId once, ever).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from typing import Any

import msgspec

from contract import keys
from contract.errors import BadRequest
from contract.events import CompletionEvent, ScoreAction, completion_event_decoder
from contract.settings import Settings
from contract.streaks import current_streak, length, local_day, run_of, zone
from contract.wire import json_encoder
from ingest.consumer import Entry, StreamConsumer
from ingest.store import ACTIVITY, COMPLETIONS, PROGRESS, STATS, progress_id, progress_on_insert
from store import outage
from store.courses import CourseCatalog

log = logging.getLogger("scorecast.achievements")


async def record_activity(db: Any, user_id: str, day: dt.date, event_id: str) -> bool:
    """Count one activity on ``day`` for ``user_id``, once per ``event_id``. True when new.

    The day's count is the size of its ``events`` set: ``$addToSet`` makes a redelivery a no-op.
    """
    result = await db[ACTIVITY].update_one(
        {"_id": f"{user_id}|{day.isoformat()}"},
        {"$addToSet": {"events": event_id}, "$set": {"userId": user_id, "date": day.isoformat()}},
        upsert=True,
    )
    return bool(result.modified_count or result.upserted_id)


STREAK_WINDOW_DAYS = 64  # active days read around a day at first; doubled while a run fills it


async def active_days(db: Any, user_id: str, first: dt.date, last: dt.date) -> set[dt.date]:
    """The user's active days from ``first`` to ``last`` (one indexed range query)."""
    found = db[ACTIVITY].find(
        {"userId": user_id, "date": {"$gte": first.isoformat(), "$lte": last.isoformat()}},
        {"_id": 0, "date": 1},
    )
    return {dt.date.fromisoformat(doc["date"]) async for doc in found}


async def run_around(db: Any, user_id: str, day: dt.date, *, ahead: bool) -> int:
    """The length of the run of active days through ``day`` (looking past it only when ``ahead``),
    reading windows that double until the run ends inside one."""
    window = STREAK_WINDOW_DAYS
    while True:
        first, last = day - dt.timedelta(days=window), day + dt.timedelta(days=window if ahead else 0)
        days = await active_days(db, user_id, first, last)
        run = run_of(days, day)
        if run is None or (run[0] > first and (run[1] < last or not ahead)):
            return length(run)
        window *= 2


async def record_streak(db: Any, user_id: str, day: dt.date, tz: str) -> None:
    """Raise the user's longest streak to the run of active days through ``day``; call it after
    :func:`record_activity` recorded ``day``.

    Atomic and order-independent: the longest streak only ever moves up (``$max`` on one
    document), and every writer reads the set of days after adding its own, so of two concurrent
    writers the later reader sees both days; a late event of an earlier day joins its run.
    """
    run = await run_around(db, user_id, day, ahead=True)
    await db[STATS].update_one(
        {"_id": user_id}, {"$max": {"longestStreak": run}, "$set": {"tz": tz}}, upsert=True
    )


async def streak_summary(db: Any, user_id: str, today: dt.date) -> tuple[int, int, dt.date | None]:
    """(current streak, longest streak, last active day) of the user as of ``today``.

    The current streak is read from the active days at read time (it ends today or yesterday,
    or it is 0), so it never depends on the order activities were recorded in."""
    stats = await db[STATS].find_one({"_id": user_id}) or {}
    newest = await db[ACTIVITY].find_one(
        {"userId": user_id, "date": {"$lte": today.isoformat()}}, {"_id": 0, "date": 1}, sort=[("date", -1)]
    )
    last = dt.date.fromisoformat(newest["date"]) if newest else None
    current = 0
    if last is not None and current_streak({last}, last, today):
        current = await run_around(db, user_id, last, ahead=False)
    return current, max(int(stats.get("longestStreak", 0)), current), last


class Achievements:
    def __init__(self, *, redis: Any, db: Any, settings: Settings) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings
        self.catalog = CourseCatalog(
            redis,
            db,
            ttl_s=settings.course_meta_ttl_s,
            max_entries=settings.course_cache_max_entries,
            max_unknown=settings.course_cache_max_unknown,
        )

    def consumers(self, name: str) -> list[StreamConsumer]:
        """One consumer per partition of the completion stream (one on one Redis)."""
        return StreamConsumer.partitioned(
            self.redis,
            self.settings,
            family=keys.COMPLETION_STREAM,
            group=keys.ACHIEVEMENT_GROUP,
            consumer=name,
            dead_letter=keys.COMPLETION_DEAD_LETTER,
            handler=self.handle,
            services=[outage.mongo_service(self.db.client)],
        )

    async def handle(self, entries: list[Entry]) -> Collection[str]:
        poison: set[str] = set()
        for entry_id, fields in entries:
            try:
                event = completion_event_decoder.decode(fields["d"])
            except (KeyError, msgspec.DecodeError) as exc:
                log.warning("poison completion %s: %s", entry_id, exc)
                poison.add(entry_id)
                continue
            await self.apply(event)
        return poison

    async def apply(self, event: CompletionEvent) -> None:
        meta = await self.catalog.get(event.course_id)
        unlocks = meta.next_lecture(event.lecture_id) if meta else None
        additions: dict[str, Any] = {"completedLectures": event.lecture_id}
        if unlocks:
            additions["unlockedLectures"] = unlocks
        await self.db[PROGRESS].update_one(
            {"_id": progress_id(event.user_id, event.course_id)},
            {
                "$addToSet": additions,
                "$setOnInsert": progress_on_insert(event.user_id, event.course_id, additions),
            },
            upsert=True,
        )
        await self.db[COMPLETIONS].update_one(
            {"_id": event.event_id},
            {
                "$setOnInsert": {
                    "userId": event.user_id,
                    "courseId": event.course_id,
                    "lectureId": event.lecture_id,
                    "tsMs": event.ts_ms,
                }
            },
            upsert=True,
        )
        try:
            tz = zone(event.tz).key
        except BadRequest:
            tz = "UTC"  # the token's zone was validated at login; never drop a completion over it
        day = local_day(event.ts_ms, tz)
        await record_activity(self.db, event.user_id, day, event.event_id)
        await record_streak(self.db, event.user_id, day, tz)
        total = await self.db[COMPLETIONS].count_documents({"userId": event.user_id})
        await self.db[STATS].update_one(
            {"_id": event.user_id}, {"$set": {"totalCompleted": total}}, upsert=True
        )
        action = ScoreAction(
            action_id=event.event_id,
            user_id=event.user_id,
            name=event.name or event.user_id,
            increment=max(event.marks, self.settings.completion_score),
            ts_ms=event.ts_ms,
            region=event.region,
            course_id=event.course_id,
            source="completion",
        )
        if meta and event.first_watch_ms and event.lecture_id not in meta.completable:
            # What the coverage_too_fast rule judges: the seconds that had to be covered, and the
            # wall-clock time from the first counted second to the completion.
            action.covered_s = self.settings.complete_threshold * meta.durations.get(event.lecture_id, 0.0)
            action.watch_ms = max(0, event.ts_ms - event.first_watch_ms)
        stream = keys.score_stream(action.user_id, self.settings.stream_partition_count)
        await self.redis.xadd(stream, {"d": json_encoder.encode(action)})
