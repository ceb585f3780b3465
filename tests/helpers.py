"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette


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
