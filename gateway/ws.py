"""GET /api/v1/ws — boards and autosave pings on one WebSocket (JSON text frames, API.md).

Authentication happens at the handshake (header, ``access_token`` query parameter or cookie);
a bad or expired token gets an ``error`` message and close code 4401. Every bad message gets an
``error`` message and the connection stays open, until the client has made
``ws_max_violations`` of them: then it is closed with 1008 (policy violation).

:class:`Session` is what a connection means, driven by calls and never waiting: a message in
(``received``), the connection's end (``end``). Whatever it sends goes through the connection
(``Connection.push``): straight to the socket where the server exposes it, else into the
newest-only outbox, so a slow client cannot stall the broadcaster and only ever misses
intermediate board versions. Two drivers move bytes: :func:`endpoint`, the portable ASGI one (a
read loop and a write loop per connection), and ``gateway.fastpath.FastWebSocket``, a uvicorn
protocol that calls the session from its socket callbacks, with no task per connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from contract.auth import Claims, token_from_request
from contract.boards import resolve
from contract.errors import AuthError, BoardNameError, ScorecastError, UnknownBoard
from contract.progress import PingResult, who
from contract.push import (
    ErrorMessage,
    Ping,
    Pong,
    ProgressPing,
    ReconnectMessage,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
    client_message_decoder,
    ping_seq_decoder,
)
from contract.seasons import alias_of
from contract.wire import json_encoder
from gateway.connection import Connection
from gateway.progress import ProgressRejected
from gateway.protocol import BoardFrames, State, TokenBucket
from gateway.state import GatewayState, gateway_state

CLOSE_UNAUTHORIZED = 4401
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
MAX_BOARDS_PER_CONNECTION = 20
MAX_PINGS_IN_FLIGHT = 16
log = logging.getLogger("scorecast.gateway.ws")
EXPIRED = ErrorMessage(code="token_expired", message="the access token expired; reconnect with a fresh one")


def encode(message: msgspec.Struct) -> str:
    return json_encoder.encode(message).decode()


def refusal(st: GatewayState, token: str | None) -> tuple[Claims | None, str, int, str]:
    """The handshake's verdict: (claims, "", 0, "") to serve, else (None, first message, close
    code, close reason) for a draining gateway or a bad token."""
    if st.hub.draining:
        return None, encode(ReconnectMessage(after_ms=st.hub.reconnect_after_ms())), CLOSE_TRY_AGAIN, ""
    try:
        if not token:
            raise AuthError("a bearer token is required", code="unauthorized")
        return st.verifier.verify(token), "", 0, ""
    except AuthError as exc:
        st.metrics.auth_failures.labels("ws", exc.code).inc()
        return None, encode(ErrorMessage(code=exc.code, message=exc.message)), CLOSE_UNAUTHORIZED, exc.code


class Session:
    """One authenticated WebSocket client: its messages, subscriptions, pings in flight.

    The driver calls :meth:`start` once, :meth:`received` per message (not while
    :attr:`saturated`: it waits for ``on_room``), and :meth:`end` when the socket is gone. When the
    connection leaves OPEN (a close the session asked for, a drain, an expired token) the driver
    sends what is queued, then :meth:`farewell`, then the close frame.
    """

    def __init__(self, st: GatewayState, claims: Claims, *, on_room: Callable[[], None]) -> None:
        self.st = st
        self.claims = claims
        self.conn = Connection("ws", claims.sub, expires_at=claims.exp)
        settings = st.settings
        self.bucket = TokenBucket(
            rate_per_s=settings.ws_rate_limit_per_s, burst=settings.ws_rate_limit_burst, now=time.monotonic()
        )
        self.violations = 0
        self.closing: tuple[int, str] | None = None  # the close this session asked for
        self.in_flight = 0  # pings received, not yet stored
        self.counted = False  # whether presence counts this connection: messages wait for it
        self.on_room = on_room  # called when the session may be fed again (no longer saturated)
        # Pings behind a course lookup: they keep their order (coverage counts consecutive pings).
        self.waiting: collections.deque[ProgressPing] = collections.deque()
        self.subscribing: dict[str, asyncio.Task[None]] = {}  # boards waited for, by name
        self.who = who(claims)  # what a completion by this connection's user records

    @property
    def saturated(self) -> bool:
        return self.in_flight >= MAX_PINGS_IN_FLIGHT or not self.counted

    def start(self) -> None:
        self.st.hub.register(self.conn)
        # A ping of this connection that moves the position publishes it only when the user's
        # count says another connection listens: the count comes first.
        self.st.presence.add(self.conn.user_id, +1).add_done_callback(self._counted)

    def _counted(self, _: asyncio.Future[None]) -> None:
        self.counted = True
        if self.in_flight < MAX_PINGS_IN_FLIGHT:
            self.on_room()

    def end(self) -> None:
        self.conn.close()
        for task in list(self.subscribing.values()):
            task.cancel()
        self.waiting.clear()
        if self.conn in self.st.hub.connections:
            self.st.hub.unregister(self.conn)
            self.st.presence.add(self.conn.user_id, -1)

    def farewell(self) -> tuple[list[str], int, str]:
        """What ends a connection that left OPEN: (last messages, close code, reason)."""
        if self.closing is not None:
            return [], *self.closing
        if self.conn.expired():  # the hub's sweep ended it: the same as at a message
            return [encode(EXPIRED)], CLOSE_UNAUTHORIZED, "token_expired"
        return [encode(ReconnectMessage(after_ms=self.st.hub.reconnect_after_ms()))], CLOSE_RESTART, ""

    # ------------------------------------------------------------ in
    def received(self, raw: str | bytes) -> None:
        if self.closing is not None or self.conn.life.state is not State.OPEN:
            return
        if self.conn.expired():
            self.st.metrics.auth_failures.labels("ws", EXPIRED.code).inc()
            self.send(EXPIRED)
            self.close(CLOSE_UNAUTHORIZED, "token_expired")
            return
        limit = self.st.settings.ws_max_message_bytes
        if len(raw) > limit:
            self.violation("too_large", f"messages are limited to {limit} bytes")
        elif not self.bucket.allow(time.monotonic()):
            self.violation("rate_limited", "too many messages; slow down", seq=ping_seq(raw))
        else:
            self._handle(raw)

    def _handle(self, raw: str | bytes) -> None:
        try:
            message = client_message_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            code = "unknown_type" if "`$.type`" in str(exc) else "bad_message"
            self.violation(code, str(exc), seq=ping_seq(raw))
            return
        except msgspec.DecodeError as exc:
            self.violation("bad_json", f"malformed JSON: {exc}")
            return
        if isinstance(message, ProgressPing):
            self._ping(message)
        elif isinstance(message, Ping):
            self.send(Pong())
        elif isinstance(message, Subscribe):
            self._subscribe(message.board)
        elif isinstance(message, Unsubscribe):
            try:
                board = resolve(message.board, self.st.hub.now())
            except BoardNameError as exc:
                self.violation(exc.code, exc.message)
                return
            self._stop_following(board)
            self.st.hub.unsubscribe(self.conn, board)
            self.send(Unsubscribed(board=board))

    def _ping(self, ping: ProgressPing) -> None:
        # Read on while Redis stores it: a burst of pings shares a round trip (the driver stops
        # reading at MAX_PINGS_IN_FLIGHT, so the acks fit in the outbox).
        self.in_flight += 1
        if not self.waiting:
            try:
                if self.st.writer.submit_cached(
                    self.claims,
                    ping,
                    origin=self.conn.id,
                    who=self.who,
                    done=functools.partial(self._saved, ping.seq),
                ):
                    return
            except ProgressRejected as exc:
                self._rejected(ping, exc)
                return
        self.waiting.append(ping)
        if len(self.waiting) == 1:
            task = asyncio.create_task(self._look_up())
            task.add_done_callback(_retrieve)

    async def _look_up(self) -> None:
        """Submit the waiting pings in order, each after its course was looked up."""
        while self.waiting:
            ping = self.waiting[0]
            try:
                await self.st.writer.submit(
                    self.claims,
                    ping,
                    origin=self.conn.id,
                    who=self.who,
                    done=functools.partial(self._saved, ping.seq),
                )
            except ProgressRejected as exc:
                self._rejected(ping, exc)
            if self.waiting and self.waiting[0] is ping:
                self.waiting.popleft()

    def _rejected(self, ping: ProgressPing, exc: ProgressRejected) -> None:
        self._release()
        self.violation(exc.code, exc.message, seq=ping.seq)

    def _release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == MAX_PINGS_IN_FLIGHT - 1 and self.counted:
            self.on_room()

    def _saved(self, seq: int, outcome: PingResult | ProgressRejected) -> None:
        self._release()
        if self.conn.life.state is not State.OPEN:
            return
        if isinstance(outcome, ProgressRejected):  # a backing service is down: not a violation
            self.send(ErrorMessage(code=outcome.code, message=outcome.message, seq=seq))
        elif not self.conn.push(ack_text(seq)):
            self.st.hub.kick(self.conn)

    def _subscribe(self, name: str) -> None:
        try:
            board = self.st.policy.name(name)
        except (BoardNameError, UnknownBoard) as exc:
            self.violation(exc.code, exc.message)
            return
        if board in self.subscribing:
            return  # its snapshot is on the way
        if (
            board not in self.conn.boards
            and len(self.conn.boards) + len(self.subscribing) >= MAX_BOARDS_PER_CONNECTION
        ):
            self.violation("too_many_boards", f"at most {MAX_BOARDS_PER_CONNECTION} boards per connection")
            return
        # Waiting for the board (read from Redis, the course looked up) happens beside the reads:
        # pings keep their pongs and pings their acks meanwhile.
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
            self.violation(exc.code, exc.message)
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

    def violation(self, code: str, message: str, *, seq: int | None = None) -> None:
        self.violations += 1
        self.st.metrics.violations.labels(code).inc()
        self.send(ErrorMessage(code=code, message=message, seq=seq))
        if self.violations >= self.st.settings.ws_max_violations:
            self.send(ErrorMessage(code="too_many_errors", message="closing after repeated bad messages"))
            self.close(CLOSE_POLICY, "too many bad messages")

    # ------------------------------------------------------------ out
    def send(self, message: msgspec.Struct) -> None:
        if not self.conn.push(encode(message)):
            self.st.hub.kick(self.conn)

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close: the driver does it when the connection leaves OPEN."""
        if self.closing is None:
            self.closing = (code, reason)
            self.conn.drain()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("looking up a ping's course failed", exc_info=task.exception())


