"""Recovery from a Redis restart on real processes: the worker's consumers and the gateway's
Pub/Sub listener resume on their own, and a new write reaches an SSE client."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.processes import Stack
from devstack.servers import free_port, redis_server
from tests.eventually import eventually
from tests.helpers import bearer, login, scorer_token
from tests.sse_client import SseReader, sse


async def accepted(http: httpx.AsyncClient, scorer: str, increment: int, action_id: str) -> bool:
    """One attempt at a scorer's write for Ada (the same actionId each time, so it counts once)."""
    try:
        r = await http.post(
            "/api/v1/scores/update",
            json={"userId": "ada", "scoreIncrement": increment, "actionId": action_id},
            headers=bearer(scorer),
        )
    except httpx.HTTPError:
        return False
    return r.status_code in (200, 202)


async def shown(reader: SseReader) -> list[tuple[str, int]]:
    """The board as the SSE client last saw it."""
    latest = reader.latest()
    return [(e["userId"], e["score"]) for e in (latest or {}).get("leaderboard", [])]


async def ready(gateway: httpx.AsyncClient) -> int:
    try:
        return (await gateway.get("/readyz")).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.timeout(150)
async def test_a_write_after_a_redis_restart_reaches_sse_clients(
    settings: Settings, mongo: Any, tmp_path: Path
) -> None:
    redis = redis_server(free_port(), tmp_path / "redis").start()  # our own: AOF keeps the data
    stack = Stack(settings.replace(redis_url=redis.url), tmp_path)
    try:
        for module in ("ingest.api", "ingest.worker", "gateway"):
            stack.start(module)
        token = TokenIssuer(stack.settings).access_token(user_id="ada", name="Ada")
        scorer = scorer_token(TokenIssuer(stack.settings))
        async with (
            httpx.AsyncClient(base_url=stack.ingest_url, timeout=10) as http,
            sse(stack, token) as reader,
        ):
            await login(http, "ada", "Ada")
            assert await accepted(http, scorer, 1, str(uuid.uuid4()))
            await eventually(lambda: shown(reader), until=lambda s: s == [("ada", 1)], timeout_s=30)

            redis.stop()
            async with httpx.AsyncClient(base_url=stack.gateway_url) as gateway:
                await eventually(lambda: ready(gateway), until=lambda code: code == 503)
                redis.start()
                await eventually(lambda: ready(gateway), until=lambda code: code == 200)

            # Delivered by the resync after the listener is back, or by Pub/Sub.
            second = str(uuid.uuid4())
            await eventually(lambda: accepted(http, scorer, 2, second), timeout_s=30)
            assert await eventually(
                lambda: shown(reader), until=lambda s: s == [("ada", 3)], timeout_s=60
            ) == [("ada", 3)]
            # And the listener follows the board again: the next write arrives by its event.
            assert await accepted(http, scorer, 4, str(uuid.uuid4()))
            assert await eventually(
                lambda: shown(reader), until=lambda s: s == [("ada", 7)], timeout_s=30
            ) == [("ada", 7)]
    finally:
        stack.close()
        redis.stop()
