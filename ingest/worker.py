"""The score worker: consumes the score stream and applies each action exactly once.

Per batch, in this order (each step is idempotent, so a crash anywhere is repaired by the retry):

1. ``score_events`` upsert with ``_id = "<userId>|<actionId>"`` (``$setOnInsert``, ``applied:
   false``; an event stored under its bare actionId by an older worker keeps that id): the audit
   log, and what makes an actionId count once per user even after Redis lost its guards;
2. actions whose event is already ``applied: true`` are dropped;
3. one pipelined round trip applies every (board, action) step in Redis (atomic and idempotent
   per board); a missing board is rebuilt from MongoDB (counting the actions in flight, this
   batch's among them; see ``ingest.rebuild``) and the step re-applied;
4. ``board_totals`` and ``users`` bulk upserts, the audit log (``ingest.audit``), the anomaly
   rules (``ingest.anomaly``), then the events are marked applied;
5. one ``BoardEvent`` per changed board is published with its newest version and the users whose
   scores it moved (gateways look up those viewers' own ranks first);
6. the consumer XACKs (only after MongoDB acknowledged).

Run as ``python -m ingest.worker``: it also runs the achievement consumer of the completion
stream (``ingest.achievements``) and the consumer of the gateways' rebuild requests (their own
stream, ``keys.REBUILD_STREAM``). SIGTERM finishes the batch in hand and exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import logging
import os
import signal
import socket
from collections.abc import Collection
from typing import Any

import msgspec
from pymongo import AsyncMongoClient, UpdateOne

from contract import keys
from contract.boards import segments_for
from contract.events import BoardEvent, RebuildRequest, ScoreAction, stream_entry_decoder
from contract.logs import install_redaction, setup_logging
from contract.seasons import period_end
from contract.settings import Settings
from contract.wire import json_encoder
from ingest import audit, store
from ingest.achievements import Achievements
from ingest.anomaly import AnomalyDetector
from ingest.consumer import Entry, StreamConsumer
from ingest.ops import ConsumerMetrics
from ingest.ops import serve as serve_ops
from ingest.rebuild import rebuild_board
from ingest.seasons import Seasons
from store import archive, outage
from store.board_results import APPLIED, CLOSED, MISSING, ApplyResult, Profile
from store.boards import BoardStore
from store.clients import initialized, publish_command, redis_client

log = logging.getLogger("scorecast.worker")


def boards_of(action: ScoreAction) -> list[str]:
    when = dt.datetime.fromtimestamp(action.ts_ms / 1000, dt.UTC)
    return segments_for(when, region=action.region, course_id=action.course_id)


class ScoreWorker:
    """The handler of the score stream (see the module docstring for the order of steps)."""

    def __init__(self, *, redis: Any, db: Any, settings: Settings) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings
        self.boards = BoardStore(redis, guard_ttl_s=settings.action_guard_ttl_s)
        self.anomaly = AnomalyDetector(redis=redis, db=db, settings=settings)

    def consumers(self, name: str) -> list[StreamConsumer]:
        """One consumer per partition of the score stream (one on one Redis)."""
        return StreamConsumer.partitioned(
            self.redis,
            self.settings,
            family=keys.SCORE_STREAM,
            group=keys.WORKER_GROUP,
            consumer=name,
            dead_letter=keys.SCORE_DEAD_LETTER,
            handler=self.handle,
            services=[outage.mongo_service(self.db.client)],
        )

    def rebuild_consumer(self, name: str) -> StreamConsumer:
        """The consumer of the gateways' rebuild requests (``keys.REBUILD_STREAM``)."""
        return StreamConsumer.configured(
            self.redis,
            self.settings,
            stream=keys.REBUILD_STREAM,
            group=keys.WORKER_GROUP,
            consumer=name,
            dead_letter=keys.REBUILD_DEAD_LETTER,
            handler=self.handle_rebuilds,
            services=[outage.mongo_service(self.db.client)],
        )

    async def handle_rebuilds(self, entries: list[Entry]) -> Collection[str]:
        """Rebuild each board asked for (once per batch) if it is still missing, and publish it."""
        poison: set[str] = set()
        boards: set[str] = set()
        for entry_id, fields in entries:
            try:
                entry = stream_entry_decoder.decode(fields["d"])
            except (KeyError, msgspec.DecodeError) as exc:
                log.warning("poison rebuild request %s: %s", entry_id, exc)
                poison.add(entry_id)
                continue
            if isinstance(entry, RebuildRequest):
                boards.add(entry.board)
            else:
                log.warning("not a rebuild request on %s: %s", keys.REBUILD_STREAM, entry_id)
                poison.add(entry_id)
        for board in sorted(boards):
            version = await rebuild_board(self.boards, self.db, board, force=False)
            if version:
                await self._publish({board: version})
        return poison

    async def handle(self, entries: list[Entry]) -> Collection[str]:
        poison: set[str] = set()
        actions: dict[str, ScoreAction] = {}  # by (userId, actionId): an actionId counts once per user
        for entry_id, fields in entries:
            try:
                entry = stream_entry_decoder.decode(fields["d"])
            except (KeyError, msgspec.DecodeError) as exc:
                log.warning("poison entry %s: %s", entry_id, exc)
                poison.add(entry_id)
                continue
            if isinstance(entry, RebuildRequest):
                version = await rebuild_board(self.boards, self.db, entry.board, force=entry.force)
                if version:
                    await self._publish({entry.board: version})
            else:
                actions.setdefault(keys.user_action(entry.user_id, entry.action_id), entry)
        if actions:
            await self.apply(list(actions.values()))
        return poison

    async def apply(self, actions: list[ScoreAction]) -> None:
        events = self.db[store.SCORE_EVENTS]
        ids = await self._event_ids(actions)
        await events.bulk_write(
            [
                UpdateOne({"_id": eid}, {"$setOnInsert": {**event_doc(a), "applied": False}}, upsert=True)
                for a, eid in zip(actions, ids, strict=True)
            ],
            ordered=False,
        )
        done = {d["_id"] async for d in events.find({"_id": {"$in": ids}, "applied": True}, {"_id": 1})}
        pending = [(a, eid) for a, eid in zip(actions, ids, strict=True) if eid not in done]
        if not pending:
            return
        todo = [a for a, _ in pending]
        # The board guards carry the event id too, so a rebuild's "counted" marks (event ids)
        # and the worker's steps name an action the same way.
        steps = [(board, eid, a.user_id, a.increment) for a, eid in pending for board in boards_of(a)]
        results = await self.boards.apply_many(steps)
        newest: dict[str, int] = {}
        missing = {r.board for r in results if r.status == MISSING}
        if missing:
            # A rebuild counts this batch's actions itself (they are in flight), so their
            # retried steps answer ALREADY_APPLIED: the rebuilt board's version is published.
            for board in missing:
                rebuilt = await rebuild_board(self.boards, self.db, board, force=False)
                newest[board] = rebuilt or await self.boards.version(board)
            retried = iter(await self.boards.apply_many(s for s in steps if s[0] in missing))
            results = [next(retried) if r.status == MISSING else r for r in results]
            # A late action on a period board whose keys expired after its archive: closed.
            gone = {r.board for r in results if r.status == MISSING}
            archived = {b for b in gone if await archive.find(self.db, b) is not None}
            results = [
                dataclasses.replace(r, status=CLOSED) if r.status == MISSING and r.board in archived else r
                for r in results
            ]
        await self._persist(todo, steps, results)
        await self._audit(todo, steps, results)
        await self.anomaly.observe(todo)
        await events.update_many({"_id": {"$in": [eid for _, eid in pending]}}, {"$set": {"applied": True}})
        # Whose scores moved, per board: gateways look up those viewers' own ranks first. On a
        # rebuilt board the rebuild counted this batch's actions (their steps say so).
        moved: dict[str, set[str]] = {}
        for (board, _, user_id, _), r in zip(steps, results, strict=True):
            if r.status == APPLIED:
                newest[board] = max(newest.get(board, 0), r.seq)
            if r.status == APPLIED or board in missing:
                moved.setdefault(board, set()).add(user_id)
        await self._publish(newest, moved)

    async def _event_ids(self, actions: list[ScoreAction]) -> list[str]:
        """The ``score_events`` id of each action: ``<userId>|<actionId>``, or its bare actionId
        when an older worker stored the same user's action under it (so an action in flight
        across the upgrade still counts once). Another user's old event under the same actionId
        is not theirs: it no longer costs them their points."""
        legacy = {
            d["_id"]: d.get("userId")
            async for d in self.db[store.SCORE_EVENTS].find(
                {"_id": {"$in": [a.action_id for a in actions]}}, {"userId": 1}
            )
        }
        return [
            a.action_id if legacy.get(a.action_id) == a.user_id else keys.user_action(a.user_id, a.action_id)
            for a in actions
        ]

    async def _persist(
        self, todo: list[ScoreAction], steps: list[tuple[str, str, str, int]], results: list[ApplyResult]
    ) -> None:
        totals: dict[tuple[str, str], ApplyResult] = {}
        for (board, _, user_id, _), r in zip(steps, results, strict=True):
            if r.status == MISSING:
                raise RuntimeError(f"board {board} still missing after rebuild")
            if r.status == CLOSED:
                continue  # its final standings are archived: the action changes nothing there
            known = totals.get((board, user_id))
            if known is None or r.total > known.total:
                totals[(board, user_id)] = r
        await self.db[store.BOARD_TOTALS].bulk_write(
            [
                UpdateOne(
                    {"_id": store.total_id(board, user_id)},
                    {
                        "$max": {"score": r.total, "seq": r.seq},
                        "$setOnInsert": {"board": board, "userId": user_id},
                    },
                    upsert=True,
                )
                for (board, user_id), r in totals.items()
            ],
            ordered=False,
        )
        users = {a.user_id: a for a in todo}
        await self.db[store.USERS].bulk_write(
            [
                UpdateOne({"_id": uid}, {"$set": store.user_doc(a.name, a.avatar_url, a.region)}, upsert=True)
                for uid, a in users.items()
            ],
            ordered=False,
        )
        await self.boards.cache_profiles(
            {uid: Profile(name=a.name, avatar_url=a.avatar_url, region=a.region) for uid, a in users.items()},
            ttl_s=self.settings.user_cache_ttl_s,
        )

    async def _audit(
        self, todo: list[ScoreAction], steps: list[tuple[str, str, str, int]], results: list[ApplyResult]
    ) -> None:
        # Steps are made action by action, board by board (see apply): matched up by position.
        done = iter(zip(steps, results, strict=True))
        docs = []
        for a in todo:
            applied = [(step[0], r) for step, r in itertools.islice(done, len(boards_of(a)))]
            docs.append(audit.action_doc(a, applied))
        await audit.write(self.db, [d for d in docs if d is not None])

    async def _publish(self, versions: dict[str, int], moved: dict[str, set[str]] | None = None) -> None:
        """Publish each board's new version; a period board joins the rollover's registry."""
        versions = {board: version for board, version in versions.items() if version}
        if not versions:
            return
        pipe = self.redis.pipeline(transaction=False)
        publish = publish_command(self.redis)
        for board, version in versions.items():
            users = sorted(moved.get(board, ())) if moved else []
            event = json_encoder.encode(BoardEvent(board=board, version=version, users=users))
            pipe.execute_command(publish, keys.board_channel(board), event)
            if period_end(board) is not None:
                pipe.sadd(keys.SEASON_BOARDS, board)
        await pipe.execute()


