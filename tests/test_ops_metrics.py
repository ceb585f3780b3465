"""Operations endpoints of real processes: the worker's and the flusher's own port (/metrics,
/healthz, /readyz) and the ingest API's security counters, read by scraping /metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from contract import keys
from contract.auth import TokenIssuer
from contract.events import ScoreAction
from contract.progress import Ping
from contract.settings import Settings
from contract.wire import json_encoder
from devstack.processes import Stack
from devstack.servers import free_port
from store.progress import ProgressStore
from tests.eventually import eventually
from tests.helpers import login, score, scorer_token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """Every sample of ``url``'s Prometheus text, by name and labels."""
    async with httpx.AsyncClient() as http:
        r = await http.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), -1.0)


def score_entry(user: str, increment: int) -> dict[str, bytes]:
    action = ScoreAction(
        action_id=str(uuid.uuid4()), user_id=user, name=user, increment=increment,
        ts_ms=int(time.time() * 1000),
    )  # fmt: skip
    return {"d": json_encoder.encode(action)}


async def test_worker_exports_processing_backlog_and_dead_letters(stack: Stack, redis: Any) -> None:
    port = free_port()
    stack.start("ingest.worker", worker_metrics_port=port)
    base = f"http://127.0.0.1:{port}"
    stream = keys.SCORE_STREAM
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        missing = await http.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    before = await scrape(f"{base}/metrics")
    assert value(before, "scorecast_stream_entries_processed_total", stream=stream) == 0
    # A second group that reads nothing: the stream's backlog is the slowest group's.
    await eventually(lambda: redis.exists(stream), until=lambda n: n == 1)
    await redis.xgroup_create(stream, "laggard", id="$")
    await redis.xadd(stream, score_entry("ada", 5))
    await redis.xadd(stream, {"d": b"not json"})  # poison: dead-lettered

    def moved(s: Samples) -> bool:
        return (
            value(s, "scorecast_stream_entries_processed_total", stream=stream) == 1
            and value(s, "scorecast_stream_dead_lettered_total", stream=stream) == 1
            and value(s, "scorecast_stream_backlog", stream=stream) == 2
            # Counted when handled, acknowledged just after: the gauges catch up a moment later.
            and value(s, "scorecast_stream_pending", stream=stream, group=keys.WORKER_GROUP) == 0
            and value(s, "scorecast_stream_processing_seconds_count", stream=stream) == 1
            # One scrape reads the gauges one after another while the worker goes on: wait for
            # a scrape that saw every entry delivered, too.
            and value(s, "scorecast_stream_consumer_lag", stream=stream, group=keys.WORKER_GROUP) == 0
        )

    after = await eventually(lambda: scrape(f"{base}/metrics"), until=moved)
    assert value(after, "scorecast_stream_batch_failures_total", stream=stream) == 0

    # The laggard catches up: the backlog gauge goes back down.
    reply = await redis.xreadgroup("laggard", "l1", {stream: ">"}, count=10)
    await redis.xack(stream, "laggard", *[entry_id for entry_id, _ in reply[0][1]])
    drained = await eventually(
        lambda: scrape(f"{base}/metrics"),
        until=lambda s: value(s, "scorecast_stream_backlog", stream=stream) == 0,
    )
    assert value(drained, "scorecast_stream_entries_processed_total", stream=stream) == 1


async def test_flusher_exports_dirty_backlog_then_flushes(
    stack: Stack, redis: Any, settings: Settings
) -> None:
    store = ProgressStore(redis, complete_threshold=0.95, ttl_s=settings.progress_ttl_s)
    await store.save([Ping(f"u{i}", "c1", "l1", 10.0, 1, 1000.0) for i in range(4)], now_ms=1)
    port = free_port()
    stack.start("ingest.flusher", flusher_metrics_port=port, flush_interval_s=3600.0)
    url = f"http://127.0.0.1:{port}/metrics"
    waiting = await scrape(url)
    assert value(waiting, "scorecast_flush_dirty_keys", set="dirty") == 4
    assert value(waiting, "scorecast_flush_dirty_keys", set="inflight") == 0
    assert value(waiting, "scorecast_flush_keys_total") == 0

    # A second flusher on a short interval flushes them.
    port2 = free_port()
    stack.start("ingest.flusher", flusher_metrics_port=port2, flush_interval_s=0.2)
    url2 = f"http://127.0.0.1:{port2}/metrics"
    done = await eventually(lambda: scrape(url2), until=lambda s: value(s, "scorecast_flush_keys_total") == 4)
    assert value(done, "scorecast_flush_seconds_count") >= 1
    assert value(done, "scorecast_flush_failures_total") == 0
    flushed = await eventually(
        lambda: scrape(url), until=lambda s: value(s, "scorecast_flush_dirty_keys", set="dirty") == 0
    )
    assert value(flushed, "scorecast_flush_dirty_keys", set="inflight") == 0


async def test_flusher_is_not_ready_and_counts_failures_while_mongodb_is_unreachable(
    stack: Stack, redis: Any, settings: Settings
) -> None:
    store = ProgressStore(redis, complete_threshold=0.95, ttl_s=settings.progress_ttl_s)
    await store.save([Ping("u0", "c1", "l1", 10.0, 1, 1000.0)], now_ms=1)
    port = free_port()
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    stack.start("ingest.flusher", flusher_metrics_port=port, flush_interval_s=0.2, mongo_url=nowhere)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "MongoDB unreachable"})
        assert (await http.get("/healthz")).status_code == 200
    failed = await eventually(
        lambda: scrape(f"http://127.0.0.1:{port}/metrics"),
        until=lambda s: value(s, "scorecast_flush_failures_total") >= 1,
        timeout_s=60,  # a cycle fails after the flusher's MongoDB server selection timeout (5 s)
    )
    assert value(failed, "scorecast_flush_keys_total") == 0


async def test_a_garbled_request_gets_an_error_not_a_hang(stack: Stack) -> None:
    port = free_port()
    stack.start("ingest.flusher", flusher_metrics_port=port, flush_interval_s=3600.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
    async with httpx.AsyncClient() as http:
        post = await http.post(f"http://127.0.0.1:{port}/metrics")
    assert post.status_code == 405


async def test_ingest_api_counts_failed_authentications_and_rate_limit_violations(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("ingest.api", rate_limit_burst=1, rate_limit_per_s=0.01)
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        r = await http.post(
            "/api/v1/scores/update",
            json={"scoreIncrement": 1, "actionId": str(uuid.uuid4())},
            headers={"authorization": "Bearer not-a-token"},
        )
        assert r.status_code == 401
        body = {"scoreIncrement": 1, "actionId": str(uuid.uuid4())}
        assert (await http.post("/api/v1/scores/update", json=body)).status_code == 401
        await login(http, "ada", "Ada")
        scorer = scorer_token(issuer)
        codes = [(await score(http, scorer, "ada", 1)).status_code for _ in range(3)]
        assert codes == [202, 429, 429], codes
    samples = await scrape(f"{stack.ingest_url}/metrics")
    assert value(samples, "scorecast_auth_failures_total", code="invalid_token") == 1
    assert value(samples, "scorecast_auth_failures_total", code="unauthorized") == 1
    assert value(samples, "scorecast_rate_limit_violations_total", code="rate_limited") == 2
