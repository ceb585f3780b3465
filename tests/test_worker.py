"""The worker on real processes: exactly once, crash recovery, dead letters, rebuild, ties."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import time
import uuid
from typing import Any

import httpx
import pytest
from redis.exceptions import ResponseError

from contract import keys
from contract.auth import TokenIssuer
from contract.boards import monthly_name, weekly_name
from contract.events import ScoreAction
from contract.settings import Settings
from devstack.processes import Stack
from ingest import store
from ingest.consumer import StreamConsumer
from ingest.rebuild import rebuild_board
from ingest.worker import ScoreWorker
from store.board_results import ALREADY_APPLIED, APPLIED
from store.boards import BoardStore
from tests.eventually import eventually
from tests.helpers import bearer, both_redis, login, score, scorer_token


async def put_course(http: httpx.AsyncClient, issuer: TokenIssuer, course_id: str) -> None:
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    lecture = {"lectureId": "l1", "title": "L1", "durationSeconds": 60}
    course = {"title": course_id, "sections": [{"sectionId": "s", "title": "S", "lectures": [lecture]}]}
    r = await http.put(f"/api/v1/courses/{course_id}", json=course, headers=bearer(admin))
    assert r.status_code == 200, r.text


@pytest.fixture
def scorer(issuer: TokenIssuer) -> str:
    return scorer_token(issuer)


async def post(
    http: httpx.AsyncClient,
    scorer: str,
    user_id: str,
    increment: int,
    action_id: str | None = None,
    **extra: Any,
) -> int:
    r = await score(http, scorer, user_id, increment, action_id, **extra)
    assert r.status_code in (200, 202), r.text
    return r.status_code


async def board(http: httpx.AsyncClient, name: str = "global", limit: int = 100) -> list[tuple[str, int]]:
    r = await http.get("/api/v1/scores/leaderboard", params={"board": name, "limit": limit})
    assert r.status_code == 200, r.text
    return [(e["userId"], e["score"]) for e in r.json()["entries"]]


@both_redis
async def test_every_segment_board_is_updated(stack: Stack, issuer: TokenIssuer, scorer: str) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    now = dt.datetime.now(dt.UTC)
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "ada", "Ada Lovelace", region="eu", avatarUrl="https://a/b.png")
        await put_course(http, issuer, "py101")
        await post(http, scorer, "ada", 12, courseId="py101")
        for name in (
            "global",
            weekly_name(now),
            monthly_name(now),
            "weekly",
            "monthly",
            "region:EU",
            "course:py101",
        ):
            assert await eventually(lambda n=name: board(http, n), until=lambda b: b == [("ada", 12)]) == [
                ("ada", 12)
            ]
        page = (await http.get("/api/v1/scores/leaderboard")).json()
        assert page["entries"][0]["name"] == "Ada Lovelace"
        assert page["entries"][0]["avatarUrl"] == "https://a/b.png"
        assert page["version"] > 0
        around = (await http.get("/api/v1/scores/around/ada")).json()
        assert around["self"]["rank"] == 1
        assert (await http.get("/api/v1/scores/rank/ada")).json() == {
            "board": "global",
            "userId": "ada",
            "rank": 1,
            "score": 12,
        }


async def test_duplicate_action_counts_once_even_after_redis_is_flushed(
    stack: Stack, scorer: str, redis: Any, mongo: Any
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    action_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "ada", "Ada")
        assert await post(http, scorer, "ada", 10, action_id) == 202
        assert await post(http, scorer, "ada", 10, action_id) == 200
        await eventually(lambda: board(http), until=lambda b: b == [("ada", 10)])
        await redis.flushall()  # guards, boards and stream group are gone; MongoDB remembers
        assert await post(http, scorer, "ada", 10, action_id) == 202
        await post(
            http, scorer, "ada", 1
        )  # a new action after the duplicate: when it shows, both were handled
        assert await eventually(lambda: board(http), until=lambda b: b == [("ada", 11)]) == [("ada", 11)]
    assert await mongo[store.SCORE_EVENTS].count_documents({"userId": "ada"}) == 2


@pytest.mark.timeout(120)
async def test_worker_killed_mid_batch_loses_and_doubles_nothing(
    stack: Stack, scorer: str, redis: Any, mongo: Any
) -> None:
    stack.start("ingest.api", rate_limit_per_s=10_000.0, rate_limit_burst=10_000)
    users = [f"u{i}" for i in range(12)]
    expected = dict.fromkeys(users, 0)
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        for user in users:
            await login(http, user, user)
        for n in range(600):
            user = users[n % len(users)]
            increment = 1 + n % 17
            expected[user] += increment
            await post(http, scorer, user, increment)
        first = stack.start("ingest.worker", stream_batch_size=20, consumer_name="doomed")
        # Kill it while it is working through the backlog.
        await eventually(
            lambda: mongo[store.SCORE_EVENTS].count_documents({"applied": True}), until=lambda n: n >= 60
        )
        first.kill()
        assert await mongo[store.SCORE_EVENTS].count_documents({"applied": True}) < 600
        stack.start("ingest.worker", consumer_name="rescuer")
        want = sorted(expected.items(), key=lambda kv: -kv[1])

        async def totals() -> list[tuple[str, int]]:
            return sorted(await board(http), key=lambda kv: -kv[1])

        assert await eventually(totals, until=lambda got: got == want, timeout_s=60) == want
    applied = await eventually(
        lambda: mongo[store.SCORE_EVENTS].count_documents({"applied": True}), until=lambda n: n == 600
    )
    assert applied == 600
    durable = {d["userId"]: d["score"] async for d in mongo[store.BOARD_TOTALS].find({"board": "global"})}
    assert durable == expected
    pending = await eventually(
        lambda: redis.xpending(keys.SCORE_STREAM, keys.WORKER_GROUP), until=lambda p: p["pending"] == 0
    )
    assert pending["pending"] == 0


async def test_poison_entries_go_to_the_dead_letter_stream(stack: Stack, scorer: str, redis: Any) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    await redis.xadd(keys.SCORE_STREAM, {"d": "{not json"})
    await redis.xadd(keys.SCORE_STREAM, {"unexpected": "field"})
    await redis.xadd(keys.SCORE_STREAM, {"d": json.dumps({"kind": "score", "actionId": "x"})})
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "ada", "Ada")
        await post(http, scorer, "ada", 3)
        assert await eventually(lambda: board(http), until=lambda b: b == [("ada", 3)]) == [("ada", 3)]
    dead = await eventually(lambda: redis.xrange(keys.SCORE_DEAD_LETTER), until=lambda d: len(d) == 3)
    assert {fields["reason"] for _, fields in dead} == {"rejected by the handler"}


async def test_an_entry_that_keeps_killing_consumers_is_dead_lettered(redis: Any) -> None:
    stream, group, dead = "stream:test", "g", "stream:test:dead"
    handled: list[str] = []

    async def handler(entries: list[tuple[str, dict[str, str]]]) -> set[str]:
        handled.extend(entry_id for entry_id, _ in entries)
        return set()

    consumer = StreamConsumer(
        redis, stream=stream, group=group, consumer="survivor", dead_letter=dead, handler=handler,
        batch_size=10, block_ms=10, claim_idle_ms=0, max_deliveries=3,
    )  # fmt: skip
    await consumer.ensure_group()
    bad = await redis.xadd(stream, {"d": "crashes every consumer"})
    # Consumers that read it and died: every claim counts one more delivery.
    await redis.xreadgroup(group, "ghost", {stream: ">"})
    for _ in range(3):
        await redis.xclaim(stream, group, "ghost", 0, [bad])
    good = await redis.xadd(stream, {"d": "fine"})
    while await consumer.step():
        pass
    assert handled == [good]
    dead_entries = await redis.xrange(dead)
    assert [(f["sourceId"], f["d"]) for _, f in dead_entries] == [(bad, "crashes every consumer")]
    assert (await redis.xpending(stream, group))["pending"] == 0


async def test_a_failing_batch_is_retried_without_counting_deliveries(redis: Any) -> None:
    attempts: list[int] = []

    async def flaky(entries: list[tuple[str, dict[str, str]]]) -> set[str]:
        attempts.append(len(entries))
        if len(attempts) < 5:
            raise ConnectionError("MongoDB is down")
        return set()

    consumer = StreamConsumer(
        redis, stream="s", group="g", consumer="c", dead_letter="s:dead", handler=flaky,
        batch_size=10, block_ms=10, claim_idle_ms=60_000, max_deliveries=1,
    )  # fmt: skip
    await consumer.ensure_group()
    await redis.xadd("s", {"d": "1"})
    for _ in range(4):
        with pytest.raises(ConnectionError):
            await consumer.step()
    assert await consumer.step() == 1
    assert attempts == [1, 1, 1, 1, 1]
    assert await redis.xlen("s:dead") == 0


@both_redis
async def test_deleted_board_is_rebuilt_from_mongodb(stack: Stack, scorer: str, redis: Any) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        for user in ["a", "b", "c", "d", "e"]:
            await login(http, user, user.upper())
        for i, user in enumerate(["a", "b", "c", "d"]):
            await post(http, scorer, user, 10 * (i + 1))
        # b's 20 applied first: on a cluster b and e may be on different stream partitions, applied
        # in parallel, and a tie goes to who reached the score first on the board.
        await eventually(lambda: board(http), until=lambda b: len(b) == 4)
        await post(http, scorer, "e", 20)  # ties with b, later
        want = [("d", 40), ("c", 30), ("b", 20), ("e", 20), ("a", 10)]
        await eventually(lambda: board(http), until=lambda b: b == want)
        version = (await http.get("/api/v1/scores/leaderboard")).json()["version"]
        k = keys.board_keys("global")
        await redis.delete(k.zset, k.version, k.members)
        assert await board(http) == want  # rebuilt by the read itself, tie order kept
        assert (await http.get("/api/v1/scores/leaderboard")).json()["version"] > version
        # And the worker keeps applying on top of the rebuilt board.
        await post(http, scorer, "a", 35)
        want = [("a", 45), ("d", 40), ("c", 30), ("b", 20), ("e", 20)]
        assert await eventually(lambda: board(http), until=lambda b: b == want) == want


async def test_ties_go_to_who_reached_the_score_first(stack: Stack, scorer: str) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "a", "A")
        await login(http, "b", "B")
        await post(http, scorer, "a", 10)
        await eventually(lambda: board(http), until=lambda got: got == [("a", 10)])
        await post(http, scorer, "b", 10)
        assert await eventually(lambda: board(http), until=lambda got: len(got) == 2) == [
            ("a", 10),
            ("b", 10),
        ]
        await post(http, scorer, "b", 5)
        await eventually(lambda: board(http), until=lambda got: got[0] == ("b", 15))
        await post(http, scorer, "a", 5)
        want = [("b", 15), ("a", 15)]
        assert await eventually(lambda: board(http), until=lambda got: got == want) == want


@both_redis
async def test_admin_rebuild_replaces_a_drifted_board(
    stack: Stack, issuer: TokenIssuer, scorer: str, redis: Any
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "a", "A")
        await post(http, scorer, "a", 10)
        await eventually(lambda: board(http), until=lambda got: got == [("a", 10)])
        k = keys.board_keys("global")
        await redis.zadd(k.zset, {"000000000000001intruder": 999})  # drift, not in MongoDB
        assert ("intruder", 999) in await board(http)
        admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
        r = await http.post("/api/v1/admin/boards/global/rebuild", headers=bearer(admin))
        assert r.status_code == 202
        assert await eventually(lambda: board(http), until=lambda got: got == [("a", 10)]) == [("a", 10)]


@both_redis
@pytest.mark.parametrize("totals_include_in_flight", [False, True])
async def test_rebuild_counts_an_action_in_flight_exactly_once(
    redis: Any, mongo: Any, totals_include_in_flight: bool
) -> None:
    """Redis lost the board while a worker was between its Redis step and MongoDB: the event is
    stored but not yet marked applied, and its total may or may not have reached board_totals."""
    await store.ensure_indexes(mongo)
    boards = BoardStore(redis)
    events = [
        {"_id": "a1", "userId": "ada", "increment": 10, "boards": ["global"], "tsMs": 1, "applied": True},
        {"_id": "b1", "userId": "bob", "increment": 12, "boards": ["global"], "tsMs": 2, "applied": True},
        {"_id": "a2", "userId": "ada", "increment": 5, "boards": ["global"], "tsMs": 3, "applied": False},
        {"_id": "c1", "userId": "cy", "increment": 7, "boards": ["global"], "tsMs": 4, "applied": False},
    ]
    await mongo[store.SCORE_EVENTS].insert_many(events)
    ada = 15 if totals_include_in_flight else 10
    await mongo[store.BOARD_TOTALS].insert_many(
        [
            {"_id": "global|ada", "board": "global", "userId": "ada", "score": ada, "seq": 1},
            {"_id": "global|bob", "board": "global", "userId": "bob", "score": 12, "seq": 2},
        ]
    )
    # The read API and a worker may rebuild at once: one commit wins, neither spoils the other.
    versions = await asyncio.gather(*(rebuild_board(boards, mongo, "global", force=False) for _ in range(3)))
    assert [v for v in versions if v] == [await boards.version("global")]
    top = await boards.top("global", 10)
    assert [(r.user_id, r.score) for r in top.rows] == [("ada", 15), ("bob", 12), ("cy", 7)]
    # The worker finishing its batch applies a2 and c1 again: counted already, they change nothing.
    again = await boards.apply_many([("global", "a2", "ada", 5), ("global", "c1", "cy", 7)])
    assert [(r.status, r.total) for r in again] == [(ALREADY_APPLIED, 15), (ALREADY_APPLIED, 7)]
    # A later action counts as usual.
    later = await boards.apply_many([("global", "c2", "cy", 8)])
    assert [(r.status, r.total) for r in later] == [(APPLIED, 15)]
    ranked = await boards.top("global", 10)
    assert [(r.user_id, r.score) for r in ranked.rows] == [("ada", 15), ("cy", 15), ("bob", 12)]
    # A board that came back meanwhile is left alone by a rebuild without force.
    assert await rebuild_board(boards, mongo, "global", force=False) == 0


class StoresAfterTheFirstRead:
    """The test's real MongoDB database, where another worker stores ``doc`` in ``score_events``
    right after the first query of that collection returned: the interleaving of a rebuild (its
    read of the in-flight actions) with a worker storing a new batch's events before it applies
    them."""

    def __init__(self, db: Any, doc: dict[str, Any]) -> None:
        self.db = db
        self.doc: dict[str, Any] | None = doc

    def __getitem__(self, name: str) -> Any:
        return self if name == store.SCORE_EVENTS else self.db[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db[store.SCORE_EVENTS], name)

    async def find(self, *args: Any, **kwargs: Any) -> Any:
        async for doc in self.db[store.SCORE_EVENTS].find(*args, **kwargs):
            yield doc
        if self.doc is not None:
            doc, self.doc = self.doc, None
            await self.db[store.SCORE_EVENTS].insert_one(doc)


@both_redis
async def test_an_action_stored_while_a_rebuild_reads_is_counted_once(redis: Any, mongo: Any) -> None:
    """A board missing, two workers: one rebuilds it while the other stores a new action of the
    same user (``applied: false``) between the rebuild's read of the in-flight actions and its
    read of that user's history. The rebuild must not count the new action: it sets no guard for
    it, so the worker that stored it applies it once more (found by the cluster simulation,
    seed 16, two workers: a quiz's 75 points counted twice on region:EU)."""
    await store.ensure_indexes(mongo)
    boards = BoardStore(redis)
    await mongo[store.SCORE_EVENTS].insert_many(
        [
            {"_id": "a1", "userId": "ada", "increment": 10, "boards": ["global"], "tsMs": 1, "applied": True},
            {"_id": "a2", "userId": "ada", "increment": 5, "boards": ["global"], "tsMs": 2, "applied": False},
        ]
    )
    await mongo[store.BOARD_TOTALS].insert_one(
        {"_id": "global|ada", "board": "global", "userId": "ada", "score": 10, "seq": 1}
    )
    late = {"_id": "a3", "userId": "ada", "increment": 4, "boards": ["global"], "tsMs": 3, "applied": False}
    assert await rebuild_board(boards, StoresAfterTheFirstRead(mongo, late), "global", force=False)
    top = await boards.top("global", 10)
    assert [(r.user_id, r.score) for r in top.rows] == [("ada", 15)]  # a1 and the in-flight a2
    # The other worker applies its batch: a3 counts now, once; a2 was counted by the rebuild.
    applied = await boards.apply_many([("global", "a3", "ada", 4), ("global", "a2", "ada", 5)])
    assert [(r.status, r.total) for r in applied] == [(APPLIED, 19), (ALREADY_APPLIED, 19)]
    top = await boards.top("global", 10)
    assert [(r.user_id, r.score) for r in top.rows] == [("ada", 19)]


async def test_worker_stops_cleanly_on_sigterm(stack: Stack) -> None:
    worker = stack.start("ingest.worker")
    # A SIGTERM before the interpreter has installed its handlers is the default kill; wait until it runs.
    await eventually(lambda: asyncio.sleep(0, worker.log()), until=lambda log: "consuming" in log)
    assert worker.stop() == 0


@pytest.mark.timeout(120)
async def test_a_killed_workers_batch_is_taken_over_by_heartbeat_not_after_claim_idle(
    stack: Stack, scorer: str, redis: Any, mongo: Any
) -> None:
    """kill -9 while entries are pending: another worker applies them long before CLAIM_IDLE_MS."""
    stack.start("ingest.api", rate_limit_per_s=10_000.0, rate_limit_burst=10_000)
    slow_claim = {"claim_idle_ms": 3_600_000}  # only the heartbeat takeover can rescue in time
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "ada", "Ada")
        for _ in range(400):
            await post(http, scorer, "ada", 1)
        doomed = stack.start("ingest.worker", stream_batch_size=20, consumer_name="doomed", **slow_claim)
        assert doomed.process is not None

        async def frozen_with_batch_in_hand() -> int:
            """Freeze the worker; thaw and retry until it is frozen holding entries."""
            doomed.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                held = await redis.xpending_range(
                    keys.SCORE_STREAM, keys.WORKER_GROUP, min="-", max="+", count=100, consumername="doomed"
                )
            except ResponseError:  # NOGROUP: the worker has not created its group yet
                held = []
            if not held:
                doomed.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            return len(held)

        await eventually(frozen_with_batch_in_hand, timeout_s=60, interval_s=0.02)
        doomed.kill()
        assert await mongo[store.SCORE_EVENTS].count_documents({"applied": True}) < 400
        stack.start("ingest.worker", consumer_name="rescuer", **slow_claim)
        assert await eventually(lambda: board(http), until=lambda b: b == [("ada", 400)], timeout_s=60) == [
            ("ada", 400)
        ]
    pending = await eventually(
        lambda: redis.xpending(keys.SCORE_STREAM, keys.WORKER_GROUP), until=lambda p: p["pending"] == 0
    )
    assert pending["pending"] == 0
    names = await eventually(
        lambda: redis.xinfo_consumers(keys.SCORE_STREAM, keys.WORKER_GROUP),
        until=lambda cs: "doomed" not in {c["name"] for c in cs},
    )
    assert {c["name"] for c in names} == {"rescuer"}


