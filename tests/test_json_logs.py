"""LOG_FORMAT=json: every line every process writes is one JSON object with ts, level, logger and
message (uvicorn's own lines included), tokens redacted as in the text format."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from contract import keys
from contract.auth import TokenIssuer
from contract.logs import REDACTED, JsonFormatter, setup_logging
from devstack.processes import Proc, Stack
from devstack.servers import free_port
from tests.eventually import eventually
from tests.test_gateway_sse import make_board
from tests.test_gateway_ws import recv, ws_url

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line of ``proc``'s log, each asserted to be a JSON object with the four fields."""
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    assert lines, f"{proc.module} logged nothing"
    records = []
    for line in lines:
        record = json.loads(line)  # raises on a line that is not JSON
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        assert dt.datetime.fromisoformat(record["ts"]).tzinfo is not None, line
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        records.append(record)
    return records


def test_the_json_formatter_writes_one_object_with_redacted_exception_text() -> None:
    try:
        raise RuntimeError(f"refused Bearer {JWT}")
    except RuntimeError:
        record = logging.LogRecord(
            "scorecast.x", logging.ERROR, __file__, 1, "failed for %s", ("ada",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", "scorecast.x", "failed for ada")
    assert "RuntimeError" in entry["exception"] and "Traceback" in entry["exception"]
    assert JWT not in line and f"Bearer {REDACTED}" in entry["exception"]


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        setup_logging(log_format="xml", level="info")


async def test_every_process_logs_json_lines(stack: Stack, redis: Any, issuer: TokenIssuer) -> None:
    await make_board(redis, scores={"ada": 1})
    api = stack.start("ingest.api", log_format="json")
    gateway = stack.start("gateway", log_format="json")
    worker = stack.start("ingest.worker", log_format="json", worker_metrics_port=free_port())
    flusher = stack.start("ingest.flusher", log_format="json", flusher_metrics_port=free_port())
    token = issuer.access_token(user_id="ada", name="Ada")
    async with connect(ws_url(stack, token)) as ws:  # uvicorn logs the handshake line
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
    await redis.xadd(keys.SCORE_STREAM, {"d": b"not json"})  # the worker warns about it
    await eventually(lambda: redis.xlen(keys.SCORE_DEAD_LETTER), until=lambda n: n == 1)
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        assert (await http.get("/healthz")).status_code == 200
    for proc in (api, gateway, worker, flusher):
        proc.stop()  # shutdown lines are logged too
    by_process = {proc.module: json_lines(proc) for proc in (api, gateway, worker, flusher)}
    loggers = {p: {r["logger"] for r in records} for p, records in by_process.items()}
    assert "uvicorn.error" in loggers["ingest.api"] and "uvicorn.error" in loggers["gateway"]
    handshakes = [r["message"] for r in by_process["gateway"] if "WebSocket /api/v1/ws" in r["message"]]
    assert handshakes and all(f"access_token={REDACTED}" in m for m in handshakes), handshakes
    assert token not in gateway.log_path.read_text()
    assert any(
        "poison entry" in r["message"] and r["level"] == "WARNING" for r in by_process["ingest.worker"]
    )
    assert any("flusher running" in r["message"] for r in by_process["ingest.flusher"])
