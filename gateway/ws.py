"""GET /api/v1/ws — boards and autosave pings on one WebSocket (JSON text frames, API.md).

Authentication happens at the handshake (header, ``access_token`` query parameter or cookie);
a bad or expired token gets an ``error`` message and close code 4401. Every bad message gets an
``error`` message and the connection stays open, until the client has made
``ws_max_violations`` of them: then it is closed with 1008 (policy violation). All outgoing
frames go through the connection's outbox, written by one task, so a slow client cannot stall
the broadcaster and only ever misses intermediate board versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.protocol import State as WsState

from contract import keys
from contract.auth import Claims, token_from_request
from contract.boards import resolve
from contract.errors import AuthError, BoardNameError, ScorecastError, UnknownBoard
from contract.messages import (
    Ack,
    ErrorMessage,
    Ping,
    Pong,
    ProgressPing,
    ReconnectMessage,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
    client_message_decoder,
    json_encoder,
    ping_seq_decoder,
)
from contract.progress import PingResult
from contract.seasons import alias_of
from gateway.hub import Connection
from gateway.progress import ProgressRejected
from gateway.protocol import BoardFrames, State, TokenBucket
from gateway.sse import RAW_SEND, send_owner
from gateway.state import GatewayState, gateway_state

CLOSE_UNAUTHORIZED = 4401
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
MAX_BOARDS_PER_CONNECTION = 20
MAX_PINGS_IN_FLIGHT = 16
PRESENCE_TTL_S = 24 * 3600
log = logging.getLogger("scorecast.gateway.ws")
EXPIRED = ErrorMessage(code="token_expired", message="the access token expired; reconnect with a fresh one")


def encode(message: msgspec.Struct) -> str:
    return json_encoder.encode(message).decode()


async def endpoint(websocket: WebSocket) -> None:
    st = gateway_state(websocket)
    await websocket.accept()
    if st.hub.draining:
        await websocket.send_text(encode(ReconnectMessage(after_ms=st.hub.reconnect_after_ms())))
        await websocket.close(CLOSE_TRY_AGAIN)
        return
    try:
        token = token_from_request(websocket.headers, websocket.query_params, websocket.cookies)
        if not token:
            raise AuthError("a bearer token is required", code="unauthorized")
        claims = st.verifier.verify(token)
    except AuthError as exc:
        await websocket.send_text(encode(ErrorMessage(code=exc.code, message=exc.message)))
        await websocket.close(CLOSE_UNAUTHORIZED, reason=exc.code)
        return
    session = Session(st, websocket, claims)
    await session.run()


class Session:
    def __init__(self, st: GatewayState, websocket: WebSocket, claims: Claims) -> None:
        self.st = st
        self.websocket = websocket
        self.claims = claims
        self.conn = Connection("ws", claims.sub, expires_at=claims.exp)
        settings = st.settings
        self.bucket = TokenBucket(
            rate_per_s=settings.ws_rate_limit_per_s, burst=settings.ws_rate_limit_burst, now=time.monotonic()
        )
        self.violations = 0
        self.closing = False
        self.in_flight = asyncio.Semaphore(MAX_PINGS_IN_FLIGHT)  # pings submitted, not yet stored
        self.subscribing: dict[str, asyncio.Task[None]] = {}  # boards waited for, by name

    async def run(self) -> None:
        hub = self.st.hub
        hub.register(self.conn)
        writer = asyncio.create_task(self._write_loop())
        await self._presence(+1)
        try:
            await self._read_loop()
        except WebSocketDisconnect:
            pass
        finally:
            self.conn.close()
            for task in list(self.subscribing.values()):
                task.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            hub.unregister(self.conn)
            await self._presence(-1)

    async def _presence(self, delta: int) -> None:
        """Count the user's open connections in Redis: autosave pings publish a move only when
        another connection of the user may be listening. A lost update only costs a needless
        publish (too high) or is healed by the key's expiry."""
        key = keys.presence(self.conn.user_id)
        try:
            pipe = self.st.redis.pipeline(transaction=False)
            pipe.incrby(key, delta)
            pipe.expire(key, PRESENCE_TTL_S)
            await pipe.execute()
        except Exception:
            log.warning("presence update failed for %s", self.conn.user_id, exc_info=True)

    # ------------------------------------------------------------ in
    async def _read_loop(self) -> None:
        limit = self.st.settings.ws_max_message_bytes
        while not self.closing:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw: str | bytes = message.get("text") or message.get("bytes") or b""
            if self.conn.expired():
                self.send(EXPIRED)
                await self._close(CLOSE_UNAUTHORIZED, "token_expired")
                return
            if len(raw) > limit:
                await self.violation("too_large", f"messages are limited to {limit} bytes")
            elif not self.bucket.allow(time.monotonic()):
                await self.violation("rate_limited", "too many messages; slow down", seq=ping_seq(raw))
            else:
                await self._handle(raw)

    async def _handle(self, raw: str | bytes) -> None:
        try:
            message = client_message_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            code = "unknown_type" if "`$.type`" in str(exc) else "bad_message"
            await self.violation(code, str(exc), seq=ping_seq(raw))
            return
        except msgspec.DecodeError as exc:
            await self.violation("bad_json", f"malformed JSON: {exc}")
            return
        if isinstance(message, ProgressPing):
            # Read on while Redis stores it: a burst of pings shares a round trip and its acks
            # go out in one write. The bound keeps the acks within the outbox.
            await self.in_flight.acquire()
            try:
                saved = await self.st.writer.submit(self.claims, message, origin=self.conn.id)
            except ProgressRejected as exc:
                self.in_flight.release()
                await self.violation(exc.code, exc.message, seq=message.seq)
                return
            saved.add_done_callback(functools.partial(self._saved, message.seq))
        elif isinstance(message, Ping):
            self.send(Pong())
        elif isinstance(message, Subscribe):
            await self._subscribe(message.board)
        elif isinstance(message, Unsubscribe):
            try:
                board = resolve(message.board, self.st.hub.now())
            except BoardNameError as exc:
                await self.violation(exc.code, exc.message)
                return
            self._stop_following(board)
            self.st.hub.unsubscribe(self.conn, board)
            self.send(Unsubscribed(board=board))

    def _saved(self, seq: int, saved: asyncio.Future[PingResult]) -> None:
        self.in_flight.release()
        if saved.cancelled():
            return
        exc = saved.exception()  # retrieved even when no one is left to tell
        if self.conn.life.state is not State.OPEN:
            return
        if isinstance(exc, ProgressRejected):  # a backing service is down: not a violation
            self.send(ErrorMessage(code=exc.code, message=exc.message, seq=seq))
        elif exc is None:
            self.st.metrics.pings.inc()
            self.send(Ack(seq=seq))

    async def _subscribe(self, name: str) -> None:
        try:
            board = self.st.policy.name(name)
        except (BoardNameError, UnknownBoard) as exc:
            await self.violation(exc.code, exc.message)
            return
        if board in self.subscribing:
            return  # its snapshot is on the way
        if (
            board not in self.conn.boards
            and len(self.conn.boards) + len(self.subscribing) >= MAX_BOARDS_PER_CONNECTION
        ):
            await self.violation(
                "too_many_boards", f"at most {MAX_BOARDS_PER_CONNECTION} boards per connection"
            )
            return
        # Waiting for the board (read from Redis, the course looked up) happens beside the read
        # loop: pings keep their pongs and pings their acks meanwhile.
        task = asyncio.create_task(self._follow(board, alias_of(name)))
        self.subscribing[board] = task
        task.add_done_callback(functools.partial(self._followed, board))

    def _followed(self, board: str, task: asyncio.Task[None]) -> None:
        if self.subscribing.get(board) is task:  # not a newer subscribe to the same board
            del self.subscribing[board]

    async def _follow(self, board: str, alias: str | None) -> None:
        if board in self.conn.boards:
            self.conn.versions.pop(board, None)  # subscribing again asks for a snapshot again
        try:
            frames = await self.st.policy.follow(self.st.hub, self.conn, board, alias=alias)
        except UnknownBoard as exc:
            await self.violation(exc.code, exc.message)
        except ScorecastError as exc:  # unavailable, board_limit: not the client's fault
            self.send(ErrorMessage(code=exc.code, message=exc.message))
        except Exception:
            log.exception("subscribing to %s failed", board)
            self.send(ErrorMessage(code="unavailable", message=f"board {board} cannot be followed now"))
        else:
            if board in self.conn.boards:  # not unsubscribed meanwhile
                self.conn.push_board(frames)

    def _stop_following(self, board: str) -> None:
        """An unsubscribe also ends a subscribe still waiting for its board."""
        task = self.subscribing.pop(board, None)
        if task is not None:
            task.cancel()

    async def violation(self, code: str, message: str, *, seq: int | None = None) -> None:
        self.violations += 1
        self.send(ErrorMessage(code=code, message=message, seq=seq))
        if self.violations >= self.st.settings.ws_max_violations:
            self.send(ErrorMessage(code="too_many_errors", message="closing after repeated bad messages"))
            await self._close(CLOSE_POLICY, "too many bad messages")

    # ------------------------------------------------------------ out
    def send(self, message: msgspec.Struct) -> None:
        if not self.conn.push(encode(message)):
            self.st.hub.kick(self.conn)

    async def _close(self, code: int, reason: str) -> None:
        """Flush what is queued, then close."""
        self.closing = True
        self.conn.drain()
        await self._flush()
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason=reason)

    async def _flush(self) -> None:
        for text in texts(self.conn.outbox.take()):
            await self.websocket.send_text(text)

    async def _write_loop(self) -> None:
        sent = self.st.metrics.messages.labels("ws")
        sink = WebSocketSink.of(self.websocket.scope.get(RAW_SEND))
        loop = asyncio.get_running_loop()
        while True:
            pending = await self.conn.next_frames()
            if not pending:
                break
            if sink is not None and sink.writable():
                sink.write(texts(pending))
            else:
                for text in texts(pending):
                    self.conn.sending_since = loop.time()
                    await self.websocket.send_text(text)
                    self.conn.sending_since = 0.0
            sent.inc(len(pending))
        if self.conn.life.state is State.DRAINING and not self.closing:
            self.closing = True
            with contextlib.suppress(Exception):
                await self._flush()
                if self.conn.expired():  # the hub's sweep ended it: the same as at a message
                    await self.websocket.send_text(encode(EXPIRED))
                    await self.websocket.close(CLOSE_UNAUTHORIZED, reason="token_expired")
                    return
                await self.websocket.send_text(
                    encode(ReconnectMessage(after_ms=self.st.hub.reconnect_after_ms()))
                )
                await self.websocket.close(CLOSE_RESTART)


