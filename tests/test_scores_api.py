"""Score writes and reads at the HTTP boundary: validation, dedupe, backpressure, error shape."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from contract import keys
from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.servers import ManagedServer
from ingest.api.app import create_app
from tests.helpers import asgi_client, bearer, login, score, scorer_token


@pytest.fixture
def token(issuer: TokenIssuer) -> str:
    """A scorer's token (score writes need role ``scorer``)."""
    return scorer_token(issuer)


@pytest.fixture
async def ada(ingest: httpx.AsyncClient) -> str:
    """A learner Scorecast knows (logged in once, region EU). Returns her own token."""
    return await login(ingest, "ada", "Ada Lovelace", region="eu", avatarUrl="https://a/ada.png")


def action(increment: Any = 5, user_id: str = "ada", **extra: Any) -> dict[str, Any]:
    return {"userId": user_id, "scoreIncrement": increment, "actionId": str(uuid.uuid4()), **extra}


async def queued(redis: Any) -> list[dict[str, Any]]:
    return [json.loads(fields["d"]) for _, fields in await redis.xrange(keys.SCORE_STREAM)]


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("zero increment", action(0), "invalid_body"),
    ("negative increment", action(-3), "invalid_body"),
    ("increment above the maximum", action(1001), "increment_too_large"),
    ("fractional increment", action(2.5), "invalid_body"),
    ("string increment", action("5"), "invalid_body"),
    ("actionId not a UUID", {"userId": "ada", "scoreIncrement": 5, "actionId": "abc"}, "invalid_body"),
    ("missing actionId", {"userId": "ada", "scoreIncrement": 5}, "invalid_body"),
    ("missing userId", {"scoreIncrement": 5, "actionId": str(uuid.uuid4())}, "invalid_body"),
    ("bad userId", action(5, user_id="a b"), "invalid_body"),
    ("unknown field", action(5, name="someone-else"), "invalid_body"),
    ("bad courseId", action(5, courseId="a b"), "invalid_body"),
    ("array body", [1, 2], "invalid_body"),
]


@pytest.mark.parametrize(("why", "body", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_bodies_get_400_and_nothing_is_queued(
    ingest: httpx.AsyncClient, redis: Any, token: str, ada: str, why: str, body: Any, code: str
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


async def test_a_learner_cannot_score_directly(ingest: httpx.AsyncClient, redis: Any, ada: str) -> None:
    for body in (action(1000), action(1000, user_id="bob")):
        r = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(ada))
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
    assert await redis.xlen(keys.SCORE_STREAM) == 0


async def test_scorer_and_admin_score_the_named_user_on_her_own_boards(
    ingest: httpx.AsyncClient, redis: Any, issuer: TokenIssuer, ada: str
) -> None:
    # The scorer's own token says region US: the action must carry Ada's profile, not the scorer's.
    service = issuer.access_token(user_id="svc", name="Service", region="US", roles=["scorer"])
    admin = issuer.access_token(user_id="root", name="Root", region="US", roles=["admin"])
    assert (await score(ingest, service, "ada", 7)).status_code == 202
    assert (await score(ingest, admin, "ada", 3)).status_code == 202
    entries = await queued(redis)
    assert [(e["userId"], e["increment"]) for e in entries] == [("ada", 7), ("ada", 3)]
    for e in entries:
        assert (e["name"], e["region"], e["avatarUrl"], e["source"]) == (
            "Ada Lovelace",
            "EU",
            "https://a/ada.png",
            "score",
        )


async def test_the_scored_users_profile_comes_from_mongodb_when_not_cached(
    ingest: httpx.AsyncClient, redis: Any, mongo: Any, token: str
) -> None:
    await mongo["users"].insert_one({"_id": "bob", "name": "Bob", "region": "APAC", "avatarUrl": None})
    # A cache entry from before profiles carried the region must not place the score nowhere.
    await redis.hset(keys.user_profile("bob"), mapping={"name": "Bob", "avatarUrl": ""})
    assert (await score(ingest, token, "bob", 4)).status_code == 202
    [entry] = await queued(redis)
    assert (entry["userId"], entry["name"], entry["region"]) == ("bob", "Bob", "APAC")


async def test_an_unknown_user_is_404_and_nothing_is_queued(
    ingest: httpx.AsyncClient, redis: Any, token: str
) -> None:
    r = await score(ingest, token, "nobody", 5)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_user"
    assert await redis.xlen(keys.SCORE_STREAM) == 0


async def test_a_learner_with_a_token_from_the_identity_provider_is_known_from_her_first_request(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, mongo: Any, token: str
) -> None:
    """No development login in production: the learner's first authenticated request registers
    her profile from her token, so a scoring service can score her on HER region's board."""
    grace = issuer.access_token(user_id="grace", name="Grace Hopper", region="na")
    assert (await score(ingest, token, "grace", 5)).status_code == 404  # never seen yet
    assert (await ingest.get("/api/v1/stats/student", headers=bearer(grace))).status_code == 200
    r = await score(ingest, token, "grace", 5)
    assert r.status_code == 202, r.text
    (entry,) = await queued(redis)
    assert (entry["userId"], entry["name"], entry["region"]) == ("grace", "Grace Hopper", "NA")
    assert (await mongo["users"].find_one({"_id": "grace"}))["region"] == "NA"
    # A service's own token is not a learner: it never becomes a user to place on a board.
    assert await mongo["users"].find_one({"_id": "points-service"}) is None


async def test_only_an_existing_course_gets_a_board(
    ingest: httpx.AsyncClient, redis: Any, issuer: TokenIssuer, token: str, ada: str
) -> None:
    r = await score(ingest, token, "ada", 5, courseId="no-such-course")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_course"
    assert await redis.xlen(keys.SCORE_STREAM) == 0
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    lecture = {"lectureId": "l1", "title": "L1", "durationSeconds": 60}
    course = {"title": "Py", "sections": [{"sectionId": "s", "title": "S", "lectures": [lecture]}]}
    assert (await ingest.put("/api/v1/courses/py101", json=course, headers=bearer(admin))).status_code == 200
    assert (await score(ingest, token, "ada", 5, courseId="py101")).status_code == 202
    assert [e["courseId"] for e in await queued(redis)] == ["py101"]


async def test_same_action_id_is_queued_once_per_user(
    ingest: httpx.AsyncClient, redis: Any, token: str, ada: str
) -> None:
    await login(ingest, "bob", "Bob", region="eu")
    body = action(7)
    first = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(token))
    assert first.status_code == 202
    assert first.json() == {"status": "queued", "actionId": body["actionId"]}
    again = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(token))
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    # Another user's action with the same id is theirs, not a duplicate of Ada's.
    bobs = await ingest.post("/api/v1/scores/update", json={**body, "userId": "bob"}, headers=bearer(token))
    assert bobs.status_code == 202
    assert bobs.json()["status"] == "queued"
    assert [e["userId"] for e in await queued(redis)] == ["ada", "bob"]


