"""Waiting out an outage: probes until the service answers, two log lines, stops on request."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from devstack.servers import free_port
from store import outage


def flaky(failures: int) -> tuple[outage.Service, list[int]]:
    """A service whose probe fails ``failures`` times, then answers; the list counts the probes."""
    calls: list[int] = []

    async def probe() -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionError("connection refused")

    return outage.Service("Flaky", probe), calls


async def test_waits_until_the_service_answers_and_logs_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, calls = flaky(5)
    log = logging.getLogger("test.outage")
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        ok = await outage.wait_until_reachable(
            [service], interval_s=0.01, stop=asyncio.Event(), who="consumer", log=log
        )
    assert ok
    assert len(calls) == 6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "Flaky unreachable (connection refused)" in lines[0]
    assert "Flaky answers again" in lines[1]


async def test_returns_at_once_when_every_service_answers() -> None:
    service, calls = flaky(0)
    ok = await outage.wait_until_reachable(
        [service], interval_s=10.0, stop=asyncio.Event(), who="x", log=logging.getLogger("test.outage")
    )
    assert ok
    assert calls == [1]


async def test_stop_ends_the_wait() -> None:
    service, _ = flaky(10**9)
    stop = asyncio.Event()
    waiting = asyncio.create_task(
        outage.wait_until_reachable(
            [service], interval_s=0.01, stop=stop, who="x", log=logging.getLogger("t")
        )
    )
    await asyncio.sleep(0.05)
    stop.set()
    assert await waiting is False


async def test_redis_probe_fails_on_a_closed_port_and_answers_on_a_live_server(redis: Any) -> None:
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        down = await outage.first_unreachable([outage.redis_service(dead)])
        assert down is not None and down[0].name == "Redis"
        assert await outage.first_unreachable([outage.redis_service(redis)]) is None
    finally:
        await dead.aclose()