def ack_text(seq: int) -> str:
    """``encode(Ack(seq=seq))``, without building the Struct: one per stored ping."""
    return f'{{"type":"ack","seq":{seq}}}'


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


# ---------------------------------------------------------------- the portable driver (ASGI)
async def endpoint(websocket: WebSocket) -> None:
    st = gateway_state(websocket)
    await websocket.accept()
    token = token_from_request(websocket.headers, websocket.query_params, websocket.cookies)
    claims, message, code, reason = refusal(st, token)
    if claims is None:
        await websocket.send_text(message)
        await websocket.close(code, reason=reason)
        return
    room = asyncio.Event()
    session = Session(st, claims, on_room=room.set)
    session.start()
    writer = asyncio.create_task(_write_loop(session, websocket))
    try:
        if await _read_loop(session, websocket, room):
            await writer  # the session asked to close: the writer sends what is queued, then closes
    except WebSocketDisconnect:
        pass
    finally:
        session.end()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer


async def _read_loop(session: Session, websocket: WebSocket, room: asyncio.Event) -> bool:
    """Feed the session until the client leaves (False) or the session asks to close (True)."""
    while session.closing is None:
        while session.saturated:
            room.clear()
            await room.wait()
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return False
        session.received(message.get("text") or message.get("bytes") or b"")
    return True


async def _write_loop(session: Session, websocket: WebSocket) -> None:
    conn = session.conn
    sent = session.st.metrics.messages.labels("ws")
    loop = asyncio.get_running_loop()
    while pending := await conn.next_frames():
        for text in texts(pending):
            conn.sending_since = loop.time()  # send() waits only while the socket is write-paused
            await websocket.send_text(text)
            conn.sending_since = 0.0
        sent.inc(len(pending))
    if conn.life.state is State.DRAINING:
        last, code, reason = session.farewell()
        with contextlib.suppress(Exception):
            for text in texts(conn.outbox.take()) + last:
                await websocket.send_text(text)
            await websocket.close(code, reason=reason)
