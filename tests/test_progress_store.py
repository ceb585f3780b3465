"""The ping write against a real Redis: the pipeline stays in step with its replies, packed by hand
on a pooled connection (gateway.fastpath.redis_round_trip, the gateway's) and through redis-py's
own Pipeline (the portable path, the ingest API's); every test runs on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from contract import keys
from contract.progress import Ping
from contract.settings import Settings
from gateway import fastpath
from store.clients import redis_client
from store.progress import ProgressStore


@pytest.fixture(params=["fast", "portable"])
async def store(
    request: pytest.FixtureRequest, settings: Settings, redis: Any
) -> AsyncIterator[ProgressStore]:
    client = redis_client(settings.redis_url)  # the services' own client and pool
    round_trip = fastpath.redis_round_trip if request.param == "fast" else None
    yield ProgressStore(client, complete_threshold=0.95, ttl_s=settings.progress_ttl_s, round_trip=round_trip)
    await client.aclose()


def ping(user: str, position: float, seq: int, *, lecture: str = "l1") -> Ping:
    return Ping(user, "c1", lecture, position, seq, 100.0)


async def resume_point(redis: Any, user: str) -> tuple[str, str, str]:
    found = await redis.hmget(keys.progress(user, "c1"), "lecture", "pos", "seq")
    return found[0], found[1], found[2]


async def test_a_batch_reports_each_ping_and_marks_every_key_dirty(store: ProgressStore, redis: Any) -> None:
    results = await store.save(
        [ping("ana", 10.0, 1), ping("bo", 96.0, 1), ping("ana", 5.0, 0), ping("ana", 20.0, 2)], 1000
    )
    flags = [(r.moved, r.completed) for r in results]
    assert flags == [(True, False), (True, False), (False, False), (True, False)]
    assert await resume_point(redis, "ana") == ("l1", "20.0", "2")
    assert await resume_point(redis, "bo") == ("l1", "96.0", "1")  # resumes there, completes nothing
    dirty = {keys.progress("ana", "c1"), keys.progress("bo", "c1")}
    assert await redis.smembers(keys.PROGRESS_DIRTY) == dirty
    # Lengths in the protocol are counted in bytes: an id from another token issuer may be UTF-8.
    (result,) = await store.save([ping("zoë", 12.5, 1)], 1000)
    assert result.moved
    assert await resume_point(redis, "zoë") == ("l1", "12.5", "1")


async def test_an_error_reply_fails_the_batch_and_the_connection_stays_in_step(
    store: ProgressStore, redis: Any
) -> None:
    # A lecture id with the field separator in it (callers validate ids) shifts the Lua step's
    # arguments: its position is no number and that step fails; the others around it apply.
    await store.save([ping("ana", 1.0, 0)], 1000)  # the pool's connection is open
    connections = (await redis.info("stats"))["total_connections_received"]
    broken = ping("bo", 10.0, 1, lecture="l1\x1fx")
    with pytest.raises(ResponseError):
        await store.save([ping("ana", 10.0, 1), broken, ping("cy", 30.0, 1)], 1000)
    assert await resume_point(redis, "ana") == ("l1", "10.0", "1")
    assert await resume_point(redis, "cy") == ("l1", "30.0", "1")
    # Every reply of the failed batch was read, so the same connection goes on and each batch
    # gets its own replies: a repeated seq does not move, a new one does.
    (repeat,) = await store.save([ping("ana", 10.0, 1)], 1000)
    (newer,) = await store.save([ping("ana", 20.0, 2)], 1000)
    assert (repeat.moved, newer.moved) == (False, True)
    assert (await redis.info("stats"))["total_connections_received"] == connections


async def test_a_flushed_script_cache_and_a_killed_connection_are_recovered(
    store: ProgressStore, redis: Any
) -> None:
    await store.save([ping("ana", 10.0, 1)], 1000)
    await redis.script_flush()
    (result,) = await store.save([ping("ana", 20.0, 2)], 1000)
    assert result.moved
    await redis.client_kill_filter(_type="normal", skipme=True)
    (result,) = await store.save([ping("ana", 30.0, 3)], 1000)
    assert result.moved
    assert await resume_point(redis, "ana") == ("l1", "30.0", "3")


async def test_the_services_redis_client_announces_itself(settings: Settings) -> None:
    # The driver metadata is resolved once for every connection of the pool (see DRIVER_INFO).
    client = redis_client(settings.redis_url)
    try:
        info = await client.client_info()
    finally:
        await client.aclose()
    assert (info["lib-name"], info["lib-ver"]) == ("redis-py", redis.__version__)