def event_doc(action: ScoreAction) -> dict[str, Any]:
    return {
        "userId": action.user_id,
        "actionId": action.action_id,
        "increment": action.increment,
        "boards": boards_of(action),
        "tsMs": action.ts_ms,
        "source": action.source,
        "courseId": action.course_id,
        "clientTsMs": action.client_ts_ms,
    }


async def main(settings: Settings) -> None:
    redis = await initialized(redis_client(settings.redis_url, cluster=settings.redis_cluster))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    db = client[settings.mongo_db]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    name = settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"
    try:
        await store.ensure_indexes(db)
        worker = ScoreWorker(redis=redis, db=db, settings=settings)
        consumers = [
            *worker.consumers(name),
            worker.rebuild_consumer(name),
            *Achievements(redis=redis, db=db, settings=settings).consumers(name),
        ]
        log.info("worker %s consuming %s", name, ", ".join(c.stream for c in consumers))
        metrics = ConsumerMetrics(redis, {c.stream: (c.family, c.group) for c in consumers})
        for c in consumers:
            c.metrics = metrics
        ops = await serve_ops(
            host=settings.metrics_host, port=settings.worker_metrics_port, registry=metrics.registry,
            refresh=metrics.refresh, refresh_failures=metrics.refresh_failures,
            services=[outage.redis_service(redis), outage.mongo_service(client)],
        )  # fmt: skip
        seasons = Seasons(redis=redis, db=db, settings=settings, boards=worker.boards)
        try:
            await asyncio.gather(*(c.run(stop) for c in consumers), seasons.run(stop))
        finally:
            if ops:
                await ops.close()
    finally:
        await redis.aclose()
        await client.close()


if __name__ == "__main__":
    install_redaction()
    _settings = Settings.from_env()
    setup_logging(log_format=_settings.log_format, level=_settings.log_level)
    import uvloop

    uvloop.run(main(_settings))
