"""Operations: drain on SIGTERM, health and readiness, metrics, slow clients."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.processes import Stack
from gateway.app import create_app
from gateway.hub import Connection
from gateway.protocol import State
from gateway.state import GatewayState
from tests.eventually import eventually
from tests.helpers import asgi_client
from tests.sse_client import sse
from tests.test_gateway_sse import make_board
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