def score_action(user_id: str, action_id: str, increment: int, region: str | None = None) -> ScoreAction:
    return ScoreAction(
        action_id=action_id, user_id=user_id, name=user_id.title(), increment=increment,
        ts_ms=int(time.time() * 1000), region=region,
    )  # fmt: skip


async def test_an_action_id_counts_once_per_user_in_the_worker(
    settings: Settings, redis: Any, mongo: Any
) -> None:
    """Two users' actions that share an actionId are two actions: each counts, on every board."""
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    shared = str(uuid.uuid4())
    await worker.apply([score_action("ada", shared, 5, "EU"), score_action("bob", shared, 7, "EU")])
    await worker.apply([score_action("bob", shared, 7, "EU")])  # a redelivery of Bob's: still once
    for name in ("global", "region:EU"):
        top = await worker.boards.top(name, 10)
        assert [(r.user_id, r.score) for r in top.rows] == [("bob", 7), ("ada", 5)]
    ids = sorted([d["_id"] async for d in mongo[store.SCORE_EVENTS].find({})])
    assert ids == [f"ada|{shared}", f"bob|{shared}"]


async def test_events_stored_under_a_bare_action_id_still_count_once(
    settings: Settings, redis: Any, mongo: Any
) -> None:
    """score_events written before actionIds were per user have ``_id = actionId``: a redelivery
    of that action (same user) is not counted again; another user's action with that id is."""
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    old = str(uuid.uuid4())
    await mongo[store.SCORE_EVENTS].insert_one(
        {"_id": old, "userId": "ada", "increment": 5, "boards": ["global"], "tsMs": 1, "applied": True}
    )
    await mongo[store.BOARD_TOTALS].insert_one(
        {"_id": "global|ada", "board": "global", "userId": "ada", "score": 5, "seq": 1}
    )
    await worker.apply([score_action("ada", old, 5), score_action("bob", old, 3)])
    top = await worker.boards.top("global", 10)
    assert [(r.user_id, r.score) for r in top.rows] == [("ada", 5), ("bob", 3)]
    assert await mongo[store.SCORE_EVENTS].count_documents({"userId": "ada"}) == 1
