"""The gateway's WebSocket on a real gateway process: boards, keepalive, every bad message kind.

Every test runs twice (the ``ws_path`` fixture): on the fast path (gateway/fastpath/, uvicorn
protocol on websockets' Sans-I/O) and on the portable one (``FAST_PATH=0``: uvicorn's own protocol
and the ASGI endpoint), which a server without the fast path's shape gets.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import time
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.processes import Stack
from tests.browser import open_connections
from tests.conftest import TEST_SECRET
from tests.helpers import metric_value
from tests.test_gateway_sse import apply, make_board, publish

pytestmark = pytest.mark.usefixtures("ws_path")


def ws_url(stack: Stack, token: str | None) -> str:
    url = stack.gateway_url.replace("http://", "ws://") + "/api/v1/ws"
    return f"{url}?access_token={token}" if token else url


async def recv(ws: ClientConnection) -> dict[str, Any]:
    """The next message other than a ``rank`` event (those have their own tests:
    test_rank_events.py; here they would only interleave by timing)."""
    while True:
        message: dict[str, Any] = json.loads(await ws.recv(decode=True))
        if message["type"] != "rank":
            return message


async def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of ``kind`` (leaderboard frames may arrive in between)."""
    while True:
        message = await recv(ws)
        if message["type"] == kind:
            return message


@pytest.fixture
def token(issuer: TokenIssuer) -> str:
    return issuer.access_token(user_id="ada", name="Ada")


async def test_subscribe_gets_a_snapshot_then_updates(stack: Stack, redis: Any, token: str) -> None:
    store = await make_board(redis, scores={"ada": 3})
    stack.start("gateway")
    async with connect(ws_url(stack, token)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "board": "global"}))
        snapshot = await recv(ws)
        assert snapshot["type"] == "leaderboard"
        assert snapshot["board"] == "global"
        assert snapshot["leaderboard"] == [{"rank": 1, "userId": "ada", "name": "ada", "score": 3}]
        version = await apply(store, "global", {"bo": 8})
        await publish(redis, "global", version)
        update = await recv(ws)
        assert (update["type"], update["version"]) == ("leaderboard", version)
        assert [e["userId"] for e in update["leaderboard"]] == ["bo", "ada"]
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
        assert await open_connections(stack.gateway_url, "ws") == 1


async def test_token_in_header_and_cookie(stack: Stack, token: str) -> None:
    stack.start("gateway")
    for headers in ({"authorization": f"Bearer {token}"}, {"cookie": f"scorecast_token={token}"}):
        async with connect(ws_url(stack, None), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert await recv(ws) == {"type": "pong"}


BAD_MESSAGES = [
    ("not json", "{nope", "bad_json"),
    ("not an object", "[1, 2]", "bad_message"),
    ("unknown type", json.dumps({"type": "teleport"}), "unknown_type"),
    ("missing field", json.dumps({"type": "subscribe"}), "bad_message"),
    ("unknown field", json.dumps({"type": "ping", "extra": 1}), "bad_message"),
    ("bad board", json.dumps({"type": "subscribe", "board": "galaxy"}), "invalid_board"),
    ("negative position", json.dumps({"type": "progress", "courseId": "c", "lectureId": "l", "position": -1,
                                      "seq": 1}), "bad_message"),
    ("oversized", json.dumps({"type": "ping", "pad": "x" * 5000}), "too_large"),
    ("binary junk", b"\x00\xff\x00", "bad_json"),
]  # fmt: skip


async def test_every_bad_message_gets_an_error_and_the_connection_survives(stack: Stack, token: str) -> None:
    stack.start("gateway")
    async with connect(ws_url(stack, token)) as ws:
        for why, raw, code in BAD_MESSAGES:
            await ws.send(raw)
            error = await recv(ws)
            assert error["type"] == "error", why
            assert error["code"] == code, why
            assert error["message"], why
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}


