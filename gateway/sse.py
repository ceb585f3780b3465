"""GET /api/v1/leaderboard/stream — the live board over Server-Sent Events.

A hand-written ASGI response: ``retry:``, then ``event: snapshot`` at once from the in-memory
board (skipped when ``Last-Event-ID`` already names the current version), then the board's
pre-encoded ``update`` frames as the hub hands them over, and ``: ping`` comments from the hub's
one heartbeat loop. On drain: ``event: reconnect`` with a jittered ``afterMs``, then the end.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from contract.auth import token_from_request
from contract.boards import resolve
from contract.errors import AuthError, Unavailable
from gateway.hub import Connection, Hub
from gateway.protocol import BoardFrames, State
from gateway.state import gateway_state

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


class SlowClientError(Exception):
    """Raised out of a stream whose client stopped reading: uvicorn then closes the socket."""


class EventStream(Response):
    def __init__(
        self, hub: Hub, conn: Connection, board: str, last_event_id: str | None, retry_ms: int
    ) -> None:
        self.hub = hub
        self.conn = conn
        self.board = board
        self.last_event_id = last_event_id
        self.retry_ms = retry_ms
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub, conn = self.hub, self.conn
        hub.register(conn)
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        sent = hub.metrics.messages.labels("sse")
        try:
            frames = await hub.subscribe(conn, self.board)
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            first = b"retry: %d\n\n" % self.retry_ms
            if self.last_event_id != str(frames.version):
                first += frames.snapshot
            conn.outbox.boards.pop(self.board, None)  # the snapshot is at least as new
            conn.versions[self.board] = frames.version
            await self._write(send, first)
            while True:
                pending = await conn.next_frames()
                if not pending:
                    break
                chunk = b"".join(f.update if isinstance(f, BoardFrames) else f for f in pending)  # type: ignore[misc]
                await self._write(send, chunk)
                sent.inc(len(pending))
            if conn.life.state is State.DRAINING:
                after = b'event: reconnect\ndata: {"afterMs":%d}\n\n' % hub.reconnect_after_ms()
                await self._write(send, after)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if conn.life.state is State.CLOSED and not watcher.done():
                raise SlowClientError(conn.id) from None  # kicked: let uvicorn drop the socket
            raise
        finally:
            watcher.cancel()
            hub.unregister(conn)

    async def _write(self, send: Send, body: bytes) -> None:
        # uvicorn's send() only suspends while the socket is write-paused; the hub's sweep
        # disconnects a client that stays paused longer than slow_client_timeout_s.
        self.conn.sending_since = asyncio.get_running_loop().time()
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self.conn.sending_since = 0.0

    async def _watch_disconnect(self, receive: Receive) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while (await receive())["type"] != "http.disconnect":
                pass
            self.conn.close()


async def stream(request: Request) -> Response:
    st = gateway_state(request)
    if st.hub.draining:
        raise Unavailable("this gateway is draining; reconnect", code="draining")
    token = token_from_request(request.headers, request.query_params, request.cookies)
    if not token:
        raise AuthError("a bearer token is required", code="unauthorized")
    claims = st.verifier.verify(token)
    board = resolve(request.query_params.get("board", "global"))
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    conn = Connection("sse", claims.sub)
    return EventStream(st.hub, conn, board, last_event_id, st.settings.sse_retry_ms)
