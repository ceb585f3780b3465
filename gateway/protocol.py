"""What a gateway connection and a board *mean*, without sockets, Redis or an event loop.

- :class:`Throttle` decides when a board may be broadcast: at most once per interval, with a
  leading edge (a change after a quiet interval goes out at once) and coalescing of the rest.
- :class:`BoardFrames` is one board's state at one version, encoded once for every transport
  (for WebSocket down to the frame: :func:`ws_text_frame`).
- :class:`Lifecycle` is a connection's state machine: CONNECTING → OPEN → DRAINING → CLOSED;
  an illegal move raises :class:`IllegalTransition`.
- :class:`Outbox` is a connection's bounded send buffer: the newest frame per board replaces an
  unsent older one, so a slow client only ever gets the newest snapshot.
- :class:`TokenBucket` is a per-connection rate limit.
"""

from __future__ import annotations

import datetime as dt
import enum
import math

from contract.push import BoardSnapshot, FrameEntry, LeaderboardMessage
from contract.wire import json_encoder


class Throttle:
    def __init__(self, *, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_sent = -math.inf

    def delay(self, now: float) -> float:
        """Seconds to wait before a change seen at ``now`` may be broadcast (0: at once)."""
        return max(0.0, self.last_sent + self.interval_s - now)

    def sent(self, now: float) -> None:
        self.last_sent = now


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def ws_text_frame(payload: bytes) -> bytes:
    """``payload`` as one unfragmented, unmasked WebSocket text frame (RFC 6455 5.2): what a
    server sends with compression off, the same bytes for every client."""
    n = len(payload)
    if n < 126:
        return b"\x81%c%b" % (n, payload)
    if n < 65536:
        return b"\x81\x7e%b%b" % (n.to_bytes(2, "big"), payload)
    return b"\x81\x7f%b%b" % (n.to_bytes(8, "big"), payload)


def utc_timestamp(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BoardFrames:
    """A board at one version: the SSE ``snapshot``/``update`` events and the WebSocket message."""

    __slots__ = (
        "board",
        "entries",
        "snapshot",
        "timestamp",
        "update",
        "update_chunk",
        "version",
        "ws_frame",
        "ws_text",
    )

    def __init__(self, board: str, version: int, entries: list[FrameEntry], timestamp: str) -> None:
        self.board = board
        self.version = version
        self.entries = entries
        self.timestamp = timestamp
        data = json_encoder.encode(
            BoardSnapshot(board=board, version=version, timestamp=timestamp, leaderboard=entries)
        )
        head = b"id: %d\n" % version
        self.snapshot = head + b"event: snapshot\ndata: " + data + b"\n\n"
        self.update = head + b"event: update\ndata: " + data + b"\n\n"
        self.update_chunk = http_chunk(self.update)
        message = LeaderboardMessage(board=board, version=version, timestamp=timestamp, leaderboard=entries)
        ws_payload = json_encoder.encode(message)
        self.ws_text = ws_payload.decode()
        self.ws_frame = ws_text_frame(ws_payload)


class IllegalTransition(Exception):
    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"connection cannot go from {current.name} to {target.name}")
        self.current = current
        self.target = target


class State(enum.Enum):
    CONNECTING = 0
    OPEN = 1
    DRAINING = 2
    CLOSED = 3


_MOVES = {
    State.CONNECTING: {State.OPEN, State.CLOSED},
    State.OPEN: {State.DRAINING, State.CLOSED},
    State.DRAINING: {State.CLOSED},
    State.CLOSED: set[State](),
}


class Lifecycle:
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.CONNECTING

    def move(self, target: State) -> None:
        if target not in _MOVES[self.state]:
            raise IllegalTransition(self.state, target)
        self.state = target

    @property
    def open(self) -> bool:
        return self.state is State.OPEN


class Outbox:
    """Pending frames of one connection: newest-only per board, a bounded queue for the rest.

    ``put_board`` answers whether an unsent frame was replaced (a drop, for the metrics);
    ``put`` answers False when the queue is full (the caller treats the client as stuck).
    """

    __slots__ = ("boards", "limit", "queue")

    def __init__(self, *, limit: int = 64) -> None:
        # None while empty: most connections are idle, and an empty deque and dict cost ~0.8 KiB
        # per connection (an idle SSE stream's whole budget above the server's own is ~1 KiB).
        self.boards: dict[str, object] | None = None
        self.queue: list[object] | None = None
        self.limit = limit

    def put_board(self, board: str, frame: object) -> bool:
        if self.boards is None:
            self.boards = {board: frame}
            return False
        replaced = board in self.boards
        self.boards[board] = frame
        return replaced

    def drop_board(self, board: str) -> None:
        """Forget the unsent frame of ``board`` (a newer view of it went out another way)."""
        if self.boards is not None:
            self.boards.pop(board, None)

    def put(self, frame: object) -> bool:
        if self.queue is None:
            self.queue = []
        if len(self.queue) >= self.limit:
            return False
        self.queue.append(frame)
        return True

    def take(self) -> list[object]:
        """Everything pending, queued messages first, then the newest frame of each board."""
        frames = self.queue or []
        if self.boards:
            frames.extend(self.boards.values())
        self.queue = self.boards = None
        return frames

    def __bool__(self) -> bool:
        return bool(self.queue) or bool(self.boards)


class TokenBucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, *, rate_per_s: float, burst: int, now: float) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