async def test_a_flood_gets_errors_then_a_policy_close(stack: Stack, token: str) -> None:
    stack.start("gateway", ws_rate_limit_per_s=1.0, ws_rate_limit_burst=3, ws_max_violations=5)
    codes: list[str] = []
    async with connect(ws_url(stack, token)) as ws:
        for _ in range(30):
            await ws.send(json.dumps({"type": "ping"}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                message = await recv(ws)
                codes.append(message.get("code", message["type"]))
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert codes[:3] == ["pong", "pong", "pong"]
    assert codes.count("rate_limited") == 5
    assert codes[-1] == "too_many_errors"
    assert await metric_value(stack, 'scorecast_gateway_ws_violations_total{code="rate_limited"}') == 5


@pytest.mark.parametrize("kind", ["missing", "expired", "forged"])
async def test_bad_tokens_close_with_4401(stack: Stack, kind: str) -> None:
    stack.start("gateway")
    now = int(time.time())
    claims = {"sub": "ada", "name": "Ada", "iat": now - 100, "exp": now - 10, "jti": "j", "aud": "scorecast",
              "iss": "scorecast-dev"}  # fmt: skip
    token = {
        "missing": None,
        "expired": jwt.encode(claims, TEST_SECRET, algorithm="HS256"),
        "forged": jwt.encode({**claims, "exp": now + 100}, "wrong-" + "k" * 40, algorithm="HS256"),
    }[kind]
    async with connect(ws_url(stack, token)) as ws:
        error = await recv(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    want = {"missing": "unauthorized", "expired": "token_expired", "forged": "invalid_token"}[kind]
    assert error == {"type": "error", "code": want, "message": error["message"]}
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, want)
    counted = f'scorecast_gateway_auth_failures_total{{code="{want}",transport="ws"}}'
    assert await metric_value(stack, counted) == 1


async def test_errors_about_a_ping_carry_its_seq(stack: Stack, token: str) -> None:
    stack.start("gateway", ws_rate_limit_per_s=0.01, ws_rate_limit_burst=4)
    fields = {"type": "progress", "courseId": "nowhere", "lectureId": "l"}
    async with connect(ws_url(stack, token)) as ws:
        await ws.send(json.dumps({**fields, "position": -1, "seq": 5}))  # invalid, seq readable
        assert (await recv(ws))["seq"] == 5
        await ws.send(json.dumps({**fields, "position": 1, "seq": -2}))  # the seq itself is invalid
        error = await recv(ws)
        assert error["code"] == "bad_message" and "seq" not in error
        await ws.send(json.dumps({"type": "subscribe", "board": "galaxy", "seq": 9}))  # not a ping
        error = await recv(ws)
        assert error["code"] == "bad_message" and "seq" not in error
        await ws.send(json.dumps({**fields, "position": 1, "seq": 6}))  # valid, unknown course
        error = await recv(ws)
        assert (error["code"], error["seq"]) == ("unknown_course", 6)
        await ws.send(json.dumps({**fields, "position": 1, "seq": 7}))  # over the rate limit
        error = await recv(ws)
        assert (error["code"], error["seq"]) == ("rate_limited", 7)
        await ws.send(json.dumps({"type": "ping"}))
        error = await recv(ws)
        assert error["code"] == "rate_limited" and "seq" not in error


async def test_unsubscribe_is_answered(stack: Stack, redis: Any, token: str) -> None:
    await make_board(redis, scores={"ada": 3})
    stack.start("gateway")
    async with connect(ws_url(stack, token)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "board": "global"}))
        assert (await recv(ws))["type"] == "leaderboard"
        await ws.send(json.dumps({"type": "unsubscribe", "board": "global"}))
        assert await recv(ws) == {"type": "unsubscribed", "board": "global"}
        await ws.send(json.dumps({"type": "unsubscribe", "board": "weekly"}))  # never followed
        answer = await recv(ws)
        assert answer["type"] == "unsubscribed" and answer["board"].startswith("weekly:")
        await ws.send(json.dumps({"type": "unsubscribe", "board": "galaxy"}))
        assert (await recv(ws))["code"] == "invalid_board"


async def test_an_idle_connection_is_closed_when_its_token_expires(stack: Stack, settings: Settings) -> None:
    stack.start("gateway")
    short = TokenIssuer(settings.replace(access_token_ttl_s=2)).access_token(user_id="ada", name="Ada")
    async with connect(ws_url(stack, short)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
        # Nothing more is sent: the gateway's sweep ends the connection at the token's exp.
        error = await asyncio.wait_for(recv(ws), timeout=20)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert (error["type"], error["code"]) == ("error", "token_expired")
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "token_expired")


