"""Score writes and reads at the HTTP boundary: validation, dedupe, backpressure, error shape."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from contract import keys
from contract.auth import TokenIssuer
from contract.settings import Settings
from ingest.api.app import create_app
from tests.helpers import asgi_client, bearer


@pytest.fixture
def token(issuer: TokenIssuer) -> str:
    return issuer.access_token(user_id="ada", name="Ada", region="EU")


def action(increment: Any = 5, **extra: Any) -> dict[str, Any]:
    return {"scoreIncrement": increment, "actionId": str(uuid.uuid4()), **extra}


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("zero increment", action(0), "invalid_body"),
    ("negative increment", action(-3), "invalid_body"),
    ("increment above the maximum", action(1001), "increment_too_large"),
    ("fractional increment", action(2.5), "invalid_body"),
    ("string increment", action("5"), "invalid_body"),
    ("actionId not a UUID", {"scoreIncrement": 5, "actionId": "abc"}, "invalid_body"),
    ("missing actionId", {"scoreIncrement": 5}, "invalid_body"),
    ("unknown field", action(5, userId="someone-else"), "invalid_body"),
    ("bad courseId", action(5, courseId="a b"), "invalid_body"),
    ("array body", [1, 2], "invalid_body"),
]


@pytest.mark.parametrize(("why", "body", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_bodies_get_400_and_nothing_is_queued(
    ingest: httpx.AsyncClient, redis: Any, token: str, why: str, body: Any, code: str
) -> None:
    r = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(token))
    assert r.status_code == 400, why
    assert r.json()["error"]["code"] == code
    assert await redis.xlen(keys.SCORE_STREAM) == 0


async def test_malformed_empty_and_oversized_bodies(
    ingest: httpx.AsyncClient, redis: Any, token: str
) -> None:
    headers = {**bearer(token), "content-type": "application/json"}
    r = await ingest.post("/api/v1/scores/update", content=b'{"scoreIncrement": 5,', headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    r = await ingest.post("/api/v1/scores/update", content=b"", headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    big = b'{"scoreIncrement": 5, "actionId": "' + b"a" * 20_000 + b'"}'
    r = await ingest.post("/api/v1/scores/update", content=big, headers=headers)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert await redis.xlen(keys.SCORE_STREAM) == 0


async def test_same_action_id_is_queued_once(ingest: httpx.AsyncClient, redis: Any, token: str) -> None:
    body = action(7)
    first = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(token))
    assert first.status_code == 202
    assert first.json() == {"status": "queued", "actionId": body["actionId"]}
    again = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(token))
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert await redis.xlen(keys.SCORE_STREAM) == 1


async def test_rate_limit_answers_429_with_retry_after(
    settings: Settings, redis: Any, mongo: Any, token: str
) -> None:
    limited = settings.replace(rate_limit_per_s=0.5, rate_limit_burst=3)
    async with asgi_client(create_app(limited), "http://ingest") as client:
        codes = [
            (await client.post("/api/v1/scores/update", json=action(), headers=bearer(token))).status_code
            for _ in range(3)
        ]
        assert codes == [202, 202, 202]
        r = await client.post("/api/v1/scores/update", json=action(), headers=bearer(token))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert await redis.xlen(keys.SCORE_STREAM) == 3


async def test_full_queue_answers_429_queue_full(
    settings: Settings, redis: Any, mongo: Any, token: str
) -> None:
    async with asgi_client(
        create_app(settings.replace(queue_max_length=2, queue_backlog_max_age_s=0.0)), "http://ingest"
    ) as client:
        for _ in range(2):
            assert (
                await client.post("/api/v1/scores/update", json=action(), headers=bearer(token))
            ).status_code == 202
        body = action()
        r = await client.post("/api/v1/scores/update", json=body, headers=bearer(token))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "queue_full"
        assert "retry-after" in r.headers
        # Refused, not remembered: the same actionId goes through once there is room.
        await redis.xtrim(keys.SCORE_STREAM, maxlen=0)
        assert (
            await client.post("/api/v1/scores/update", json=body, headers=bearer(token))
        ).status_code == 202


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/api/v1/scores/leaderboard", {"limit": "0"}, "bad_query"),
        ("/api/v1/scores/leaderboard", {"limit": "101"}, "bad_query"),
        ("/api/v1/scores/leaderboard", {"limit": "ten"}, "bad_query"),
        ("/api/v1/scores/leaderboard", {"board": "galaxy"}, "invalid_board"),
        ("/api/v1/scores/leaderboard", {"board": "weekly:2026-47"}, "invalid_board"),
        ("/api/v1/scores/around/ada", {"range": "500"}, "bad_query"),
    ],
)
async def test_bad_read_queries_get_400(
    ingest: httpx.AsyncClient, path: str, params: dict[str, str], code: str
) -> None:
    r = await ingest.get(path, params=params)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code


async def test_unranked_user_is_404(ingest: httpx.AsyncClient) -> None:
    r = await ingest.get("/api/v1/scores/rank/nobody")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_ranked"


async def test_empty_board_reads_as_empty(ingest: httpx.AsyncClient) -> None:
    r = await ingest.get("/api/v1/scores/leaderboard", params={"board": "weekly"})
    assert r.status_code == 200
    page = r.json()
    assert page["board"].startswith("weekly:20")
    assert page["entries"] == []


async def test_rebuild_needs_admin(ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any) -> None:
    user = issuer.access_token(user_id="ada", name="Ada")
    r = await ingest.post("/api/v1/admin/boards/global/rebuild", headers=bearer(user))
    assert r.status_code == 403
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    r = await ingest.post("/api/v1/admin/boards/global/rebuild", headers=bearer(admin))
    assert r.status_code == 202
    assert await redis.xlen(keys.SCORE_STREAM) == 1


async def test_unknown_route_and_method_keep_the_error_shape(ingest: httpx.AsyncClient) -> None:
    r = await ingest.get("/api/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = await ingest.get("/api/v1/scores/update")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_redis_unreachable_is_a_503_not_a_500(settings: Settings, mongo: Any, token: str) -> None:
    from devstack.servers import free_port

    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with asgi_client(create_app(down), "http://ingest") as client:
        r = await client.post("/api/v1/scores/update", json=action(), headers=bearer(token))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "unavailable"
        assert r.headers["retry-after"] == "1"
        r = await client.get("/api/v1/scores/leaderboard")
        assert r.status_code == 503
