"""No log line carries a token: the redaction every process installs, and a real gateway at INFO."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from contract.auth import Claims, TokenIssuer
from contract.logs import REDACTED, install_redaction, redact
from devstack.processes import Stack
from tests.test_gateway_sse import make_board
from tests.test_gateway_ws import recv, ws_url

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"

CASES = [
    (f'1.2.3.4:5 - "WebSocket /api/v1/ws?access_token={JWT}" [accepted]',
     f'1.2.3.4:5 - "WebSocket /api/v1/ws?access_token={REDACTED}" [accepted]'),
    ("GET /stream?board=global&access_token=opaque-123&x=1",
     f"GET /stream?board=global&access_token={REDACTED}&x=1"),
    (f"cookie: scorecast_token={JWT}; other=1", f"cookie: scorecast_token={REDACTED}; other=1"),
    (f"authorization: Bearer {JWT}", f"authorization: Bearer {REDACTED}"),
    ('{"refreshToken": "opaque.refresh-token", "userId": "ada"}',
     f'{{"refreshToken": "{REDACTED}", "userId": "ada"}}'),
    ("RefreshRequest(refresh_token='abc.def')", f"RefreshRequest(refresh_token='{REDACTED}')"),
    (f"invalid token {JWT} for ada", f"invalid token {REDACTED} for ada"),
    ("worker w1 consuming scores, completions", "worker w1 consuming scores, completions"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "want"), CASES)
def test_redact(line: str, want: str) -> None:
    assert redact(line) == want


def test_every_record_of_every_logger_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    original = logging.getLogRecordFactory()
    try:
        install_redaction()
        install_redaction()  # idempotent: one wrapper
        with caplog.at_level(logging.INFO):
            logging.getLogger("uvicorn.error").info(
                '%s - "WebSocket %s" [accepted]', "h:1", f"/ws?access_token={JWT}"
            )
            logging.getLogger("any.library").warning("refresh with %r", {"refreshToken": "secret-value"})
    finally:
        logging.setLogRecordFactory(original)
    text = caplog.text
    assert JWT not in text and "secret-value" not in text
    assert f"/ws?access_token={REDACTED}" in text and "'refreshToken': '[redacted]'" in text


async def test_a_gateway_at_info_logs_no_token(stack: Stack, redis: Any, issuer: TokenIssuer) -> None:
    await make_board(redis, scores={"ada": 1})
    gateway = stack.start("gateway", log_level="info")
    token = issuer.access_token(user_id="ada", name="Ada")
    refresh, _ = issuer.refresh_token(Claims(sub="ada", name="Ada", exp=0, iat=0, jti=""))
    async with connect(ws_url(stack, token)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
    async with connect(ws_url(stack, refresh)) as ws:  # a refresh token is refused, and logged
        assert (await recv(ws))["code"] == "invalid_token"
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", "/api/v1/leaderboard/stream", params={"access_token": token}) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: snapshot"):
                break
    gateway.stop()
    log = gateway.log_path.read_text()
    assert token not in log and refresh not in log
    for part in (*token.split("."), *refresh.split(".")[1:]):
        assert part not in log
    assert f'"WebSocket /api/v1/ws?access_token={REDACTED}" [accepted]' in log, log
