"""GET /api/v1/leaderboard/stream — the live board over Server-Sent Events.

A hand-written ASGI response: ``retry:``, then ``event: snapshot`` at once from the in-memory
board (skipped when ``Last-Event-ID`` already names the current version), then the board's
pre-encoded ``update`` frames as the broadcaster hands them over, and ``: ping`` comments from
the hub's one heartbeat loop. On drain: ``event: reconnect`` with a jittered ``afterMs``, then
the end.

Broadcast frames take one of two paths. Fast: the broadcaster (``gateway.broadcast``) writes the
frame's pre-framed HTTP chunk (the same bytes object for every subscriber) straight to the socket
(``gateway.fastpath``). Otherwise — a socket that is write-paused, frames already queued, a
server that does not expose its socket — the frame waits in the connection's newest-only outbox
and this endpoint's loop sends it through ASGI, where a client that stays stuck is found by the
hub's sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.auth import token_from_request
from contract.errors import AuthError, Unavailable
from contract.http import error_for
from contract.seasons import alias_of
from gateway.connection import Connection
from gateway.fastpath import DirectSink
from gateway.hub import Hub
from gateway.policy import BoardPolicy
from gateway.protocol import BoardFrames, State
from gateway.state import gateway_state

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


RAW_SEND = "scorecast.raw_send"
# The stream's path, and seed 002's name for the same stream (README, "What the API adds").
STREAM_PATHS = frozenset({"/api/v1/leaderboard/stream", "/api/v1/scores/events"})


def serve(app: Starlette) -> ASGIApp:
    """The ASGI app the server runs: ``app``, with two things done first.

    The server's own ``send`` is recorded in the scope, so SSE streams and WebSockets can find
    their socket under the middleware (see ``gateway.fastpath.DirectSink``).
    And a GET of the SSE stream goes straight to its endpoint, with the app's error responses:
    a stream lives for hours, and on Starlette's way (error middleware, exception middleware,
    router, route) it would hold a suspended frame of every layer and a parsed Request for all
    that time, about 6 KiB per connection. ``app`` keeps the route for callers that go through it.
    """

    def asgi(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the awaitable that serves the request, not a coroutine
        # awaiting it: a stream's task holds one frame less for hours (uvicorn is told the app
        # is ASGI 3, as it cannot tell from a plain function).
        if scope["type"] in ("http", "websocket"):
            scope[RAW_SEND] = send
            if scope["type"] == "http" and scope["path"] in STREAM_PATHS and scope["method"] == "GET":
                scope["app"] = app
                request = Request(scope, receive, send)
                try:
                    response = open_stream(request)
                except Exception as exc:
                    return respond(error_for(request, exc), scope, receive, send)
                return response(scope, receive, send)
        return app(scope, receive, send)

    return asgi


async def respond(response: Awaitable[Response], scope: Scope, receive: Receive, send: Send) -> None:
    await (await response)(scope, receive, send)


class SlowClientError(Exception):
    """Raised out of a stream whose client stopped reading: uvicorn then closes the socket."""


class EventStream(Response):
    def __init__(
        self,
        hub: Hub,
        policy: BoardPolicy,
        conn: Connection,
        board: str,
        last_event_id: str | None,
        retry_ms: int,
        alias: str | None = None,
    ) -> None:
        self.hub = hub
        self.policy = policy
        self.conn = conn
        self.board = board
        self.alias = alias
        self.last_event_id = last_event_id
        self.retry_ms = retry_ms
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub, conn = self.hub, self.conn
        hub.register(conn)
        watcher: asyncio.Task[None] | None = None
        sent = hub.metrics.messages.labels("sse")
        try:
            try:
                frames = await self.policy.follow(hub, conn, self.board, alias=self.alias)
            except Exception as exc:  # before the response started: an error response
                response = await error_for(Request(scope), exc)
                await response(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            conn.outbox.drop_board(self.board)  # the snapshot is at least as new
            self.board = frames.board  # one string for every stream of the board, not one each
            conn.versions[self.board] = frames.version
            # Not kept in a local: this frame lives as long as the stream.
            await self._write(send, self._opening(frames))
            if hub.fast_path:
                conn.sink = DirectSink.of(scope.get(RAW_SEND))
            if conn.sink is None:  # no socket to look at: learn of a disconnect through ASGI
                watcher = asyncio.create_task(self._watch_disconnect(receive))
            while True:
                # Not ``await conn.next_frames()``: one coroutine frame less per idle stream.
                while (waiter := conn.waiting()) is not None:
                    await waiter
                if conn.life.state is not State.OPEN:
                    break
                pending = conn.outbox.take()
                chunk = b"".join(f.update if isinstance(f, BoardFrames) else f for f in pending)  # type: ignore[misc]
                await self._write(send, chunk)
                sent.inc(len(pending))
            if conn.life.state is State.DRAINING:
                # Drained, or the token expired: the client comes back (with its refreshed
                # token, at once after an expiry; after a jittered delay, elsewhere, after a drain).
                after_ms = 0 if conn.expired() else hub.reconnect_after_ms()
                await self._write(send, b'event: reconnect\ndata: {"afterMs":%d}\n\n' % after_ms)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            sink = conn.sink
            client_left = watcher.done() if watcher is not None else sink is not None and sink.gone(0.0)
            if conn.life.state is State.CLOSED and not client_left:
                raise SlowClientError(conn.id) from None  # kicked: let uvicorn drop the socket
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            hub.unregister(conn)

    def _opening(self, frames: BoardFrames) -> bytes:
        """``retry:``, then the snapshot unless ``Last-Event-ID`` names its version."""
        retry = b"retry: %d\n\n" % self.retry_ms
        return retry if self.last_event_id == str(frames.version) else retry + frames.snapshot

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
    return open_stream(request)


def open_stream(request: Request) -> EventStream:
    """The stream ``request`` asks for; raises what its error response is made of."""
    st = gateway_state(request)
    if st.hub.draining:
        raise Unavailable("this gateway is draining; reconnect", code="draining")
    # Not ``request.headers`` / ``.cookies``: Starlette would store a copy of the header list in
    # the scope, which lives as long as the stream.
    headers = Headers(raw=request.scope["headers"])
    query = request.query_params
    token = token_from_request(headers, query, cookie_parser(headers.get("cookie", "")))
    try:
        if not token:
            raise AuthError("a bearer token is required", code="unauthorized")
        claims = st.verifier.verify(token)
    except AuthError as exc:
        st.metrics.auth_failures.labels("sse", exc.code).inc()
        raise
    raw = query.get("board", "global")
    board = st.policy.name(raw)
    last_event_id = headers.get("last-event-id") or query.get("lastEventId")
    conn = Connection("sse", claims.sub, expires_at=claims.exp)
    return EventStream(
        st.hub, st.policy, conn, board, last_event_id, st.settings.sse_retry_ms, alias=alias_of(raw)
    )
