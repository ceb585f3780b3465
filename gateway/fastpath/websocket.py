"""The WebSocket side of the fast path: ``/api/v1/ws`` served from socket callbacks (see the
package's docstring for what is relied on)."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import urllib.parse
from typing import Any, ClassVar

from starlette.requests import cookie_parser
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from contract.auth import token_from_request
from gateway.protocol import BoardFrames, State, ws_text_frame
from gateway.ws import Session, refusal, texts

access = logging.getLogger("uvicorn.error")  # where uvicorn logs a WebSocket handshake
CLOSE_TIMEOUT_S = 10.0  # the client's answer to a close frame, before the socket is closed


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
        "buffer",
        "close_timer",
        "config",
        "heard",
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
        self.heard = False  # whether the client sent anything since the last keepalive check
        # Bytes of an OPEN connection not parsed yet, from a frame's first byte (see _frames);
        # None while frames go through ServerProtocol's parser.
        self.buffer: bytes | None = None

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
        self.heard = True
        if self.buffer is not None:
            self._frames(self.buffer + data if self.buffer else data)
            return
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

    def _frames(self, buf: bytes) -> None:
        """Parse the complete frames of ``buf`` (starting at a frame's first byte) here, not in
        ServerProtocol's generators: a whole text or binary message goes to the session; a whole
        control frame goes to ServerProtocol (pongs, the close handshake), which therefore stays
        at a frame boundary. What this does not take — a fragment, reserved bits, an unmasked or
        too large frame, a connection no longer OPEN — goes to ServerProtocol from that frame on,
        for good (it answers as it would have). A partial frame waits for the rest, and the rest
        waits while the session is saturated (reading paused)."""
        self.buffer = b""
        ws, session, transport = self.ws, self.session, self.transport
        assert session is not None and transport is not None
        limit = ws.max_message_size or math.inf
        pos, n = 0, len(buf)
        while pos < n:
            if self.transport is None:
                return  # lost meanwhile
            if ws.state is not WsState.OPEN:
                self._slow(buf[pos:])
                return
            if session.saturated:
                self.buffer = buf[pos:]
                transport.pause_reading()
                return
            if n - pos < 2:
                break
            head, second = buf[pos], buf[pos + 1]
            length, at = second & 0x7F, pos + 2
            if length == 126:
                if n - at < 2:
                    break
                length, at = (buf[at] << 8) | buf[at + 1], at + 2
            if length == 127 or length > limit or not second & 0x80 or head & 0x70:
                self._slow(buf[pos:])  # too large, unmasked or reserved bits: ServerProtocol fails it
                return
            end = at + 4 + length
            if end > n:
                break
            op = head & 0x0F
            if head & 0x80 and (op == 1 or op == 2):  # a whole text or binary message
                data = apply_mask(buf[at + 4 : end], buf[at : at + 4])
                pos = end
                session.received(data)
            elif op >= 8:  # close, ping, pong: whole, as ServerProtocol would have parsed it
                ws.receive_data(buf[pos:end])
                pos = end
                for event in ws.events_received():
                    if isinstance(event, Frame):
                        self._frame(event)
                self._flush()
            else:  # a fragment: ServerProtocol reassembles from here on
                self._slow(buf[pos:])
                return
        self.buffer = buf[pos:]

    def _slow(self, rest: bytes) -> None:
        """From here on every frame goes through ServerProtocol (at a frame boundary now)."""
        self.buffer = None
        if rest:
            self.ws.receive_data(rest)
            self._feed(self.ws.events_received())
        self._flush()

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
        """The session may be fed again: the held bytes or events first, then the socket."""
        if self.transport is None:
            return
        if self.buffer is not None:
            self._frames(self.buffer)
            if self.buffer is not None:
                session = self.session
                if self.transport is not None and session is not None and not session.saturated:
                    self.transport.resume_reading()
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
        synced = not ws.reader.buffer
        if synced:
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
        if synced:
            self.buffer = b""  # frames are parsed here from now on (_frames)
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
        """The keepalive, from the hub's sweep: a ping after ``ws_ping_interval`` in which nothing
        came from the client (an autosave or keepalive message proves it alive as well as a pong);
        one left unanswered for ``ws_ping_timeout`` fails the connection (1011). Answers whether
        the socket is closing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        interval, timeout = self.config.ws_ping_interval, self.config.ws_ping_timeout
        if self.ping_payload is None and (not interval or now - self.ping_at < interval):
            return False  # the common case, every connection every sweep: nothing to do
        if self.ws.state is not WsState.OPEN:
            return False
        if self.ping_payload is not None:
            if timeout is not None and now - self.ping_at > timeout:
                self.ws.fail(1011, "keepalive ping timeout")
                self._flush()
                transport.close()
                return True
        elif interval and now - self.ping_at >= interval:
            if self.heard:  # the client spoke within the interval: alive, no ping needed
                self.heard, self.ping_at = False, now
                return False
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