def ping_seq(raw: str | bytes) -> int | None:
    """The ``seq`` of a refused message that is a progress ping by its ``type``, when it has a
    valid one: the client keeps a ping until it hears about that seq, and would resend forever."""
    try:
        probe = ping_seq_decoder.decode(raw)
    except msgspec.DecodeError:  # ValidationError included: no usable seq
        return None
    return probe.seq if probe.type == "progress" else None


def texts(frames: list[object]) -> list[str]:
    out = [frame.ws_text if isinstance(frame, BoardFrames) else frame for frame in frames]
    assert all(isinstance(text, str) for text in out)
    return out  # type: ignore[return-value]


class WebSocketSink:
    """The socket under a WebSocket, for writing every pending frame in one ``write``.

    uvicorn's ``websockets-sansio`` protocol (the ``send`` bound method's owner) holds the sans-I/O
    connection that frames messages and the transport. Through ASGI each message costs a
    coroutine switch and a ``write(2)`` of its own; here a burst of acks and board frames goes out
    in one. When that shape is not there — another server or WebSocket implementation — :meth:`of`
    answers None and frames take the ASGI path, as they do while the socket is write-paused.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    @classmethod
    def of(cls, send: object) -> WebSocketSink | None:
        protocol = send_owner(send, "conn", "transport", "writable", "close_sent", "handshake_complete")
        conn = getattr(protocol, "conn", None)
        if conn is None or not all(hasattr(conn, a) for a in ("send_text", "data_to_send", "state")):
            return None
        return cls(protocol)

    def writable(self) -> bool:
        protocol = self.protocol
        return (
            protocol.handshake_complete
            and protocol.writable.is_set()
            and not protocol.close_sent
            and protocol.conn.state is WsState.OPEN
            and not protocol.transport.is_closing()
        )

    def write(self, messages: list[str]) -> None:
        conn = self.protocol.conn
        for text in messages:
            conn.send_text(text.encode())
        self.protocol.transport.write(b"".join(conn.data_to_send()))