async def test_the_gateway_says_which_path_serves(stack: Stack, token: str, ws_path: str) -> None:
    gateway = stack.start("gateway")
    async with connect(ws_url(stack, token)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
    log = gateway.log()
    if ws_path == "fast":
        assert "fast path on (gateway/fastpath/, checked against uvicorn" in log, log
    else:
        assert "fast path off (FAST_PATH=0)" in log, log


class RawWebSocket:
    """A client that sees the server's frames as bytes (RFC 6455: server frames are unmasked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, token: str) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        assert len(payload) < 126
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)  # zero mask

    async def frame(self) -> bytes:
        """The next frame other than a ``rank`` event, header included, as it came over the wire."""
        while True:
            frame = await self._frame()
            if not (frame[0] == 0x81 and frame_json(frame)["type"] == "rank"):
                return frame

    async def _frame(self) -> bytes:
        head = await self.reader.readexactly(2)
        assert not head[1] & 0x80, "a server frame is never masked"
        n = head[1] & 0x7F
        extended = b""
        if n == 126:
            extended = await self.reader.readexactly(2)
            (n,) = struct.unpack("!H", extended)
        elif n == 127:
            extended = await self.reader.readexactly(8)
            (n,) = struct.unpack("!Q", extended)
        return head + extended + await self.reader.readexactly(n)

    def close(self) -> None:
        self.writer.close()


def frame_json(frame: bytes) -> dict[str, Any]:
    n = frame[1] & 0x7F
    decoded: dict[str, Any] = json.loads(frame[2 + {126: 2, 127: 8}.get(n, 0) :])
    return decoded


def text_frame(message: dict[str, Any]) -> bytes:
    """The bytes of a server text frame carrying ``message`` as compact JSON (written here, by
    hand, from RFC 6455 and the API's field order)."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + struct.pack("!H", n)
    return head + payload


async def test_frames_are_the_same_bytes_for_snapshot_update_and_reconnect(
    stack: Stack, redis: Any, token: str
) -> None:
    store = await make_board(redis, scores={"ada": 3})
    gateway = stack.start("gateway", reconnect_jitter_ms=0)
    ws = await RawWebSocket.open(stack.settings.gateway_port, token)
    try:
        ws.send({"type": "subscribe", "board": "global"})
        snapshot = await ws.frame()
        stamp, version = frame_json(snapshot)["timestamp"], frame_json(snapshot)["version"]
        entries = [{"rank": 1, "userId": "ada", "name": "ada", "score": 3}]
        board = {"type": "leaderboard", "board": "global", "version": version, "timestamp": stamp}
        assert snapshot == text_frame({**board, "leaderboard": entries})
        new = await apply(store, "global", {"bo": 8})
        await publish(redis, "global", new)
        update = await ws.frame()
        board.update(version=new, timestamp=frame_json(update)["timestamp"])
        entries.insert(0, {"rank": 1, "userId": "bo", "name": "bo", "score": 8})
        entries[1]["rank"] = 2
        assert update == text_frame({**board, "leaderboard": entries})
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        assert await ws.frame() == text_frame({"type": "reconnect", "afterMs": 0})
        assert await ws.frame() == b"\x88\x02" + struct.pack("!H", 1012)  # close, 1012, no reason
    finally:
        ws.close()


def client_frame(
    payload: bytes, *, opcode: int = 0x1, fin: bool = True, mask: bytes = b"\x5a\x13\xc4\x7e"
) -> bytes:
    """A client frame (RFC 6455 5.2): masked with ``mask``, the shortest length encoding."""
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode]) + length + mask + masked


PONG = text_frame({"type": "pong"})


async def test_frames_split_or_coalesced_in_any_way_are_all_answered(stack: Stack, token: str) -> None:
    stack.start("gateway")
    ws = await RawWebSocket.open(stack.settings.gateway_port, token)
    try:
        ping = b'{"type":"ping"}'
        padded = b'{"type":"ping"' + b" " * 300 + b"}"  # a 16-bit length
        ws.writer.write(client_frame(ping) * 3 + client_frame(padded))  # in one write
        for _ in range(4):
            assert await ws.frame() == PONG
        stream = client_frame(padded) + client_frame(ping)
        for i in range(len(stream)):  # a byte at a time: every frame arrives in pieces
            ws.writer.write(stream[i : i + 1])
            await ws.writer.drain()
            await asyncio.sleep(0.001)
        assert await ws.frame() == PONG
        assert await ws.frame() == PONG
        # A control frame between messages: the client's ping gets its pong, messages go on.
        ws.writer.write(client_frame(b"hi", opcode=0x9) + client_frame(ping))
        assert await ws._frame() == b"\x8a\x02hi"
        assert await ws.frame() == PONG
        # A message in fragments is reassembled, and the messages after it are answered.
        ws.writer.write(
            client_frame(ping[:5], fin=False) + client_frame(ping[5:], opcode=0x0) + client_frame(ping)
        )
        assert await ws.frame() == PONG
        assert await ws.frame() == PONG
        ws.writer.write(client_frame(ping))
        assert await ws.frame() == PONG
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("why", "frame", "code"),
    [
        ("unmasked", bytes([0x81, 15]) + b'{"type":"ping"}', 1002),
        ("reserved bit", bytes([0xC1]) + client_frame(b'{"type":"ping"}')[1:], 1002),
        ("too large", bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 70000) + b"\0" * 4, 1009),
        ("unknown opcode", client_frame(b"{}", opcode=0x3), 1002),
        ("continuation first", client_frame(b"{}", opcode=0x0), 1002),
    ],
)
async def test_a_frame_against_the_protocol_closes_the_connection(
    stack: Stack, token: str, why: str, frame: bytes, code: int
) -> None:
    stack.start("gateway")
    ws = await RawWebSocket.open(stack.settings.gateway_port, token)
    try:
        ws.writer.write(client_frame(b'{"type":"ping"}'))
        assert await ws.frame() == PONG
        ws.writer.write(frame)
        close = await ws._frame()
        assert close[0] == 0x88, why
        assert struct.unpack("!H", close[2:4])[0] == code, why
    finally:
        ws.close()


async def test_a_close_from_the_client_is_answered_and_ends_the_connection(stack: Stack, token: str) -> None:
    stack.start("gateway")
    ws = await RawWebSocket.open(stack.settings.gateway_port, token)
    try:
        ws.writer.write(client_frame(b'{"type":"ping"}'))
        assert await ws.frame() == PONG
        ws.writer.write(client_frame(struct.pack("!H", 1000), opcode=0x8))
        assert await ws._frame() == b"\x88\x02" + struct.pack("!H", 1000)
        assert await ws.reader.read() == b""  # the server closed the socket
    finally:
        ws.close()
