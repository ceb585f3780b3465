"""One client's connection as the hub sees it: the outbox, the lifecycle, and its expiry.

Frames for the client are queued in the outbox (a board's newer frame replacing an unsent older
one) and moved to the socket by the endpoint owning the connection; while nothing is queued ahead
and the socket is writable they go straight to it (``sink``, see ``gateway.fastpath``).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from gateway.protocol import BoardFrames, Lifecycle, Outbox, State


class Connection:
    """One client as the hub sees it. The endpoint owning it moves the outbox to the socket."""

    __slots__ = (
        "aliases",
        "boards",
        "expires_at",
        "id",
        "life",
        "notify",
        "outbox",
        "sending_since",
        "sink",
        "task",
        "transport",
        "user_id",
        "versions",
        "waiter",
    )

    def __init__(self, transport: str, user_id: str, *, expires_at: float = math.inf) -> None:
        # Random: the id names the device whose consecutive pings make watched coverage, and
        # the origin a moved position is not echoed to, over every gateway process.
        self.id = f"{transport}-{secrets.token_hex(8)}"
        self.transport = transport
        self.user_id = user_id
        # Epoch seconds: the ``exp`` of the token that opened it. The hub's sweep ends the
        # connection then (the endpoint tells the client why), so no stream outlives its token.
        self.expires_at = expires_at
        # A tuple, not a set: an SSE stream follows one board for hours, a set costs 216 bytes.
        self.boards: tuple[str, ...] = ()
        # Boards followed by their alias: canonical name -> ``weekly``/``monthly``.
        self.aliases: dict[str, str] = {}
        # The newest version handed over per board: never the same version twice, never older.
        self.versions: dict[str, int] = {}
        self.life = Lifecycle()
        self.outbox = Outbox()
        self.waiter: asyncio.Future[None] | None = None
        self.sending_since = 0.0
        self.task: asyncio.Task[Any] | None = None
        # Set when the server exposes the socket (see gateway.fastpath): frames go straight to it
        # while it is writable (``writable()``, ``write_board(frames)``, ``write_message(m)``).
        self.sink: Any = None
        # Set by an owner that has no task waiting in next_frames() (the WebSocket fast path):
        # called, instead of waking that task, when frames are queued or the state moved.
        self.notify: Callable[[], None] | None = None

    def wake(self) -> None:
        if self.notify is not None:
            self.notify()
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def push_board(self, frames: BoardFrames) -> bool:
        """Queue a board frame, replacing an unsent older one (answers whether it did)."""
        if self.versions.get(frames.board, -1) >= frames.version:
            return False
        self.versions[frames.board] = frames.version
        if self._direct():
            self.sink.write_board(frames)
            return False
        replaced = self.outbox.put_board(frames.board, frames)
        self.wake()
        return replaced

    def push_latest(self, key: str, frame: bytes | str) -> None:
        """Queue a frame of this connection alone (``bytes``: an SSE event, ``str``: a WebSocket
        text) that replaces an unsent older one under ``key``, like a board frame. With nothing
        queued ahead and a writable socket it goes out like any message (``push``)."""
        if self._direct():
            self.push(frame)
            return
        self.outbox.put_board(key, frame)
        self.wake()

    def push(self, message: object) -> bool:
        """Queue a message (the sink's kind: bytes for SSE, text for WebSocket); False when the
        queue is full, and the caller then treats the client as stuck."""
        if self._direct():
            self.sink.write_message(message)
            return True
        ok = self.outbox.put(message)
        self.wake()
        return ok

    def _direct(self) -> bool:
        """Whether a frame can go straight to the socket: nothing queued ahead of it, no write
        in progress, the socket not write-paused. Otherwise the endpoint's own loop sends it."""
        return (
            self.sink is not None
            and not self.outbox
            and not self.sending_since
            and self.life.state is State.OPEN
            and self.sink.writable()
        )

    def waiting(self) -> asyncio.Future[None] | None:
        """A future to await until frames are pending or the connection leaves OPEN; None when
        either is so already. A plain function: a stream waiting on it keeps no frame of it."""
        if self.outbox or self.life.state is not State.OPEN:
            return None
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    async def next_frames(self) -> list[object]:
        """Wait until frames are pending or the connection leaves OPEN; [] means stop writing."""
        while (waiter := self.waiting()) is not None:
            await waiter
        return self.outbox.take() if self.life.state is State.OPEN else []

    def expired(self, now: float | None = None) -> bool:
        """Whether the token of this connection has expired (``now``: epoch seconds)."""
        return (time.time() if now is None else now) >= self.expires_at

    def drain(self) -> None:
        if self.life.state is State.OPEN:
            self.life.move(State.DRAINING)
        self.wake()

    def close(self) -> None:
        if self.life.state is not State.CLOSED:
            self.life.move(State.CLOSED)
        self.wake()
