"""Every use of a library's private internals in Scorecast, and the check of their shape.

Checked against uvicorn 0.54.0, websockets 17.4 and redis-py 8.1.0 (``pyproject.toml`` bounds
them above), and CPython 3.11's asyncio.
:func:`unavailable` looks at the shapes this module relies on, at start-up; where one is missing
(another version, another server) or with ``FAST_PATH=0`` the gateway logs why and serves
everything through the portable paths (ASGI for SSE and WebSocket, redis-py's ``Pipeline``).

- :class:`DirectSink` (SSE): uvicorn's httptools request cycle — the owner of the ASGI ``send``
  bound method — holds the socket; broadcast frames are written to it without a coroutine switch,
  and the cycle's idle queues are slimmed (:func:`slim`: ``asyncio.Event._waiters``, uvicorn's
  ``pipeline``).
- :class:`FastWebSocket` (WebSocket): a uvicorn ``ws`` protocol class on websockets' Sans-I/O
  ``ServerProtocol``. For ``/api/v1/ws`` it runs the handshake and feeds ``gateway.ws.Session``
  from its socket callbacks: no ASGI task, queue or write loop per connection, and every board
  tick written as the same pre-framed bytes to every socket. Any other path is handed to uvicorn's
  own ``websockets-sansio`` protocol. What it relies on: the constructor uvicorn's HTTP protocol
  calls on an upgrade, and ``ServerState.connections``/``default_headers``.
- :func:`redis_round_trip`: a batch of packed commands on one pooled redis-py connection (on a
  Redis Cluster, one per master of their slots), the replies read under one timeout (the pool's
  ``get_connection``/``release``, a cluster node's ``acquire_connection``/``release``, a
  connection's ``send_packed_command``/``read_response``/``disconnect``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import math
import secrets
import urllib.parse
from collections.abc import Sequence
from typing import Any, ClassVar

from redis.exceptions import AskError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.requests import cookie_parser
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from contract.auth import token_from_request
from gateway.protocol import BoardFrames, State, ws_text_frame
from gateway.ws import Session, refusal, texts
from store.clients import is_cluster

log = logging.getLogger("scorecast.gateway.fastpath")
access = logging.getLogger("uvicorn.error")  # where uvicorn logs a WebSocket handshake
CHECKED = {"uvicorn": "0.54.0", "websockets": "17.4", "redis": "8.1.0"}
CLOSE_TIMEOUT_S = 10.0  # the client's answer to a close frame, before the socket is closed


def unavailable() -> str | None:
    """Why the fast paths cannot be used with the installed libraries, or None when they can."""
    try:
        import redis.asyncio.connection as rc
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from uvicorn.protocols.http.flow_control import FlowControl
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        from uvicorn.server import ServerState
    except ImportError as exc:
        return f"cannot import {exc.name}"
    upgrade = HttpToolsProtocol.handle_websocket_upgrade.__code__
    needs: list[tuple[str, bool]] = [
        (
            "uvicorn's upgrade constructs the ws protocol with config, server_state, app_state",
            ("config", "server_state", "app_state") in upgrade.co_consts,
        ),
        (
            "uvicorn's ServerState has connections and default_headers",
            all(hasattr(ServerState(), a) for a in ("connections", "default_headers")),
        ),
        (
            "uvicorn's httptools cycle keeps transport, flow, disconnected, response_complete",
            {"transport", "flow", "disconnected", "response_complete", "chunked_encoding"}
            <= set(RequestResponseCycle.__init__.__code__.co_names),
        ),
        (
            "asyncio.Event keeps its waiters in _waiters (append, remove, iteration); uvicorn's "
            "cycle its message_event and on_response, its protocol a pipeline (appendleft, pop)",
            isinstance(asyncio.Event()._waiters, collections.deque)
            and {"_waiters", "append", "remove"} <= set(asyncio.Event.wait.__code__.co_names)
            and {"message_event", "on_response"} <= set(RequestResponseCycle.__init__.__code__.co_names)
            and "pipeline" in HttpToolsProtocol.__init__.__code__.co_names
            and "appendleft" in HttpToolsProtocol.on_headers_complete.__code__.co_names
            and "pop" in HttpToolsProtocol.on_response_complete.__code__.co_names
            and "_is_writable_event" in FlowControl.__init__.__code__.co_names,
        ),
        ("uvicorn has its websockets-sansio protocol", hasattr(WebSocketsSansIOProtocol, "data_received")),
        (
            "websockets' ServerProtocol is Sans-I/O, its frame parser a generator in .parser",
            all(
                hasattr(ServerProtocol, a)
                for a in ("receive_data", "events_received", "data_to_send", "accept", "send_close", "fail")
            )
            and inspect.isgeneratorfunction(Protocol.parse)
            and {"parser", "reader"} <= set(Protocol.__init__.__code__.co_names)
            and hasattr(StreamReader(), "buffer"),
        ),
        (
            "redis-py connections send packed commands, read replies under a timeout, retry",
            all(hasattr(rc.AbstractConnection, a) for a in ("send_packed_command", "read_response"))
            and "timeout" in inspect.signature(rc.AbstractConnection.read_response).parameters
            and "nowait" in inspect.signature(rc.AbstractConnection.disconnect).parameters
            and hasattr(getattr(rc.Connection(), "retry", None), "call_with_retry")
            and all(hasattr(rc.ConnectionPool, a) for a in ("get_connection", "release")),
        ),
        (
            "redis-py's cluster client maps a key to its node, a node lends connections",
            hasattr(RedisCluster, "get_node_from_key")
            and all(hasattr(ClusterNode, a) for a in ("acquire_connection", "release")),
        ),
    ]
    missing = [what for what, ok in needs if not ok]
    return "; ".join(missing) or None


# ------------------------------------------------------------------------------------ SSE
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


# ------------------------------------------------------------------------------ WebSocket
class FastWebSocket(asyncio.Protocol):
    """A uvicorn ``ws`` protocol: ``/api/v1/ws`` served from socket callbacks (see the module).

    It is the connection's sink too: a frame goes straight to the socket while the socket is not
    write-paused; otherwise it waits in the connection's newest-only outbox until
    ``resume_writing``, and a client paused longer than ``slow_client_timeout_s`` is cut by the
    hub's sweep. Reading stops while the session is saturated (pings in flight) and resumes when
    it has room. Keepalive pings ride on the hub's sweep (:meth:`gone`), not on a timer each.
    """

    app: ClassVar[Any] = None  # the Starlette app: its state holds the GatewayState
    path: ClassVar[str] = "/api/v1/ws"

    __slots__ = (
        "app_state",
        "close_timer",
        "config",
        "held",
        "parts",
        "paused",
        "ping_at",
        "ping_payload",
        "raw",
        "server_state",
        "session",
        "transport",
        "ws",
    )

    @classmethod
    def serving(cls, app: Any, path: str) -> type[FastWebSocket]:
        """This class bound to ``app``, serving ``path`` (uvicorn's ``ws=`` takes the class)."""
        return type("FastWebSocket", (cls,), {"__slots__": (), "app": app, "path": path})

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.ws = ServerProtocol(max_size=config.ws_max_size, logger=access)
        self.transport: asyncio.Transport | None = None
        self.raw: list[bytes] | None = []  # the bytes before the handshake, for a handover
        self.session: Session | None = None
        self.held: list[Any] = []  # events not fed while the session was saturated
        self.parts: list[bytes] | None = None  # a fragmented message so far
        self.paused = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.ping_payload: bytes | None = None
        self.ping_at = 0.0

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.transport = None
        self.held = []
        if self.close_timer is not None:
            self.close_timer.cancel()
        if self.session is not None:
            self.session.end()

    def eof_received(self) -> bool | None:
        return None  # the transport closes

    def pause_writing(self) -> None:
        self.paused = True
        if self.session is not None:
            self.session.conn.sending_since = asyncio.get_running_loop().time()

    def resume_writing(self) -> None:
        self.paused = False
        if self.session is not None:
            self.session.conn.sending_since = 0.0
            self._notify()

    def data_received(self, data: bytes) -> None:
        if self.raw is not None:
            self.raw.append(data)
        self.ws.receive_data(data)
        self._feed(self.ws.events_received())
        self._flush()

    def shutdown(self) -> None:
        """uvicorn's shutdown (after the hub's drain): close what is left."""
        if self.transport is None:
            return
        if self.ws.state is WsState.OPEN:
            self.ws.send_close(1012)
            self._flush()
        self.transport.close()

    # ---------------------------------------------------------------- in
    def _feed(self, events: list[Any]) -> None:
        for i, event in enumerate(events):
            if self.transport is None:
                return  # handed over, or lost
            if isinstance(event, Request):
                self._handshake(event)
            elif self.session is not None and self.session.saturated:
                self.held.extend(events[i:])
                self.transport.pause_reading()
                return
            else:
                self._frame(event)

    def _frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                self._message(bytes(frame.data))
            else:
                self.parts = [bytes(frame.data)]
        elif op is Opcode.CONT and self.parts is not None:
            self.parts.append(bytes(frame.data))
            if frame.fin:
                data, self.parts = b"".join(self.parts), None
                self._message(data)
        elif op is Opcode.PONG and self.ping_payload == bytes(frame.data):
            self.ping_payload = None
        # PING and CLOSE: ServerProtocol queued the answer; _flush writes it.

    def _message(self, data: bytes) -> None:
        if self.session is not None and self.ws.state is WsState.OPEN:
            self.session.received(data)

    def _room(self) -> None:
        """The session may be fed again: the held events first, then the socket."""
        if self.transport is None:
            return
        held, self.held = self.held, []
        self._feed(held)
        if not self.held and self.transport is not None:
            self.transport.resume_reading()
            self._flush()

    def _handshake(self, request: Request) -> None:
        path, _, query = request.path.partition("?")
        st = getattr(getattr(self.app, "state", None), "gateway", None)
        if st is None or urllib.parse.unquote(path) != self.path:
            self._hand_over()
            return
        self.raw = None
        ws = self.ws
        response = ws.accept(request)
        if response.status_code != 101:  # not a valid WebSocket handshake
            ws.send_response(response)
            self._flush()
            assert self.transport is not None
            self.transport.close()
            return
        del response.headers["Date"]
        response.headers.update(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self.server_state.default_headers
        )
        ws.send_response(response)
        self._flush()  # before any frame written straight to the socket
        if not ws.reader.buffer:
            # Nothing came after the request yet, so the parser waits for a frame's first byte: a
            # fresh frame parser takes its place, and the handshake's generator frame, which held
            # the Request (headers, token: ~3.7 KB) for the connection's life, is freed.
            ws.parser = Protocol.parse(ws)
            next(ws.parser)
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        access.info('%s - "WebSocket %s" [accepted]', client, request.path)
        headers = request.headers
        auth = headers.get_all("authorization")
        token = token_from_request(
            {"authorization": auth[0]} if auth else {},
            dict(urllib.parse.parse_qsl(query, keep_blank_values=True)),
            cookie_parser("; ".join(headers.get_all("cookie"))),
        )
        claims, message, code, reason = refusal(st, token)
        if claims is None:
            self.transport.write(ws_text_frame(message.encode()))
            self._close(code, reason)
            return
        self.ping_at = asyncio.get_running_loop().time()
        session = self.session = Session(st, claims, on_room=self._room)
        session.conn.sink = self
        session.conn.notify = self._notify
        session.start()

    def _hand_over(self) -> None:
        """Another path: uvicorn's own protocol serves it through ASGI, from the first byte."""
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

        other = WebSocketsSansIOProtocol(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        transport, raw = self.transport, b"".join(self.raw or [])
        assert transport is not None
        self.server_state.connections.discard(self)
        self.transport = self.raw = None
        other.connection_made(transport)
        transport.set_protocol(other)
        other.data_received(raw)

    # ---------------------------------------------------------------- out (the sink)
    def writable(self) -> bool:
        return not self.paused and self.transport is not None and not self.transport.is_closing()

    def write_board(self, frames: BoardFrames) -> None:
        self.transport.write(frames.ws_frame)  # type: ignore[union-attr]

    def write_message(self, text: str) -> None:
        self.transport.write(ws_text_frame(text.encode()))  # type: ignore[union-attr]

    def gone(self, now: float) -> bool:
        """The keepalive, from the hub's sweep: a ping every ``ws_ping_interval``; one left
        unanswered for ``ws_ping_timeout`` fails the connection (1011). Answers whether the
        socket is closing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        if self.ws.state is not WsState.OPEN:
            return False
        interval, timeout = self.config.ws_ping_interval, self.config.ws_ping_timeout
        if self.ping_payload is not None:
            if timeout is not None and now - self.ping_at > timeout:
                self.ws.fail(1011, "keepalive ping timeout")
                self._flush()
                transport.close()
                return True
        elif interval and now - self.ping_at >= interval:
            self.ping_payload, self.ping_at = secrets.token_bytes(4), now
            self.ws.send_ping(self.ping_payload)
            self._flush()
        return False

    def _notify(self) -> None:
        """The connection has frames queued or left OPEN."""
        session, transport = self.session, self.transport
        assert session is not None
        conn = session.conn
        state = conn.life.state
        if transport is None or transport.is_closing():
            conn.outbox.take()
            return
        if state is State.CLOSED:  # kicked: a client stuck too long, or a drain's straggler
            transport.abort()
            return
        if self.paused or self.ws.close_sent is not None:
            return  # resume_writing comes back here
        pending = conn.outbox.take()
        if pending:
            transport.write(b"".join(ws_text_frame(text.encode()) for text in texts(pending)))
            session.st.metrics.messages.labels("ws").inc(len(pending))
        if state is State.DRAINING:
            last, code, reason = session.farewell()
            if last:
                transport.write(b"".join(ws_text_frame(text.encode()) for text in last))
            self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        """Send a close frame; the socket closes on the client's answer or after a timeout."""
        transport = self.transport
        assert transport is not None
        if self.ws.state is WsState.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
        self.held = []
        if not transport.is_reading():
            transport.resume_reading()  # for the client's close frame
        if self.close_timer is None:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.close)

    def _flush(self) -> None:
        """Write what ServerProtocol has to send (handshake, pongs, close frames); an empty chunk
        means the connection is done."""
        data = self.ws.data_to_send()
        transport = self.transport
        if data and transport is not None:
            transport.write(b"".join(data))
            if data[-1] == b"":
                transport.close()


# ---------------------------------------------------------------------------------- redis-py
# A node of a cluster that cannot be reached: its commands fail, the other nodes' still count.
_NodeFailure = (RedisConnectionError, OSError)


async def redis_round_trip(redis: Any, commands: Sequence[tuple[str, bytes]], timeout_s: float) -> list[Any]:
    """Send packed ``commands`` (routing key, RESP bytes) and read their replies in order under
    ONE timeout; an error reply is returned in its place (the replies after it are still read, so
    the connection stays in step).

    One Redis: one pooled connection; a dropped connection is retried by the pool's own policy
    (see ``store.clients``). A cluster: one connection per master of the keys' slots, written
    concurrently; a node that fails gives its commands that failure as their reply (the other
    nodes' replies still count); a command answered MOVED/ASK (the slot map is stale) makes the
    client reload the map, and goes once more to its new node (it was not applied). A timeout or
    cancellation mid-batch discards the sockets involved.
    """
    if not is_cluster(redis):
        return await _exchange_pooled(
            redis.connection_pool, b"".join(data for _, data in commands), len(commands), timeout_s
        )
    if not redis.nodes_manager.slots_cache:
        await redis.initialize()  # the client reads the slot map at its first command
    replies: list[Any] = [None] * len(commands)
    async with asyncio.timeout(timeout_s):
        await _by_node(redis, commands, range(len(commands)), replies)
        stale = [i for i, reply in enumerate(replies) if isinstance(reply, (AskError, *_NodeFailure))]
        if stale:
            with contextlib.suppress(Exception):
                await redis.nodes_manager.initialize()
            moved = [i for i in stale if isinstance(replies[i], AskError)]  # MovedError is an AskError
            if moved:
                await _by_node(redis, commands, moved, replies)
    return replies


async def _by_node(
    redis: Any, commands: Sequence[tuple[str, bytes]], which: Sequence[int], replies: list[Any]
) -> None:
    """Send the commands at indices ``which``, one write per node, and put their replies in place."""
    by_node: dict[Any, list[int]] = {}
    for i in which:
        by_node.setdefault(redis.get_node_from_key(commands[i][0]), []).append(i)
    answers = await asyncio.gather(
        *(_exchange_node(node, [commands[i][1] for i in indices]) for node, indices in by_node.items())
    )
    for indices, answer in zip(by_node.values(), answers, strict=True):
        for i, reply in zip(indices, answer, strict=True):
            replies[i] = reply


async def _exchange_pooled(pool: Any, payload: bytes, count: int, timeout_s: float) -> list[Any]:
    conn = await pool.get_connection()

    async def reset(error: Exception) -> None:
        await conn.disconnect()

    try:
        async with asyncio.timeout(timeout_s):
            replies: list[Any] = await conn.retry.call_with_retry(
                lambda: _exchange(conn, payload, count), reset
            )
            return replies
    except BaseException:
        await conn.disconnect(nowait=True)  # replies left unread: never reuse the socket
        raise
    finally:
        await pool.release(conn)


async def _exchange_node(node: Any, parts: list[bytes]) -> list[Any]:
    conn = node.acquire_connection()
    try:
        return await _exchange(conn, b"".join(parts), len(parts))
    except _NodeFailure as exc:
        await conn.disconnect(nowait=True)
        return [exc] * len(parts)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        node.release(conn)


async def _exchange(conn: Any, payload: bytes, count: int) -> list[Any]:
    await conn.send_packed_command(payload)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response(timeout=math.inf))
        except ResponseError as exc:  # an error reply: the replies after it are still read
            replies.append(exc)
    return replies
