"""A streaming SSE client for real-server tests (httpx's ASGITransport would buffer forever)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from devstack.processes import Stack


class SseReader:
    """Reads one endless SSE response in the background and keeps every event it saw."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ranks: list[dict[str, Any]] = []  # the viewer's own ``rank`` events
        self.retry: int | None = None
        self.pings = 0
        self.ended = False

    async def consume(self, response: httpx.Response) -> None:
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if not line:
                if "data" in event:
                    event["data"] = json.loads(event["data"])
                    # Rank events apart: they interleave with the rest by timing alone.
                    (self.ranks if event.get("event") == "rank" else self.events).append(event)
                event = {}
            elif line.startswith("retry:"):
                self.retry = int(line[6:])
            elif line.startswith(":"):
                self.pings += 1
            else:
                field, _, value = line.partition(":")
                event[field] = value.removeprefix(" ")
        self.ended = True

    def latest(self) -> dict[str, Any] | None:
        return self.events[-1]["data"] if self.events else None


@contextlib.asynccontextmanager
async def sse(
    stack: Stack,
    token: str,
    board: str = "global",
    headers: dict[str, str] | None = None,
    path: str = "/api/v1/leaderboard/stream",
) -> AsyncIterator[SseReader]:
    """An SSE client of the stack's gateway, reading in the background while the block runs."""
    reader = SseReader()
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream(
            "GET",
            path,
            params={"board": board},
            headers={"authorization": f"Bearer {token}", **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        task = asyncio.create_task(reader.consume(response))
        try:
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