async def test_a_failed_enqueue_is_not_remembered(
    settings: Settings, redis: Any, mongo: Any, token: str, redis_srv: ManagedServer
) -> None:
    """Hole 2: the guard was set, then the XADD failed and the process could not undo the guard
    (it died, or Redis refused that too): every retry answered ``duplicate`` though nothing was
    queued. The XADD fails here for a Redis user without XADD and DEL rights."""
    await redis.execute_command("ACL", "SETUSER", "api", "on", ">pw", "~*", "&*", "+@all", "-xadd", "-del")
    try:
        limited = settings.replace(redis_url=f"redis://api:pw@127.0.0.1:{redis_srv.port}/0")
        app = create_app(limited)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://ingest") as client,
        ):
            await login(client, "ada", "Ada", region="eu")
            body = action(5)
            r = await client.post("/api/v1/scores/update", json=body, headers=bearer(token))
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "unavailable"
            assert await redis.xlen(keys.SCORE_STREAM) == 0
            await redis.execute_command("ACL", "SETUSER", "api", "+xadd", "+del")
            r = await client.post("/api/v1/scores/update", json=body, headers=bearer(token))
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "queued"
        assert [e["actionId"] for e in await queued(redis)] == [body["actionId"]]
    finally:
        await redis.execute_command("ACL", "DELUSER", "api")


async def test_a_stream_key_of_the_wrong_type_answers_503_and_the_retry_goes_through(
    ingest: httpx.AsyncClient, redis: Any, token: str, ada: str
) -> None:
    await redis.set(keys.SCORE_STREAM, "not a stream")
    body = action(5)
    r = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(token))
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")
    await redis.delete(keys.SCORE_STREAM)
    r = await ingest.post("/api/v1/scores/update", json=body, headers=bearer(token))
    assert r.status_code == 202
    assert len(await queued(redis)) == 1


async def test_rate_limit_answers_429_with_retry_after(
    settings: Settings, redis: Any, mongo: Any, token: str
) -> None:
    limited = settings.replace(rate_limit_per_s=0.5, rate_limit_burst=3)
    async with asgi_client(create_app(limited), "http://ingest") as client:
        await login(client, "ada", "Ada", region="eu")
        await login(client, "bob", "Bob", region="eu")
        codes = [
            (await client.post("/api/v1/scores/update", json=action(), headers=bearer(token))).status_code
            for _ in range(3)
        ]
        assert codes == [202, 202, 202]
        r = await client.post("/api/v1/scores/update", json=action(), headers=bearer(token))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert "user" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
        # The bucket is the scored user's: the same scorer still scores Bob.
        r = await client.post("/api/v1/scores/update", json=action(user_id="bob"), headers=bearer(token))
        assert r.status_code == 202
    assert await redis.xlen(keys.SCORE_STREAM) == 4


async def test_a_region_has_its_own_bucket(settings: Settings, redis: Any, mongo: Any, token: str) -> None:
    limited = settings.replace(region_rate_limit_per_s=0.5, region_rate_limit_burst=3)
    async with asgi_client(create_app(limited), "http://ingest") as client:
        for user, region in (("ada", "eu"), ("bob", "eu"), ("cy", "eu"), ("dee", "us"), ("eve", None)):
            await login(client, user, user.title(), region=region)
        codes = [
            (
                await client.post("/api/v1/scores/update", json=action(user_id=u), headers=bearer(token))
            ).status_code
            for u in ("ada", "bob", "ada")
        ]
        assert codes == [202, 202, 202]
        r = await client.post("/api/v1/scores/update", json=action(user_id="cy"), headers=bearer(token))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert "region EU" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
        for other in ("dee", "eve"):  # other regions (and no region) have their own budgets
            r = await client.post("/api/v1/scores/update", json=action(user_id=other), headers=bearer(token))
            assert r.status_code == 202
        # The same error code for both buckets; /metrics tells them apart.
        text = (await client.get("/metrics")).text
        assert 'scorecast_score_writes_total{endpoint="scores",outcome="region_limited"} 1.0' in text
        assert 'scorecast_score_writes_total{endpoint="scores",outcome="rate_limited"} 0.0' in text
    assert await redis.xlen(keys.SCORE_STREAM) == 5


async def test_full_queue_answers_429_queue_full(
    settings: Settings, redis: Any, mongo: Any, token: str
) -> None:
    async with asgi_client(
        create_app(settings.replace(queue_max_length=2, queue_backlog_max_age_s=0.0)), "http://ingest"
    ) as client:
        await login(client, "ada", "Ada", region="eu")
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
