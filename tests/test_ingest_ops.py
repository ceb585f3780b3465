"""Operations of the ingest API: readiness follows its backing services."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from contract.settings import Settings
from devstack.servers import free_port
from ingest.api.app import create_app
from tests.helpers import asgi_client


async def test_ready_while_redis_and_mongodb_answer(ingest: Any) -> None:
    ready = await ingest.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "redisMasters": "1/1"}
    assert (await ingest.get("/healthz")).status_code == 200


async def test_not_ready_while_redis_is_unreachable(
    settings: Settings, redis: aioredis.Redis, mongo: Any
) -> None:
    nowhere = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with asgi_client(create_app(nowhere), "http://ingest") as client:
        answer = await client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "redis unreachable"}
        assert (await client.get("/healthz")).status_code == 200  # alive, only not ready
