"""A board's fan-out to many subscribers, in-process on a real hub and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from contract.settings import Settings
from gateway.broadcast import FAN_OUT_CHUNK
from gateway.connection import Connection
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.protocol import BoardFrames
from tests.eventually import eventually
from tests.test_gateway_sse import apply, make_board


class Recorder(Connection):
    """A connection that notes, for every frame handed to it, whether it still followed the board."""

    __slots__ = ("followed_when_handed", "on_push")

    def __init__(self, user_id: str) -> None:
        super().__init__("sse", user_id)
        self.followed_when_handed: list[bool] = []
        self.on_push: list[Callable[[], None]] = []

    def push_board(self, frames: BoardFrames) -> bool:
        self.followed_when_handed.append(frames.board in self.boards)
        while self.on_push:
            self.on_push.pop()()
        return super().push_board(frames)


async def test_a_fan_out_yields_between_chunks_and_skips_who_left_meanwhile(
    settings: Settings, redis: Any
) -> None:
    store = await make_board(redis, scores={"ada": 1})
    hub = Hub(redis=redis, settings=settings.replace(broadcast_interval_s=0.05), metrics=Metrics())
    conns = [Recorder(f"v{i}") for i in range(4 * FAN_OUT_CHUNK)]
    try:
        for conn in conns:
            hub.register(conn)
            await hub.subscribe(conn, "global")
        for conn in conns:
            conn.outbox.take()
            conn.followed_when_handed.clear()
        loop = asyncio.get_running_loop()
        leavers: list[Recorder] = []
        started: list[bool] = []

        def leave() -> None:  # runs at the fan-out's first yield: the rest leave the board
            leavers.extend(c for c in conns if not c.followed_when_handed)
            for conn in leavers:
                hub.unsubscribe(conn, "global")

        def first_push() -> None:  # the fan-out's first frame schedules the leaving
            if not started:
                started.append(True)
                loop.call_soon(leave)

        for conn in conns:
            conn.on_push.append(first_push)
        hub.board_event("global", await apply(store, "global", {"bo": 5}))
        await eventually(lambda: asyncio.sleep(0, sum(bool(c.outbox) for c in conns)), until=lambda n: n > 0)
        await asyncio.sleep(0.2)
        served = [c for c in conns if c.outbox]
        # The fan-out yielded after its first chunk: the others had left by then and got nothing.
        assert len(served) == FAN_OUT_CHUNK, len(served)
        assert len(leavers) == len(conns) - FAN_OUT_CHUNK
        assert all(all(c.followed_when_handed) for c in conns)
        assert not any(c.outbox for c in leavers)
    finally:
        await hub.close()
