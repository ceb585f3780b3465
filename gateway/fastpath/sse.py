"""The SSE side of the fast path: a stream's socket, written without a coroutine switch, and the
idle connection slimmed (see the package's docstring for what is relied on)."""

from __future__ import annotations

import collections
from typing import Any

from gateway.protocol import BoardFrames


def send_owner(send: object, *needed: str) -> Any:
    """The server object behind a raw ASGI ``send`` (its bound method's owner) when it has every
    attribute in ``needed``; else None."""
    owner = getattr(send, "__self__", None)
    if owner is None or not all(hasattr(owner, a) for a in needed):
        return None
    return owner


class DirectSink:
    """The socket under an SSE response, for writing broadcast frames without a coroutine switch.

    When uvicorn's httptools cycle is not behind ``send`` — another server, an in-process test
    client — :meth:`of` answers None and frames take the ASGI path. A socket that is write-paused
    is never written here: the endpoint's loop sends through ASGI, which waits.
    """

    __slots__ = ("cycle",)

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle

    @classmethod
    def of(cls, send: object) -> DirectSink | None:
        cycle = send_owner(send, "transport", "flow", "disconnected", "response_complete")
        if cycle is None or getattr(cycle, "chunked_encoding", None) is not True:
            return None
        slim(cycle)
        return cls(cycle)

    def writable(self) -> bool:
        cycle = self.cycle
        return not (cycle.flow.write_paused or cycle.disconnected or cycle.response_complete)

    def write_board(self, frames: BoardFrames) -> None:
        self.cycle.transport.write(frames.update_chunk)

    def write_message(self, message: bytes) -> None:
        self.cycle.transport.write(b"%x\r\n%b\r\n" % (len(message), message))

    def gone(self, now: float) -> bool:
        """Whether the client closed the connection (the hub's sweep looks, in place of a task
        per stream waiting for ``http.disconnect``)."""
        return bool(self.cycle.disconnected)


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (``appendleft``, ``pop``, truth) as a list: empty, a
    list holds no storage, where an empty ``deque`` holds a 64-slot block."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def slim(cycle: Any) -> None:
    """Give up what an idle stream's connection holds for nothing: uvicorn's two
    ``asyncio.Event`` objects (its request body, its socket's flow control) and its pipeline queue
    each hold an empty ``deque`` — a 64-slot block, ~0.7 KiB each, ~2 KiB of a stream's ~10.
    Lists serve the same calls (``append``/``remove``/iteration; ``appendleft``/``pop``) in 56
    bytes. Only empty ones are replaced: nothing waits on them at that moment."""
    for event in (cycle.message_event, cycle.flow._is_writable_event):
        if isinstance(event._waiters, collections.deque) and not event._waiters:
            event._waiters = []
    protocol = getattr(cycle.on_response, "__self__", None)
    pipeline = getattr(protocol, "pipeline", None)
    if isinstance(pipeline, collections.deque) and not pipeline:
        protocol.pipeline = _Pipeline()  # type: ignore[union-attr]
