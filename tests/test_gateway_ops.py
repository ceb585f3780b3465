"""Operations: drain on SIGTERM, health and readiness, metrics, slow clients."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import uuid
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.processes import Stack
from gateway import app as gateway_app
from gateway import fastpath
from gateway.app import create_app
from gateway.connection import Connection
from gateway.protocol import State
from gateway.state import GatewayState
from store.boards import BoardStore
from tests.browser import open_connections
from tests.eventually import eventually
from tests.helpers import asgi_client
from tests.sse_client import sse
from tests.test_gateway_sse import make_board, publish
from tests.test_gateway_ws import recv, ws_url


async def test_sigterm_drains_every_client_then_exits(stack: Stack, redis: Any, issuer: TokenIssuer) -> None:
    await make_board(redis, scores={"ada": 1})
    gateway = stack.start("gateway", reconnect_jitter_ms=500)
    token = issuer.access_token(user_id="ada", name="Ada")
    async with sse(stack, token) as reader, connect(ws_url(stack, token)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "board": "global"}))
        assert (await recv(ws))["type"] == "leaderboard"
        await eventually(lambda: asyncio.sleep(0, reader.events), until=bool)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        reconnect = await recv(ws)
        assert reconnect["type"] == "reconnect"
        assert 0 <= reconnect["afterMs"] <= 500
        try:
            await ws.recv()
            raise AssertionError("the gateway kept the WebSocket open")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1012
        await eventually(lambda: asyncio.sleep(0, reader.ended), until=bool)
        assert reader.events[-1]["event"] == "reconnect"
        assert 0 <= reader.events[-1]["data"]["afterMs"] <= 500
    # uvicorn re-raises the signal it handled once shut down: a clean exit reads as -SIGTERM.
    assert await asyncio.to_thread(gateway.process.wait, 20) in (0, -signal.SIGTERM)


def test_the_fast_path_is_checked_at_start_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert fastpath.unavailable() is None  # the libraries within pyproject's bounds have the shape
    assert gateway_app.fast_path(settings)
    assert not gateway_app.fast_path(settings.replace(fast_path=False))
    monkeypatch.setattr(fastpath, "unavailable", lambda: "uvicorn moved its cheese")
    with caplog.at_level(logging.WARNING, logger="scorecast.gateway"):
        assert not gateway_app.fast_path(settings)
    assert "fast path off (uvicorn moved its cheese)" in caplog.text


async def test_health_readiness_config_and_metrics(settings: Settings, redis: Any) -> None:
    app = create_app(settings.replace(public_ingest_url="http://ingest.example"))
    async with asgi_client(app, "http://gateway") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert (await client.get("/api/v1/config")).json() == {"ingestUrl": "http://ingest.example"}
        metrics = (await client.get("/metrics")).text
        assert 'scorecast_gateway_connections{transport="sse"} 0.0' in metrics
        assert 'scorecast_gateway_connections{transport="ws"} 0.0' in metrics
        st: GatewayState = app.state.gateway
        await st.hub.drain(0)
        assert (await client.get("/readyz")).status_code == 503
        refused = await client.get("/api/v1/leaderboard/stream")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining"


async def test_a_client_stuck_in_a_write_is_disconnected(settings: Settings, redis: Any) -> None:
    app = create_app(settings.replace(slow_client_timeout_s=0.2))
    async with asgi_client(app, "http://gateway"):
        st: GatewayState = app.state.gateway
        conn = Connection("sse", "slowpoke")

        async def stuck_stream() -> None:
            st.hub.register(conn)
            try:
                conn.sending_since = asyncio.get_running_loop().time()
                await asyncio.sleep(3600)  # a send() that never returns: the socket is write-paused
            finally:
                st.hub.unregister(conn)

        task = asyncio.create_task(stuck_stream())
        await eventually(lambda: asyncio.sleep(0, task.done()), until=bool)
        assert task.cancelled()
        assert conn.life.state is State.CLOSED
        assert st.metrics.slow_disconnects._value.get() == 1
        assert not st.hub.connections


def masked_text_frame(payload: bytes) -> bytes:
    """One client-to-server WebSocket text frame (RFC 6455: clients mask, here with a zero key)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def open_stream_then_stop_reading(port: int, transport: str, token: str) -> socket.socket:
    """A client with a tiny receive buffer that opens its stream and never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    if transport == "sse":
        request = (
            f"GET /api/v1/leaderboard/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        sock.sendall(request.encode("ascii"))
        assert sock.recv(12) == b"HTTP/1.1 200"
    else:
        request = (
            "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        sock.sendall(request.encode("ascii"))
        assert sock.recv(12) == b"HTTP/1.1 101"
        sock.sendall(masked_text_frame(b'{"type":"subscribe","board":"global"}'))
    return sock


@pytest.mark.parametrize("transport", ["sse", "ws"])
@pytest.mark.usefixtures("ws_path")
async def test_a_client_that_stops_reading_gets_only_newest_frames_then_is_cut(
    stack: Stack, redis: Any, issuer: TokenIssuer, transport: str
) -> None:
    await make_board(redis)
    users = [f"user-{i:03d}-{'x' * 40}" for i in range(100)]
    for u in users:  # long names: big frames fill the socket buffers sooner
        await redis.hset(f"user:{u}", mapping={"name": "N" * 60})
    stack.start("gateway", top_k=100, broadcast_interval_s=0.01, slow_client_timeout_s=1.0)
    token = issuer.access_token(user_id="viewer", name="Viewer")
    sock = open_stream_then_stop_reading(stack.settings.gateway_port, transport, token)
    stop = asyncio.Event()

    async def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            results = await BoardStore(redis).apply_many(
                ("global", str(uuid.uuid4()), users[(n + k) % 100], 1 + k) for k in range(5)
            )
            await publish(redis, "global", max(r.seq for r in results))
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(churn())
    try:
        await eventually(
            lambda: open_connections(stack.gateway_url, transport), until=lambda n: n == 0, timeout_s=90
        )
    finally:
        stop.set()
        await writer
        sock.close()
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{stack.gateway_url}/metrics")).text
    assert "scorecast_gateway_slow_client_disconnects_total 1.0" in metrics
    dropped = [
        line for line in metrics.splitlines() if line.startswith("scorecast_gateway_dropped_frames_total")
    ]
    assert dropped and float(dropped[0].split()[1]) > 0  # unsent frames were replaced by newer ones


def read_boards_until(sock: socket.socket, version: int) -> list[int]:
    """Read what follows ``open_stream_then_stop_reading`` on a WebSocket until a board of
    ``version``; the versions of every board frame read, in order."""
    sock.settimeout(30)
    buf = bytearray()

    def need(k: int) -> None:
        while len(buf) < k:
            chunk = sock.recv(65536)
            assert chunk, "the gateway closed the connection"
            buf.extend(chunk)

    while b"\r\n\r\n" not in buf:  # the rest of the handshake's response
        need(len(buf) + 1)
    del buf[: buf.index(b"\r\n\r\n") + 4]
    versions: list[int] = []
    while not versions or versions[-1] < version:
        need(2)
        opcode, n, at = buf[0], buf[1] & 0x7F, 2
        if n == 126:
            need(4)
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            need(10)
            n, at = int.from_bytes(buf[2:10], "big"), 10
        need(at + n)
        payload = bytes(buf[at : at + n])
        del buf[: at + n]
        assert opcode in (0x81, 0x89), opcode  # final text frames, and keepalive pings
        message = json.loads(payload) if opcode == 0x81 else {"type": "ping"}
        if message["type"] == "leaderboard":
            versions.append(message["version"])
    return versions


@pytest.mark.usefixtures("ws_path")
async def test_a_write_paused_websocket_gets_only_the_newest_board_when_it_reads_again(
    stack: Stack, redis: Any, issuer: TokenIssuer
) -> None:
    await make_board(redis)
    users = [f"user-{i:03d}-{'x' * 40}" for i in range(100)]
    for u in users:  # long names: big frames fill the socket buffers sooner
        await redis.hset(f"user:{u}", mapping={"name": "N" * 60})
    stack.start(
        "gateway", top_k=100, broadcast_interval_s=0.01, slow_client_timeout_s=120.0, ws_ping_interval_s=600.0
    )
    token = issuer.access_token(user_id="viewer", name="Viewer")
    sock = open_stream_then_stop_reading(stack.settings.gateway_port, "ws", token)
    store = BoardStore(redis)

    async def dropped() -> float:
        n = 0
        while True:  # scores move until the gateway replaced an unsent frame by a newer one
            n += 1
            results = await store.apply_many(
                ("global", str(uuid.uuid4()), users[(n + k) % 100], 1 + k) for k in range(5)
            )
            await publish(redis, "global", max(r.seq for r in results))
            if n % 10:
                continue
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"{stack.gateway_url}/metrics")).text
            found = re.search(r"^scorecast_gateway_dropped_frames_total (\S+)$", metrics, re.M)
            if found and float(found.group(1)) > 0:
                return float(found.group(1))

    try:
        await asyncio.wait_for(dropped(), timeout=90)
        final = max(r.seq for r in await store.apply_many([("global", str(uuid.uuid4()), users[0], 1000)]))
        await publish(redis, "global", final)
        versions = await asyncio.to_thread(read_boards_until, sock, final)
    finally:
        sock.close()
    assert versions[-1] == final  # the newest board, on a connection that was never cut
    assert versions == sorted(set(versions))  # never a board twice, never an older one after
    assert await open_connections(stack.gateway_url, "ws") == 0


async def test_a_drain_after_the_count_touched_zero_waits_for_every_client(
    settings: Settings, redis: Any
) -> None:
    """The count of connections reached zero once; a later drain still waits for the clients of
    then, each told to reconnect, none cut short (failed before: the "all gone" event stayed set
    from the first zero and the drain kicked everyone at once)."""
    app = create_app(settings)
    async with asgi_client(app, "http://gateway"):
        hub = app.state.gateway.hub
        leave = asyncio.Event()

        async def client(conn: Connection) -> None:
            hub.register(conn)
            try:
                assert await conn.next_frames() == []  # drained: nothing more to write
                await leave.wait()  # the client takes its time to go
            finally:
                hub.unregister(conn)

        async def touch_zero() -> None:
            early = Connection("sse", "early")
            hub.register(early)
            hub.unregister(early)

        await asyncio.create_task(touch_zero())
        late = [Connection(transport, f"late-{i}") for i, transport in enumerate(["sse", "ws", "ws"])]
        clients = [asyncio.create_task(client(conn)) for conn in late]
        await eventually(lambda: asyncio.sleep(0, len(hub.connections)), until=lambda n: n == 3)
        drain = asyncio.create_task(hub.drain(60))
        await eventually(
            lambda: asyncio.sleep(0, [c.life.state for c in late]), until=lambda s: set(s) == {State.DRAINING}
        )
        await asyncio.sleep(0.3)  # room for a drain that would end early to do so
        assert not drain.done()
        assert [c.life.state for c in late] == [State.DRAINING] * 3  # none kicked
        leave.set()
        await asyncio.wait_for(drain, 20)
        for task in clients:
            await task  # ended on their own: not cancelled by a kick
        assert not hub.connections
