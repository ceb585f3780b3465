"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from contract.auth import TokenIssuer
from devstack.processes import Stack

# A real-server test that must hold on a Redis Cluster too: it runs twice, on one Redis and on the
# 3-master cluster (``settings`` and all built from it, see tests/conftest.py).
both_redis = pytest.mark.parametrize("settings", ["single", "cluster"], indirect=True)


@contextlib.asynccontextmanager
async def asgi_client(app: Starlette, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of ``app`` with its lifespan running (finite responses only)."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client,
    ):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def scorer_token(issuer: TokenIssuer, user_id: str = "points-service") -> str:
    """A backend service's token: role ``scorer``, the only learner-free way to award points."""
    return issuer.access_token(user_id=user_id, name="Points service", roles=["scorer"])


async def login(
    http: httpx.AsyncClient, user_id: str, name: str, region: str | None = None, **extra: Any
) -> str:
    """Log ``user_id`` in through the development login (which records their profile, so a
    scorer can score them). Returns the learner's access token."""
    body: dict[str, Any] = {"userId": user_id, "name": name, **extra}
    if region is not None:
        body["region"] = region
    r = await http.post("/api/v1/auth/login", json=body)
    assert r.status_code == 200, r.text
    token: str = r.json()["accessToken"]
    return token


async def score(
    http: httpx.AsyncClient,
    scorer: str,
    user_id: str,
    increment: int,
    action_id: str | None = None,
    **extra: Any,
) -> httpx.Response:
    """POST /api/v1/scores/update as the scorer ``scorer`` for ``user_id``."""
    body = {
        "userId": user_id,
        "scoreIncrement": increment,
        "actionId": action_id or str(uuid.uuid4()),
        **extra,
    }
    return await http.post("/api/v1/scores/update", json=body, headers=bearer(scorer))


async def metric_value(stack: Stack, series: str) -> float:
    """The value of one series (name and labels, as exposed) on the test's gateway's /metrics."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{stack.gateway_url}/metrics")).text
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not in /metrics:\n{text}")
